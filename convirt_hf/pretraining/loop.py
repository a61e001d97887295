"""The training loop, one short function per phase: a step, its bookkeeping, an evaluation, a checkpoint.

Everything the phases share is one `TrainingRun`, built by `convirt_hf.pretraining.api.setup`; what changes from step to
step (and what a checkpoint saves) is the `TrainState`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from convirt_hf import ConvirtProcessor
from convirt_hf.checkpointing import latest_checkpoint, save_checkpoint
from convirt_hf.data.pairs import EpochShuffleSampler
from convirt_hf.evaluation.zero_shot import RetrievalSet, evaluate_retrieval
from convirt_hf.frozen_text import FrozenTextFeatures
from convirt_hf.lr_schedule import LearningRateController
from convirt_hf.modes import evaluating

from .arguments import DataArguments, PretrainingArguments
from .data import DeviceAugmentation, model_inputs, move_batch
from .export import save_best_model
from .failures import NonFiniteTrainingError
from .state import TrainState, snapshot

logger = logging.getLogger("convirt_hf.pretrain")


@dataclass
class TrainingRun:
    """The prepared pieces of one pretraining run, shared by every phase of the loop."""

    accelerator: Accelerator
    model: torch.nn.Module  # as prepared by accelerate (DDP-wrapped in multi-process runs)
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    controller: LearningRateController
    train_loader: DataLoader
    train_sampler: EpochShuffleSampler
    validation_loader: DataLoader
    retrieval: RetrievalSet | None
    processor: ConvirtProcessor
    args: PretrainingArguments
    data_args: DataArguments
    output_dir: Path
    text_features: FrozenTextFeatures | None = None
    device_augmentation: DeviceAugmentation | None = None


class StepLog:
    """The progress bar and the samples/s of the steps since the last log line."""

    def __init__(self, run: TrainingRun, state: TrainState):
        self.progress = tqdm(total=run.args.max_steps, initial=state.step, dynamic_ncols=True, desc="pretraining",
                             disable=not run.accelerator.is_local_main_process)
        self.window_start, self.window_samples = time.perf_counter(), 0

    def step_done(self, samples: int) -> None:
        self.window_samples += samples
        self.progress.update(1)

    def throughput(self) -> float:
        """Samples/s since the last call; starts the next window."""
        value = self.window_samples / max(time.perf_counter() - self.window_start, 1e-9)
        self.window_start, self.window_samples = time.perf_counter(), 0
        return value


def append_log(output_dir: Path, record: dict) -> None:
    with (output_dir / "train_log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def train(run: TrainingRun, state: TrainState) -> TrainState:
    """Trains from `state` to `--max_steps` (or an earlier stop), evaluating and checkpointing on the way."""
    run.model.train()
    if len(run.train_loader) == 0:
        raise ValueError("the training split is smaller than one batch per process: lower --per_device_batch_size")
    step_log = StepLog(run, state)
    stop = False
    while not stop:
        for batch in epoch_batches(run, state):
            loss, lr = train_step(run, batch, state)
            state.batches_in_epoch += 1  # micro-batches: what skip_first_batches counts on resume
            if not run.accelerator.sync_gradients:
                continue
            samples = run.args.per_device_batch_size * run.accelerator.num_processes
            state.step += 1
            state.samples_seen += samples
            step_log.step_done(samples)
            stop = after_step(run, state, loss, lr, step_log)
            if stop:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    step_log.progress.close()
    return state


def epoch_batches(run: TrainingRun, state: TrainState):
    """The current epoch's batches from the position `state` holds (a resumed run skips those already trained)."""
    run.train_sampler.use_epoch(state.epoch)
    if state.batches_in_epoch:
        return run.accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch)
    return run.train_loader


def train_step(run: TrainingRun, batch: dict, state: TrainState) -> tuple[torch.Tensor, float]:
    """One optimizer step (or accumulation micro-step) on `batch`; returns the detached loss and the learning rate."""
    accelerator = run.accelerator
    lr = run.controller.apply(run.optimizer, state.step)
    ids = batch.pop("id", None)
    if run.device_augmentation is not None:  # the views, made on the device (the check below sees them)
        batch = run.device_augmentation(move_batch(batch, accelerator.device, channels_last=False), state.epoch,
                                        state.batches_in_epoch)
    check_pixels(run, batch, state, ids)
    batch = move_batch(batch, accelerator.device, run.args.channels_last)
    with accelerator.accumulate(run.model):
        outputs = run.model(**model_inputs(batch, run.text_features))
        loss = run.loss_fn(outputs.image_embeds, outputs.text_embeds)
        bad_loss = accelerator.reduce((~torch.isfinite(loss.detach())).float(), reduction="sum")
        if bad_loss.item() > 0:
            raise stop_on_non_finite_loss(run, loss, state, lr, ids)
        accelerator.backward(loss)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return loss.detach(), lr


def check_pixels(run: TrainingRun, batch: dict, state: TrainState, ids) -> None:
    """
    Stops before the forward pass when any process's batch holds non-finite pixels: a NaN image would otherwise
    poison BatchNorm running statistics before any loss could be looked at.
    """
    accelerator = run.accelerator
    bad_pixels = torch.tensor(float(not torch.isfinite(batch["pixel_values"]).all()), device=accelerator.device)
    if accelerator.reduce(bad_pixels, reduction="sum").item() > 0:
        checkpoint = save_checkpoint(accelerator, run.output_dir / "checkpoints", state.step,
                                     snapshot(state, run.controller), run.args.save_total_limit)
        raise NonFiniteTrainingError(
            f"Non-finite pixel values in the batch of step {state.step} (batch ids on this process: {ids}). "
            f"Training stopped before using it; the state is saved in {checkpoint} and resumes with "
            "--resume latest once the data is fixed."
        )


def stop_on_non_finite_loss(run: TrainingRun, loss, state: TrainState, lr: float, ids) -> NonFiniteTrainingError:
    """Saves the state for inspection (not for resuming: this forward pass may have updated BatchNorm statistics)."""
    inspection = run.output_dir / f"non_finite_state_step_{state.step:08d}"
    run.accelerator.save_state(output_dir=str(inspection), safe_serialization=True)
    last_good = latest_checkpoint(run.output_dir / "checkpoints")
    return NonFiniteTrainingError(
        f"The loss became {loss.item()} at step {state.step} (lr {lr:.3g}; batch ids on this process: {ids}). "
        f"Training stopped. The state at this step is saved for inspection in {inspection}; resume from the last "
        f"good checkpoint ({last_good or 'none yet'}) with --resume latest, with a lower --learning_rate or "
        "--mixed_precision no/bf16 if the loss overflowed."
    )


def after_step(run: TrainingRun, state: TrainState, loss: torch.Tensor, lr: float, step_log: StepLog) -> bool:
    """Logging, evaluation and checkpointing due after this step; returns True when training should stop."""
    args = run.args
    stop = False
    if state.step % args.logging_steps == 0:
        log_training(run, state, loss, lr, step_log)
    if state.step % args.eval_steps == 0 or state.step == args.max_steps:
        stop = evaluate(run, state)
    if state.step % args.save_steps == 0 or state.step == args.max_steps:
        save_checkpoint(run.accelerator, run.output_dir / "checkpoints", state.step, snapshot(state, run.controller),
                        args.save_total_limit)
    return stop or state.step >= args.max_steps


def log_training(run: TrainingRun, state: TrainState, loss: torch.Tensor, lr: float, step_log: StepLog) -> None:
    accelerator = run.accelerator
    mean_loss = accelerator.reduce(loss, reduction="mean").item()
    throughput = step_log.throughput()
    metrics = {"train/loss": mean_loss, "train/lr": lr, "train/samples_per_second": throughput}
    step_log.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{throughput:.0f}")
    accelerator.log(metrics, step=state.step)
    if accelerator.is_main_process:
        append_log(run.output_dir, {"step": state.step, "epoch": state.epoch, **metrics})


@torch.no_grad()
def validation_loss(run: TrainingRun) -> float:
    """The mean contrastive loss over the validation split, with the model in eval mode (restored after)."""
    accelerator, model = run.accelerator, run.model
    total, count = torch.zeros((), device=accelerator.device), 0
    with evaluating(model):
        for batch in run.validation_loader:
            batch = move_batch(batch, accelerator.device, run.args.channels_last)
            outputs = model(**model_inputs(batch, run.text_features))
            total += run.loss_fn(outputs.image_embeds, outputs.text_embeds).float()
            count += 1
    if count == 0:
        raise ValueError("the validation split is smaller than one batch per process: lower --per_device_batch_size")
    return accelerator.reduce(total / count, reduction="mean").item()


def evaluate(run: TrainingRun, state: TrainState) -> bool:
    """Validation loss (+ retrieval); keeps the best weights; returns True when training should stop."""
    accelerator, args = run.accelerator, run.args
    loss = validation_loss(run)
    improved = run.controller.observe_validation(loss)
    state.evaluations += 1
    metrics = {"validation/loss": loss, "validation/best_loss": run.controller.best_loss}
    if run.retrieval is not None:
        results = evaluate_retrieval(accelerator.unwrap_model(run.model), run.processor, run.retrieval,
                                     device=accelerator.device, ks=(5, 10))
        for direction, result in results.items():
            for k, value in result["mean"].items():
                if value is not None:
                    metrics[f"retrieval/{direction}/P@{k}"] = value
    if improved:
        state.best_validation_loss = loss
        save_best_model(accelerator, run.model, run.output_dir)
    accelerator.log(metrics, step=state.step)
    if accelerator.is_main_process:
        append_log(run.output_dir, {"step": state.step, **metrics})
        logger.info("step %d: %s", state.step, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None))
    if args.max_evaluations is not None and state.evaluations >= args.max_evaluations:
        logger.info("stopping: %d evaluations done (--max_evaluations)", state.evaluations)
        return True
    patience = args.early_stopping_patience
    if patience and run.controller.evaluations_without_improvement >= patience:
        logger.info("early stopping: no improvement in %d evaluations", run.controller.evaluations_without_improvement)
        return True
    return False
