"""Crashes: SIGKILL at random steps and inside checkpoint writes, repeated, and a disk that fills up during a save.

tests/test_pretrain.py kills one run once and tests/test_checkpointing.py interrupts one save in-process; here every
seed kills the same run three times (at a random step from outside, at a random point inside a checkpoint or
best-model write, and from outside while a slow checkpoint write is on disk), resumes after each kill, and the final
weights, the best model and the training log must equal the uninterrupted run's exactly (CPU, same seed).
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest

from convirt_hf.checkpointing import TEMPORARY_PREFIX, complete_checkpoints, latest_checkpoint

from faultkit import (
    CRASH_RUN,
    assert_same_weights,
    last_logged_step,
    tiny_args,
    train_losses,
    weights,
)

SEEDS = [3, 17, 29, 44, 58, 71]
CHECKPOINT_PHASES = ["torn_weights", "after_state", "torn_train_state", "before_commit", "after_commit"]
MAX_STEPS, SAVE_STEPS, EVAL_STEPS = CRASH_RUN["max_steps"], CRASH_RUN["save_steps"], CRASH_RUN["eval_steps"]


def checkpoint_step(path: Path | None) -> int:
    return int(path.name.split("_")[1]) if path is not None else 0


def assert_checkpoints_complete(output_dir: Path) -> None:
    """Every checkpoint that counts as complete really is: its state names its step and its weights load."""
    for checkpoint in complete_checkpoints(output_dir / "checkpoints"):
        state = json.loads((checkpoint / "train_state.json").read_text())
        assert state["step"] == checkpoint_step(checkpoint), checkpoint
        assert weights(checkpoint / "model.safetensors"), checkpoint


def kill_when(child, condition, what: str, timeout: float = 90) -> None:
    """SIGKILLs `child` as soon as `condition()` holds; fails if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if child.poll() is not None:
            raise AssertionError(f"the run ended ({child.poll()}) before {what}:\n{child.output()[-3000:]}")
        if condition():
            child.kill()
            break
        time.sleep(0.002)
    else:
        child.kill()
        raise AssertionError(f"{what} did not happen within {timeout} s")
    assert child.wait(30) == -9


def temporary_checkpoint(output_dir: Path, written_after_ns: int = 0):
    """A checkpoint being written (or torn) whose weights file was written after `written_after_ns`."""
    folder = output_dir / "checkpoints"
    if not folder.is_dir():
        return None
    for path in folder.iterdir():
        if re.fullmatch(re.escape(TEMPORARY_PREFIX) + r"step_\d{8}", path.name):
            try:
                if (path / "model.safetensors").stat().st_mtime_ns > written_after_ns:
                    return path
            except OSError:
                continue
    return None


def assert_resumed_from(child, output_dir: Path, step: int) -> None:
    expected = f"resumed from {output_dir / 'checkpoints' / f'step_{step:08d}'} at step {step} "
    assert expected in child.output(), f"expected {expected!r} in:\n{child.output()[-3000:]}"


@pytest.mark.parametrize("seed", SEEDS)
def test_repeated_sigkill_and_resume_end_with_the_uninterrupted_weights(seed, tiny_corpus, zygote, reference_run,
                                                                        tmp_path):
    rng = random.Random(seed)
    output_dir = tmp_path / "run"
    args = tiny_args(tiny_corpus, output_dir, **CRASH_RUN)
    resume = args + ["--resume", "latest"]
    pending = None  # the checkpoint step the next run must resume from

    # 1. SIGKILL from outside at a random step (after the first checkpoint, at step 4, exists)
    target = rng.randint(SAVE_STEPS + 1, MAX_STEPS - 1)
    child = zygote.start(args, name=f"seed{seed}-kill-at-step-{target}")
    kill_when(child, lambda: last_logged_step(output_dir) >= target, f"step {target}")
    reached = last_logged_step(output_dir)
    latest = checkpoint_step(latest_checkpoint(output_dir / "checkpoints"))
    # every save before the last logged step finished; the one at that step may or may not have
    assert (reached - 1) // SAVE_STEPS * SAVE_STEPS <= latest <= (reached + 1) // SAVE_STEPS * SAVE_STEPS, (reached,
                                                                                                            latest)
    assert_checkpoints_complete(output_dir)
    pending = latest

    # 2. SIGKILL inside a checkpoint write (or a best-model write) at a random point
    remaining = (MAX_STEPS - pending) // SAVE_STEPS
    if remaining:
        if pending < EVAL_STEPS and rng.random() < 0.25:
            faults, expected = [{"kind": "kill_in_best_model", "save": 1}], pending  # dies at step 8's evaluation
            what = "the best-model write at step 8"
        else:
            nth, phase = rng.randint(1, remaining), rng.choice(CHECKPOINT_PHASES)
            saved_at = pending + nth * SAVE_STEPS
            faults = [{"kind": "kill_in_checkpoint", "checkpoint": nth, "phase": phase}]
            expected = saved_at if phase == "after_commit" else saved_at - SAVE_STEPS
            what = f"{phase} of the checkpoint at step {saved_at}"
        child = zygote.start(resume, faults=faults, name=f"seed{seed}-die-in-{what.replace(' ', '-')}")
        assert child.wait(90) == -9, f"the run did not die at {what}:\n{child.output()[-3000:]}"
        assert_resumed_from(child, output_dir, pending)
        assert checkpoint_step(latest_checkpoint(output_dir / "checkpoints")) == expected, what
        assert_checkpoints_complete(output_dir)
        pending = expected

    # 3. a slow disk: SIGKILL from outside while a checkpoint's temporary folder is on disk
    if (MAX_STEPS - pending) // SAVE_STEPS:
        started = time.time_ns()  # torn writes of earlier kills may still be on disk: only a new one counts
        child = zygote.start(resume, faults=[{"kind": "slow_checkpoint", "seconds": 0.3}],
                             name=f"seed{seed}-kill-during-slow-save")
        kill_when(child, lambda: temporary_checkpoint(output_dir, started), "a checkpoint write")
        assert_resumed_from(child, output_dir, pending)
        assert checkpoint_step(latest_checkpoint(output_dir / "checkpoints")) == pending
        assert temporary_checkpoint(output_dir, started) is not None  # the torn write, ignored on resume
        assert_checkpoints_complete(output_dir)

    # 4. resume to the end
    child = zygote.run(resume, name=f"seed{seed}-finish")
    assert_resumed_from(child, output_dir, pending)
    final = f"checkpoints/step_{MAX_STEPS:08d}/model.safetensors"
    assert_same_weights(reference_run / final, output_dir / final, f"(seed {seed})")
    assert_same_weights(reference_run / "model.safetensors", output_dir / "model.safetensors", "(the best model)")
    # the log holds every step once, with the uninterrupted run's losses: rows of lost steps were dropped on resume
    assert train_losses(output_dir) == train_losses(reference_run)
    assert not any(path.name.startswith(TEMPORARY_PREFIX) for path in (output_dir / "checkpoints").iterdir())
    assert not any(path.name.startswith(".incomplete") for path in output_dir.iterdir())


def test_a_disk_that_fills_up_during_a_checkpoint_keeps_the_previous_one(tiny_corpus, zygote, reference_run,
                                                                         tmp_path):
    # After the second checkpoint (step 8) every file write beyond 256 kB fails with EFBIG, as on a full disk: the
    # real write path (safetensors' Rust writer, torch.save's zip writer) fails, not a mocked function.
    output_dir = tmp_path / "run"
    args = tiny_args(tiny_corpus, output_dir, **CRASH_RUN)
    child = zygote.start(args, faults=[{"kind": "file_size_limit", "after_checkpoint": 2, "bytes": 256 * 1024}],
                         name="full-disk")
    assert child.wait(90) == 1, child.output()[-3000:]
    output = child.output()
    assert re.search(r"ERROR convirt_hf\.pretrain: Could not write the checkpoint for step 12 \(.*File too large.*\)\. "
                     r"The previous checkpoint \S*step_00000008 is intact\. Free space", output), output[-3000:]
    assert "Traceback" not in output  # one clear line, not a stack trace
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == ["step_00000004", "step_00000008"]
    assert_checkpoints_complete(output_dir)

    # space is back: the run resumes from step 4 and ends exactly like an uninterrupted one
    zygote.run(args + ["--resume", "latest"], name="full-disk-resume")
    final = f"checkpoints/step_{MAX_STEPS:08d}/model.safetensors"
    assert_same_weights(reference_run / final, output_dir / final)


def test_a_disk_that_fills_up_while_writing_the_best_model_stops_clearly(tiny_corpus, zygote, tmp_path):
    # best_model/ is written at step 8's validation (before step 8's checkpoint); limits after the step-4 checkpoint
    output_dir = tmp_path / "run"
    args = tiny_args(tiny_corpus, output_dir, **{**CRASH_RUN, "eval_steps": 6})
    child = zygote.start(args, faults=[{"kind": "file_size_limit", "after_checkpoint": 1, "bytes": 256 * 1024}],
                         name="full-disk-best")
    assert child.wait(90) == 1, child.output()[-3000:]
    assert re.search(r"ERROR convirt_hf\.pretrain: Could not write the best model to \S*best_model \(.*File too "
                     r"large.*\)\. The last checkpoint is \S*step_00000004: free space", child.output()), \
        child.output()[-3000:]
    assert "Traceback" not in child.output()
    assert not (output_dir / ".incomplete-best_model").exists()
    assert latest_checkpoint(output_dir / "checkpoints").name == "step_00000004"
