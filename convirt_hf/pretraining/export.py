"""What a run leaves behind: the best weights kept during training, and the final folder with its card."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from convirt_hf import ConvirtModel
from convirt_hf.atomic import swap_in_folder
from convirt_hf.checkpointing import (
    WRITE_ERRORS,
    CheckpointWriteError,
    any_process_failed,
    latest_checkpoint,
)
from convirt_hf.evaluation.retrieval import DEFAULT_KS, format_precision_table
from convirt_hf.evaluation.zero_shot import evaluate_retrieval
from convirt_hf.model_card import write_model_card


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
    if accelerator.is_main_process:  # the old best stays complete until the new one is in place
        swap_in_folder(temporary, best, aside=output_dir / ".incomplete-replaced-best_model")
    accelerator.wait_for_everyone()


def export_final_model(accelerator, model, processor, retrieval, state, model_args, data_args, args,
                       output_dir: Path, started: float, records: dict | None = None) -> dict:
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
                         **(records or {})}
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
