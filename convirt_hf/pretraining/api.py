"""`pretrain(model_args, data_args, training_args)`: a whole pretraining run, from checked arguments to the final
folder.

The phases, in the order they run (each one function, as in accelerate's examples):

1. `open_run_folder`: the output folder, claimed (or refused) before any work;
2. `build_accelerator`: processes, mixed precision, trackers, the process-group timeout;
3. `start_run`: the run marker, CPU threads, the seed;
4. `build_run`: corpus, tokenizer, model (text pooling measured), loaders, optimizer, prepared by accelerate;
5. `restore_state`: `--resume`, with the settings checked against the checkpoint;
6. `start_trackers`, then `loop.train`;
7. `export.export_final_model`, then `--push_to_hub`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, set_seed

from convirt_hf.atomic import atomic_write_text
from convirt_hf.checkpointing import latest_checkpoint, load_checkpoint
from convirt_hf.cpu_threads import configure_cpu_threads
from convirt_hf.frozen_text import FrozenTextFeatures
from convirt_hf.losses import ConvirtLoss
from convirt_hf.lr_schedule import LearningRateController

from .arguments import DataArguments, ModelArguments, PretrainingArguments
from .data import DeviceAugmentation, build_dataloaders, load_corpus
from .export import export_final_model
from .failures import collective_failure
from .loop import TrainingRun, train
from .signature import training_signature
from .state import RUN_MARKER, TrainState, prepare_output_dir, run_signature, truncate_log
from .towers import build_model, check_towers, choose_text_pooling, prepare_tokenizer, text_tower_record

logger = logging.getLogger("convirt_hf.pretrain")

__all__ = ["build_accelerator", "pretrain"]

VALIDATION_PATIENTS_FILE = "validation_patients.txt"


def pretrain(model_args: ModelArguments, data_args: DataArguments, training_args: PretrainingArguments,
             preset: str | os.PathLike | None = None) -> dict:
    r"""
    Pretrains ConVIRT and writes a folder that `ConvirtModel.from_pretrained` (and `AutoModel` with
    `trust_remote_code=True`) loads, with its processor, card, metrics and arguments.

    Args:
        model_args ([`ModelArguments`]): the towers and the model's settings.
        data_args ([`DataArguments`]): the corpus, the views and the evaluation sets.
        training_args ([`PretrainingArguments`]): the optimisation, the output folder, checkpoints and resuming.
        preset (`str` or `os.PathLike`, *optional*): the preset the arguments came from, recorded in the run folder.

    Returns:
        `dict`: the run's metrics (`metrics.json`): steps, samples seen, best validation loss, retrieval Precision@k,
        and the retrieval table under `"retrieval_table"`.

    Example:

    ```python
    >>> from convirt_hf.pretraining import DataArguments, ModelArguments, PretrainingArguments, pretrain
    >>> metrics = pretrain(ModelArguments(), DataArguments(), PretrainingArguments(output_dir="runs/demo"))
    ```
    """
    text_tower = check_towers(model_args, data_args)
    output_dir = open_run_folder(training_args)
    # before the run resolves defaults (the training split), so that a planned run's signature can be compared to it
    signature = training_signature(model_args, data_args, training_args)
    accelerator = build_accelerator(training_args, output_dir)
    if training_args.global_batch_size is not None:  # before anything is written
        training_args.per_device_batch_size = per_device_share(training_args.global_batch_size,
                                                               accelerator.num_processes)
    try:
        return run_pretraining(accelerator, model_args, data_args, training_args, preset, output_dir, text_tower,
                               signature)
    except RuntimeError as error:
        translated = collective_failure(error, accelerator, training_args, output_dir)
        if translated is None:
            raise
        raise translated from error


def open_run_folder(args: PretrainingArguments) -> Path:
    """The output folder, checked (resume/overwrite), and a Hub upload checked before hours of training."""
    output_dir = prepare_output_dir(args)
    if args.push_to_hub:
        from convirt_hf.hub import check_push_ready

        try:
            check_push_ready(args.push_to_hub)
        except ValueError as error:
            raise type(error)(f"--push_to_hub {args.push_to_hub!r}: {error}") from error
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


def run_pretraining(accelerator, model_args, data_args, args, preset, output_dir: Path, text_tower,
                    signature: dict) -> dict:
    start_run(accelerator, args, preset, output_dir)
    started = time.time()
    run, text_record = build_run(accelerator, model_args, data_args, args, output_dir, text_tower)
    state, tracker_options = restore_state(run, TrainState(run_signature=run_signature(model_args, data_args, args)))
    start_trackers(accelerator, model_args, data_args, args, tracker_options)
    if state.step < args.max_steps:
        state = train(run, state)
    if run.text_features is not None:
        logger.info("frozen text tower: %d distinct sentences encoded once, %d uses served from them",
                    len(run.text_features), run.text_features.hits)
    metrics = export_final_model(accelerator, run.model, run.processor, run.retrieval, state, model_args, data_args,
                                 args, output_dir, started, {"text_tower": text_record, "signature": signature})
    accelerator.end_training()
    if accelerator.is_main_process and args.push_to_hub:
        from convirt_hf.hub import push_folder

        push_folder(output_dir, args.push_to_hub, private=args.hub_private)
    return metrics


def start_run(accelerator, args: PretrainingArguments, preset, output_dir: Path) -> None:
    """Claims the output folder, sets the CPU threads and the seed."""
    if args.overwrite_output_dir and args.resume is None and accelerator.is_main_process and output_dir.exists():
        shutil.rmtree(output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / RUN_MARKER).write_text(json.dumps({"script": "pretrain",
                                                         "preset": str(preset) if preset else None}))
    accelerator.wait_for_everyone()
    if args.global_batch_size is not None:
        logger.info("--global_batch_size %d: %d pairs per process", args.global_batch_size, args.per_device_batch_size)
    threads, why = configure_cpu_threads(accelerator.device)
    logger.info("%d process(es), device %s, %d CPU thread(s) per process (%s), mixed precision %s",
                accelerator.num_processes, accelerator.device, threads, why, args.mixed_precision)
    set_seed(args.seed)


def per_device_share(global_batch_size: int, processes: int) -> int:
    """Each process's share of a fixed contrastive batch (the gathered loss contrasts all of them)."""
    share, remainder = divmod(global_batch_size, processes)
    if remainder or share < 2:
        raise ValueError(f"--global_batch_size {global_batch_size} does not split into {processes} equal batches of at "
                         f"least 2 pairs: choose a multiple of {processes} (>= {2 * processes})")
    return share


def build_run(accelerator, model_args, data_args, args, output_dir: Path, text_tower) -> tuple[TrainingRun, dict]:
    """Corpus, tokenizer, model, loaders, optimizer and loss, prepared by accelerate (the order fixes the RNG draws)."""
    train_records, validation_records, retrieval, validation_patients = load_corpus(data_args, accelerator, args.seed)
    if validation_patients is not None and accelerator.is_main_process:  # the split, for anyone to check and reuse
        atomic_write_text(output_dir / VALIDATION_PATIENTS_FILE, "".join(f"{p}\n" for p in validation_patients))
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
    unwrapped = accelerator.unwrap_model(model)
    run = TrainingRun(
        accelerator=accelerator, model=model, optimizer=optimizer, loss_fn=loss_fn, controller=controller,
        train_loader=train_loader, train_sampler=train_sampler, validation_loader=validation_loader,
        retrieval=retrieval, processor=processor, args=args, data_args=data_args, output_dir=output_dir,
        # a frozen text tower gives each sentence fixed features: computed once, reused at every later use (exact)
        text_features=FrozenTextFeatures(unwrapped) if unwrapped.config.text_tower_frozen else None,
        device_augmentation=DeviceAugmentation(data_args, args, accelerator) if data_args.gpu_augmentation else None,
    )
    return run, text_record


def build_optimizer(model: torch.nn.Module, args: PretrainingArguments) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer_class = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    fused = torch.cuda.is_available()  # fused kernels exist for CUDA tensors only
    return optimizer_class(parameters, lr=args.learning_rate, weight_decay=args.weight_decay, fused=fused or None)


def restore_state(run: TrainingRun, state: TrainState) -> tuple[TrainState, dict]:
    """`--resume`: model, optimizer, RNG and data position from a checkpoint written with the same settings."""
    accelerator, args, output_dir = run.accelerator, run.args, run.output_dir
    if args.resume is None:
        return state, {}
    checkpoint = latest_checkpoint(output_dir / "checkpoints") if args.resume == "latest" else Path(args.resume)
    if checkpoint is None:
        raise ValueError(f"--resume latest: no complete checkpoint in {output_dir / 'checkpoints'}")
    saved = load_checkpoint(accelerator, checkpoint)
    if saved.get("run_signature") != state.run_signature:
        raise ValueError(
            f"--resume: {checkpoint} was written with different settings {saved.get('run_signature')}; this run "
            f"has {state.run_signature}"
        )
    run.controller.load_state_dict(saved.pop("lr"))
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
    accelerator.wait_for_everyone()
    # tensorboard hides the events the interrupted run wrote after the checkpoint, instead of showing them twice
    return state, {"tensorboard": {"purge_step": state.step + 1}}


def start_trackers(accelerator, model_args, data_args, args, tracker_options: dict) -> None:
    if accelerator.is_main_process:
        hyperparameters = {**dataclasses.asdict(model_args), **dataclasses.asdict(data_args),
                           **dataclasses.asdict(args)}
        accelerator.init_trackers("convirt", config={k: v for k, v in hyperparameters.items()
                                                     if isinstance(v, (int, float, str, bool))},
                                  init_kwargs=tracker_options)
