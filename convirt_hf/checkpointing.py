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

from convirt_hf.atomic import swap_in_folder

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


# What a failed write raises: the OS (a full disk, a file-size limit, a vanished mount), safetensors (its Rust writer
# reports I/O errors as SafetensorError) and torch.save (a RuntimeError from its zip writer: "file write failed").
_SafetensorError: type[Exception]
try:
    from safetensors import SafetensorError as _ImportedSafetensorError

    _SafetensorError = _ImportedSafetensorError
except ImportError:  # pragma: no cover - safetensors is a dependency of transformers
    _SafetensorError = OSError
WRITE_ERRORS = (OSError, RuntimeError, _SafetensorError)


def any_process_failed(accelerator, failed: bool) -> bool:
    """Whether `failed` is True on any process (every process must call it), so that all of them stop together."""
    if accelerator.num_processes == 1:
        return failed
    import torch

    flag = torch.tensor(float(failed), device=accelerator.device)
    return accelerator.reduce(flag, reduction="sum").item() > 0


def save_checkpoint(accelerator, checkpoints_dir: str | os.PathLike, step: int, train_state: dict,
                    keep_last: int) -> Path:
    """
    Saves model, optimizer, RNG and `train_state` for `step`, then keeps only the newest `keep_last` checkpoints.

    Every process must call it. Raises `CheckpointWriteError` (after removing the partial folder) on every process when
    writing fails on any of them, e.g. on a full disk; the previous checkpoint is left as it was.
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
    except WRITE_ERRORS as error:
        failure = error
    accelerator.wait_for_everyone()
    if any_process_failed(accelerator, failure is not None):
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        previous = latest_checkpoint(checkpoints_dir)
        cause = failure if failure is not None else "another process could not write its part"
        raise CheckpointWriteError(
            f"Could not write the checkpoint for step {step} ({cause}). "
            + (f"The previous checkpoint {previous} is intact." if previous else "No earlier checkpoint exists.")
            + " Free space (or fix the storage) and resume with --resume latest."
        ) from failure
    if accelerator.is_main_process:
        # the same step saved again after a resume replaces its checkpoint by a swap: a crash never leaves neither
        swap_in_folder(temporary, final, aside=checkpoints_dir / f"{TEMPORARY_PREFIX}replaced-{checkpoint_name(step)}",
                       sync=True)
        for old in complete_checkpoints(checkpoints_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


class CheckpointReadError(RuntimeError):
    """A checkpoint's files cannot be restored (damaged, tampered with, or holding more than tensors)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (torch's unpickling errors run to dozens of lines of advice)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


def _check_random_states(accelerator, checkpoint: Path) -> None:
    # accelerate (1.15) catches any failure to restore the RNG states and goes on with a log line at INFO level: the
    # run would resume with other random numbers (other augmentations, dropout) and silently stop repeating the
    # interrupted one. Read the file first with accelerate's own loader (weights_only=True) and refuse instead.
    from accelerate.utils import RNG_STATE_NAME
    from accelerate.utils import load as accelerate_load

    path = checkpoint / f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl"
    try:
        states = accelerate_load(path)
        missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - set(states)
    except Exception as error:  # a missing file, a torn zip, or a pickle weights_only=True refuses
        raise CheckpointReadError(
            f"{checkpoint}: cannot restore the random states from {path.name} ({first_line(error)})"
        ) from error
    if missing:
        raise CheckpointReadError(f"{checkpoint}: {path.name} lacks {sorted(missing)}")


def load_checkpoint(accelerator, checkpoint: str | os.PathLike) -> dict:
    """
    Restores model, optimizer and RNG states from `checkpoint`; returns the trainer's JSON state.

    Raises `CheckpointReadError` naming the file when any of them cannot be restored (accelerate reads its pickled
    files with `weights_only=True`, so a file with an arbitrary pickled object is refused, never executed).
    """
    checkpoint = Path(checkpoint)
    state_file = checkpoint / TRAIN_STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint (no {TRAIN_STATE_FILE})")
    _check_random_states(accelerator, checkpoint)
    try:
        accelerator.load_state(str(checkpoint))
        return json.loads(state_file.read_text())
    except Exception as error:
        raise CheckpointReadError(
            f"{checkpoint} cannot be restored ({type(error).__name__}: {first_line(error)}). "
            "Resume from an earlier checkpoint with --resume PATH."
        ) from error
