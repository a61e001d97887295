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
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convirt_hf import ConvirtConfig, ConvirtModel, ConvirtProcessor
from convirt_hf.checkpointing import CheckpointWriteError, latest_checkpoint, load_checkpoint, save_checkpoint
from convirt_hf.cli import one_of, parse_arguments, positive, run_cli
from convirt_hf.data.collate import ConvirtCollator
from convirt_hf.data.pairs import EpochShuffleSampler, PairViews
from convirt_hf.data.transforms import AUGMENTATION_PRESETS, ConvirtEvalTransform, ConvirtTrainTransform
from convirt_hf.evaluation.retrieval import DEFAULT_KS, format_precision_table
from convirt_hf.evaluation.zero_shot import evaluate_retrieval, load_retrieval_set
from convirt_hf.losses import ConvirtLoss
from convirt_hf.lr_schedule import LearningRateController
from convirt_hf.model_card import write_model_card
from convirt_hf.text_towers import corpus_wordpiece_tokenizer, small_bert_config

logger = logging.getLogger("convirt_hf.pretrain")

DEFAULT_TRAIN_SPLITS = ("train", "pretrain")  # preprocessed corpora, then the synthetic corpus
RUN_MARKER = "convirt_run.json"  # marks a folder as this script's output, so it can be resumed or overwritten


@dataclass
class ModelArguments:
    image_tower: str | None = field(
        default=None,
        metadata={"help": "Image tower weights: a timm tag (resnet50.tv_in1k), hf-hub:/local-dir: spec, timm folder or "
                  "checkpoint file. None trains `image_model_name` from random init (the offline demo)."},
    )
    image_model_name: str = field(default="resnet18", metadata={"help": "timm architecture of the image tower"})
    text_tower: str | None = field(
        default=None,
        metadata={"help": "A BERT-family model id or folder (the paper: emilyalsentzer/Bio_ClinicalBERT). None trains a "
                  "small BERT from scratch with a WordPiece vocabulary learned from the training reports."},
    )
    text_layers: int = field(default=2, metadata={"help": "layers of the from-scratch text tower"})
    text_hidden_size: int = field(default=128, metadata={"help": "width of the from-scratch text tower"})
    text_vocab_size: int = field(default=2000, metadata={"help": "vocabulary size learned for the from-scratch tower"})
    text_dropout: float = field(default=0.1, metadata={"help": "dropout of the from-scratch text tower"})
    projection: str = field(default="mlp", metadata={"help": "mlp (the paper) or linear"})
    projection_dim: int = 512
    tau: float = 0.1
    loss_lambda: float = 0.75
    text_pooling: str = "max"
    freeze_text_embeddings: bool = field(default=False, metadata={"help": "the paper freezes them (pretrained BERT)"})
    frozen_text_layers: int = field(default=0, metadata={"help": "the paper freezes 6 of 12"})

    def __post_init__(self):
        positive("projection_dim", self.projection_dim)
        positive("tau", self.tau)
        if not 0.0 <= self.loss_lambda <= 1.0:
            raise ValueError(f"--loss_lambda must be in [0, 1], got {self.loss_lambda!r}")
        one_of("projection", self.projection, ("mlp", "linear"))
        one_of("text_pooling", self.text_pooling, ("max", "mean", "cls"))
        positive("frozen_text_layers", self.frozen_text_layers, allow_zero=True)
        positive("text_layers", self.text_layers)
        positive("text_hidden_size", self.text_hidden_size)
        positive("text_vocab_size", self.text_vocab_size)
        if not 0.0 <= self.text_dropout < 1.0:
            raise ValueError(f"--text_dropout must be in [0, 1), got {self.text_dropout!r}")
        if self.image_tower is not None and self.text_tower is None:
            raise ValueError("--image_tower needs --text_tower: a from-scratch text tower is only trained together "
                             "with a from-scratch image tower (the offline demo)")


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
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    max_train_samples: int | None = None

    def __post_init__(self):
        positive("image_size", self.image_size)
        positive("max_length", self.max_length)
        positive("num_workers", self.num_workers, allow_zero=True)
        positive("validation_size", self.validation_size)
        positive("synthetic_pretrain_size", self.synthetic_pretrain_size)
        one_of("text_mode", self.text_mode, ("sentence", "report"))
        one_of("augmentation", self.augmentation, tuple(AUGMENTATION_PRESETS))
        if self.dataset is not None and not Path(self.dataset).expanduser().exists():
            raise ValueError(f"--dataset {self.dataset!r} does not exist")
        if self.max_train_samples is not None:
            positive("max_train_samples", self.max_train_samples)


@dataclass
class PretrainingArguments:
    output_dir: str = "outputs/convirt-demo"
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace an existing run's folder"})
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    seed: int = 42
    per_device_batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-6
    optimizer: str = field(default="adam", metadata={"help": "adam (the paper) or adamw"})
    lr_scheduler: str = field(default="plateau", metadata={"help": "plateau (the paper), cosine or constant"})
    warmup_steps: int = 0
    plateau_patience: int = field(default=5, metadata={"help": "evaluations without improvement before halving"})
    max_steps: int = 300
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
        positive("gradient_accumulation_steps", self.gradient_accumulation_steps)
        positive("warmup_steps", self.warmup_steps, allow_zero=True)
        positive("plateau_patience", self.plateau_patience, allow_zero=True)
        one_of("optimizer", self.optimizer, ("adam", "adamw"))
        one_of("lr_scheduler", self.lr_scheduler, ("plateau", "cosine", "constant"))
        one_of("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        one_of("report_to", self.report_to, ("tensorboard", "none"))
        if self.max_evaluations is not None:
            positive("max_evaluations", self.max_evaluations)
        if self.early_stopping_patience is not None:
            positive("early_stopping_patience", self.early_stopping_patience)
        if self.resume is not None and self.resume != "latest" and not Path(self.resume).is_dir():
            raise ValueError(f"--resume must be 'latest' or an existing checkpoint folder, got {self.resume!r}")


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
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        dataloader_config=DataLoaderConfiguration(even_batches=False),
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


def prepare_tokenizer(model_args: ModelArguments, data_args: DataArguments, train_records, accelerator,
                      output_dir: Path):
    """
    The text tower's tokenizer; for a from-scratch tower, one built from the training reports by the main process
    and saved in the run folder, so every process, and a resumed run, use the very same ids.
    """
    from transformers import AutoTokenizer

    if model_args.text_tower is not None:
        return AutoTokenizer.from_pretrained(model_args.text_tower)
    saved = output_dir / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer_config.json").is_file():
        sentences = (sentence for row in train_records.select_columns(["sentences", "text"])
                     for sentence in (row["sentences"] or [row["text"]]))
        corpus_wordpiece_tokenizer(sentences, vocab_size=model_args.text_vocab_size,
                                   model_max_length=data_args.max_length).save_pretrained(saved)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(saved)


def build_model(model_args: ModelArguments, data_args: DataArguments, tokenizer) -> tuple[ConvirtProcessor, ConvirtModel]:
    text_config = None
    if model_args.text_tower is None:
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
        tau=model_args.tau,
        loss_lambda=model_args.loss_lambda,
        text_pooling=model_args.text_pooling,
        freeze_text_embeddings=model_args.freeze_text_embeddings,
        frozen_text_layers=model_args.frozen_text_layers,
        image_size=data_args.image_size,
    )
    if model_args.text_tower is None:
        model = ConvirtModel(
            ConvirtConfig(image_model_name=model_args.image_model_name, text_config=text_config.to_dict(), **config_fields)
        )
    else:
        model = ConvirtModel.from_pretrained_towers(
            image=model_args.image_tower,
            text=model_args.text_tower,
            image_model_name=model_args.image_model_name if model_args.image_tower is None else None,
            **config_fields,
        )
    eval_resize = data_args.eval_resize or round(data_args.image_size * 8 / 7)
    processor = ConvirtProcessor.from_tokenizer(tokenizer, image_size=data_args.image_size, resize_size=eval_resize)
    return processor, model


def build_dataloaders(train_records, validation_records, processor, data_args, args):
    eval_resize = data_args.eval_resize or round(data_args.image_size * 8 / 7)
    collator = ConvirtCollator(processor.tokenizer, max_length=data_args.max_length)
    train_transform = ConvirtTrainTransform(output_size=data_args.image_size,
                                            ranges=AUGMENTATION_PRESETS[data_args.augmentation])
    train_views = PairViews(train_records, train_transform, args.seed, data_args.text_mode)
    validation_views = PairViews(
        validation_records, ConvirtEvalTransform(resize=eval_resize, crop=data_args.image_size), args.seed,
        data_args.text_mode,
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
                              **loader_kwargs)
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


# --- phases ------------------------------------------------------------------------------------------------------


def move_batch(batch: dict, device: torch.device, channels_last: bool) -> dict:
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items() if torch.is_tensor(value)}
    if channels_last:
        moved["pixel_values"] = moved["pixel_values"].contiguous(memory_format=torch.channels_last)
    return moved


@torch.no_grad()
def validation_loss(model, loader, loss_fn, accelerator, channels_last: bool) -> float:
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in loader:
        batch = move_batch(batch, accelerator.device, channels_last)
        outputs = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"])
        total += loss_fn(outputs.image_embeds, outputs.text_embeds).float()
        count += 1
    model.train()
    if count == 0:
        raise ValueError("the validation split is smaller than one batch per process: lower --per_device_batch_size")
    return accelerator.reduce(total / count, reduction="mean").item()


def save_best_model(accelerator, model, output_dir: Path) -> None:
    """Keeps the lowest-validation-loss weights as a loadable folder (written aside, then renamed)."""
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        best, temporary = output_dir / "best_model", output_dir / ".incomplete-best_model"
        shutil.rmtree(temporary, ignore_errors=True)
        accelerator.unwrap_model(model).save_pretrained(temporary, state_dict=state_dict, safe_serialization=True)
        shutil.rmtree(best, ignore_errors=True)
        os.replace(temporary, best)
    accelerator.wait_for_everyone()


def append_log(output_dir: Path, record: dict) -> None:
    with (output_dir / "train_log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(model, optimizer, loss_fn, train_loader, train_sampler, validation_loader, retrieval, processor, controller,
          state: TrainState, accelerator, args, data_args, output_dir: Path) -> TrainState:
    model.train()
    batches_per_epoch = len(train_loader)
    if batches_per_epoch == 0:
        raise ValueError("the training split is smaller than one batch per process: lower --per_device_batch_size")
    progress = tqdm(total=args.max_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="pretraining", dynamic_ncols=True)
    window_start, window_samples = time.perf_counter(), 0
    stop = False
    while not stop:
        train_sampler.use_epoch(state.epoch)
        loader = train_loader
        if state.batches_in_epoch:
            loader = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
        for batch in loader:
            lr = controller.apply(optimizer, state.step)
            ids = batch.pop("id", None)
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
                outputs = model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"])
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
                                      accelerator, args, data_args, output_dir)
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
                   data_args, output_dir) -> bool:
    """Validation loss (+ retrieval); keeps the best weights; returns True when training should stop."""
    loss = validation_loss(model, validation_loader, loss_fn, accelerator, args.channels_last)
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
                       output_dir: Path, started: float) -> dict:
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
    if accelerator.is_main_process:
        final_model.save_pretrained(output_dir, safe_serialization=True)
        processor.save_pretrained(output_dir)
        arguments = {"model": dataclasses.asdict(model_args), "data": dataclasses.asdict(data_args),
                     "training": {k: v for k, v in dataclasses.asdict(args).items()}}
        (output_dir / "training_args.json").write_text(json.dumps(arguments, indent=2))
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(output_dir, final_model.config, arguments, metrics)
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


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args, preset = parse_arguments(
        (ModelArguments, DataArguments, PretrainingArguments), argv, description=__doc__
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = prepare_output_dir(args)
    accelerator = build_accelerator(args, output_dir)
    if args.overwrite_output_dir and args.resume is None and accelerator.is_main_process and output_dir.exists():
        shutil.rmtree(output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_MARKER).write_text(json.dumps({"script": "pretrain", "preset": str(preset) if preset else None}))
    accelerator.wait_for_everyone()
    logger.info("%d process(es), device %s, mixed precision %s", accelerator.num_processes, accelerator.device,
                args.mixed_precision)
    set_seed(args.seed)
    started = time.time()

    train_records, validation_records, retrieval = load_corpus(data_args, accelerator, args.seed)
    tokenizer = prepare_tokenizer(model_args, data_args, train_records, accelerator, output_dir)
    processor, model = build_model(model_args, data_args, tokenizer)
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
        hyperparameters = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args), **dataclasses.asdict(args)}
        accelerator.init_trackers("convirt", config={k: v for k, v in hyperparameters.items()
                                                     if isinstance(v, (int, float, str, bool))})
    if state.step < args.max_steps:
        state = train(model, optimizer, loss_fn, train_loader, train_sampler, validation_loader, retrieval, processor,
                      controller, state, accelerator, args, data_args, output_dir)
    metrics = export_final_model(accelerator, model, processor, retrieval, state, model_args, data_args, args,
                                 output_dir, started)
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
    run_cli(main, "convirt_hf.pretrain", (NonFiniteTrainingError, CheckpointWriteError))


if __name__ == "__main__":
    cli()
