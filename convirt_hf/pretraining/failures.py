"""Errors that end a pretraining run with one clear line, and the translation of a failed collective operation."""

from __future__ import annotations

from pathlib import Path

import torch

from convirt_hf.checkpointing import latest_checkpoint


class NonFiniteTrainingError(RuntimeError):
    """A batch held non-finite pixels, or the loss became NaN/infinite; the message says what was saved where."""


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
