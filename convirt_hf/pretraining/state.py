"""A run's folder and its resumable state: what marks a folder as a run, the step counters, resume and its log."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from convirt_hf.atomic import atomic_write_text
from convirt_hf.lr_schedule import LearningRateController

from .arguments import PretrainingArguments

logger = logging.getLogger("convirt_hf.pretrain")

RUN_MARKER = "convirt_run.json"  # marks a folder as this script's output, so it can be resumed or overwritten


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


def snapshot(state: TrainState, controller: LearningRateController) -> dict:
    state.lr = controller.state_dict()
    return dataclasses.asdict(state)


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
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)
