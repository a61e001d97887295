"""Two CPU processes (gloo) under `accelerate launch`: a killed or hung process never leaves its peer waiting forever.

A process that dies (SIGKILL) closes its sockets: its peer's next collective fails at once and the launcher ends the
run, naming the dead rank. A process that hangs (SIGSTOP: alive, sockets open, never answering) is the dangerous
case: without a timeout its peer would wait in the gradient all-reduce for torch's default of 30 minutes. With
`--ddp_timeout` the peer fails after that many seconds with a message saying what happened and how to resume. Both
runs then resume from the last complete checkpoint and end with bitwise the weights of an uninterrupted 2-process
run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from convirt_hf.checkpointing import latest_checkpoint

from faultkit import (
    REPO_ROOT,
    SCRIPT,
    accelerate_launcher,
    alive,
    assert_same_weights,
    child_pids,
    last_logged_step,
    process_rank,
    read_log,
    tiny_args,
    train_losses,
    wait_until,
)

MULTI = dict(max_steps=24, save_steps=4, eval_steps=24, save_total_limit=2, retrieval_set="none")


def launch(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(accelerate_launcher(2) + [str(SCRIPT)] + args, cwd=REPO_ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def worker(launcher: subprocess.Popen, rank: int) -> int:
    return wait_until(lambda: next((pid for pid in child_pids(launcher.pid) if process_rank(pid) == rank), None),
                      timeout=60, what=f"the rank {rank} process")


def finish(launcher: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    try:
        launcher.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        raise AssertionError(f"the launcher did not return within {timeout} s:\n{log.read_text()[-4000:]}") from None
    return log.read_text(errors="replace")


@pytest.mark.slow
def test_a_killed_or_hung_process_stops_its_peer_and_both_resume(tiny_corpus, tmp_path):
    reference = tmp_path / "reference"
    log = tmp_path / "reference.log"
    assert finish(launch(tiny_args(tiny_corpus, reference, **MULTI), log), log) and log.exists()
    assert (reference / "model.safetensors").is_file(), log.read_text()[-4000:]

    output_dir = tmp_path / "run"
    args = tiny_args(tiny_corpus, output_dir, **MULTI)

    # 1. SIGKILL rank 1 mid-run: rank 0's next collective fails at once, the launcher stops and names the dead rank
    log = tmp_path / "killed.log"
    launcher = launch(args, log)
    rank0, rank1 = worker(launcher, 0), worker(launcher, 1)
    wait_until(lambda: last_logged_step(output_dir) >= 6 or launcher.poll() is not None, 120, what="step 6")
    assert launcher.poll() is None, log.read_text()[-4000:]
    os.kill(rank1, signal.SIGKILL)
    killed_at = time.time()
    output = finish(launcher, log, timeout=60)
    assert time.time() - killed_at < 45
    assert launcher.returncode != 0
    assert not alive(rank0) and not alive(rank1)
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\n\s*exitcode\s*: -9 .*SIGKILL", output), output[-3000:]
    first_checkpoint = latest_checkpoint(output_dir / "checkpoints")
    assert first_checkpoint is not None and int(first_checkpoint.name[5:]) >= 4

    # 2. resume both; then rank 0 hangs (SIGSTOP): rank 1 gives up after --ddp_timeout with a clear message
    log = tmp_path / "hung.log"
    launcher = launch(args + ["--resume", "latest", "--ddp_timeout", "5"], log)
    rank0, rank1 = worker(launcher, 0), worker(launcher, 1)
    resumed_at = int(first_checkpoint.name[5:])
    wait_until(lambda: last_logged_step(output_dir) >= resumed_at + 5 or launcher.poll() is not None, 120,
               what="5 steps after the resume")
    assert launcher.poll() is None, log.read_text()[-4000:]
    os.kill(rank0, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_until(lambda: not alive(rank1), timeout=40, interval=0.1, what="rank 1 to give up on the hung rank 0")
        waited = time.time() - stopped_at
    finally:
        os.kill(rank0, signal.SIGKILL)  # the launcher's SIGTERM cannot reach a stopped process
    output = finish(launcher, log, timeout=60)
    assert 4 <= waited < 35, waited
    assert launcher.returncode != 0
    assert re.search(r"ERROR convirt_hf\.pretrain: Process 1 of 2: communication with the other processes failed "
                     r"\(.*[Tt]imed out.*\)\. Another process crashed, was killed or hangs \(a process waits at most "
                     r"--ddp_timeout 5 s\)\. The last complete checkpoint is \S*step_\d{8}; restart every process with "
                     r"--resume latest\.", output), output[-4000:]
    assert f"resumed from {first_checkpoint} at step {resumed_at}" in output

    # 3. resume both again: from the last complete checkpoint to the end, bitwise equal to the uninterrupted run
    last = latest_checkpoint(output_dir / "checkpoints")
    log = tmp_path / "finish.log"
    output = finish(launch(args + ["--resume", "latest"], log), log)
    assert (output_dir / "metrics.json").is_file(), output[-4000:]
    assert output.count(f"resumed from {last} at step {int(last.name[5:])}") == 2  # both processes
    final = f"checkpoints/step_{MULTI['max_steps']:08d}/model.safetensors"
    assert_same_weights(reference / final, output_dir / final, "(2 processes, killed, hung and resumed)")
    assert train_losses(output_dir) == train_losses(reference)
    assert [row["step"] for row in read_log(output_dir) if "train/loss" in row] == list(range(1, 25))
