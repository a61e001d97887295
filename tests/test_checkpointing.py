"""Checkpoint writes: an interrupted save never damages the previous checkpoint; a full disk is reported clearly."""

from __future__ import annotations

import errno
import json

import pytest
import torch
from accelerate import Accelerator

from convirt_hf.checkpointing import (
    CheckpointWriteError,
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


@pytest.fixture()
def trainer():
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def train_step(model, optimizer):
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_save_load_and_keep_last(trainer, tmp_path):
    accelerator, model, optimizer = trainer
    for step in range(1, 5):
        train_step(model, optimizer)
        save_checkpoint(accelerator, tmp_path, step, {"step": step}, keep_last=2)
    assert [path.name for path in complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    expected = model.weight.detach().clone()
    train_step(model, optimizer)
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 4}
    torch.testing.assert_close(model.weight, expected, rtol=0, atol=0)


def test_a_save_interrupted_midway_leaves_the_previous_checkpoint_loadable(trainer, tmp_path, monkeypatch):
    accelerator, model, optimizer = trainer
    train_step(model, optimizer)
    save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, keep_last=3)
    saved_weight = model.weight.detach().clone()
    train_step(model, optimizer)

    original = accelerator.save_state

    def dies_after_the_weights(output_dir, **kwargs):
        original(output_dir=output_dir, **kwargs)  # weights and optimizer are on disk ...
        raise KeyboardInterrupt("killed while writing")  # ... and the process dies before the commit

    monkeypatch.setattr(accelerator, "save_state", dies_after_the_weights)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, keep_last=3)
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path).name == "step_00000001"
    assert any(path.name.startswith(".incomplete-") for path in tmp_path.iterdir())  # the torn write, ignored
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 1}
    torch.testing.assert_close(model.weight, saved_weight, rtol=0, atol=0)
    save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, keep_last=3)  # the next save cleans up
    assert not any(path.name.startswith(".incomplete-") for path in tmp_path.iterdir())


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(trainer, tmp_path, monkeypatch):
    accelerator, model, optimizer = trainer
    save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, keep_last=3)

    def no_space(output_dir, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", no_space)
    with pytest.raises(CheckpointWriteError, match=r"step 2 .*No space left on device.*step_00000001 is intact"):
        save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, keep_last=3)
    assert [path.name for path in tmp_path.iterdir()] == ["step_00000001"]
    assert json.loads((tmp_path / "step_00000001" / "train_state.json").read_text()) == {"step": 1}


def test_loading_something_that_is_not_a_checkpoint(trainer, tmp_path):
    accelerator, _, _ = trainer
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(accelerator, tmp_path)
    assert latest_checkpoint(tmp_path / "missing") is None
