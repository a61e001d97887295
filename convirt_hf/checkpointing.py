"""Crash-safe training checkpoints on top of ``accelerator.save_state`` / ``load_state``.

A checkpoint is written into a hidden temporary folder and renamed to ``step_XXXXXXXX`` only when every process has
finished writing; the rename is the commit. A process killed mid-save leaves at most a temporary folder, which is
ignored and removed by the next save, so the previous checkpoint always stays loadable. The trainer's own counters
(step, epoch, position in the epoch, best validation loss, learning-rate controller) are stored as JSON beside
accelerate's files, so resuming never unpickles arbitrary objects (accelerate reads its own files with
``weights_only=True``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")
TRAIN_STATE_FILE = "train_state.json"
TEMPORARY_PREFIX = ".incomplete-"


class CheckpointWriteError(RuntimeError):
    """Raised when a checkpoint could not be written; the previous one is intact."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Committed checkpoints, oldest first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [
        path
        for path in folder.iterdir()
        if path.is_dir() and CHECKPOINT_PATTERN.match(path.name) and (path / TRAIN_STATE_FILE).is_file()
    ]
    return sorted(found, key=lambda path: int(CHECKPOINT_PATTERN.match(path.name).group(1)))


def latest_checkpoint(checkpoints_dir: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def _fsync_directory(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(accelerator, checkpoints_dir: str | os.PathLike, step: int, train_state: dict, keep_last: int) -> Path:
    """
    Saves model, optimizer, RNG and `train_state` for `step`, then keeps only the newest `keep_last` checkpoints.

    Every process must call it. Raises `CheckpointWriteError` (after removing the partial folder) when writing fails,
    e.g. on a full disk.
    """
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / checkpoint_name(step)
    temporary = checkpoints_dir / f"{TEMPORARY_PREFIX}{checkpoint_name(step)}"
    failure = None
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints_dir.glob(f"{TEMPORARY_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(output_dir=str(temporary), safe_serialization=True)
        if accelerator.is_main_process:
            state_file = temporary / TRAIN_STATE_FILE
            with state_file.open("w") as handle:
                json.dump(train_state, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as error:
        failure = error
    accelerator.wait_for_everyone()
    if failure is not None:
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        previous = latest_checkpoint(checkpoints_dir)
        raise CheckpointWriteError(
            f"Could not write the checkpoint for step {step} ({failure}). "
            + (f"The previous checkpoint {previous} is intact." if previous else "No earlier checkpoint exists.")
        ) from failure
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again after a resume: replace it
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync_directory(checkpoints_dir)
        for old in complete_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, checkpoint: str | os.PathLike) -> dict:
    """Restores model, optimizer and RNG states from `checkpoint`; returns the trainer's JSON state."""
    checkpoint = Path(checkpoint)
    state_file = checkpoint / TRAIN_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {TRAIN_STATE_FILE})")
    accelerator.load_state(str(checkpoint))
    return json.loads(state_file.read_text())
