"""Two "nodes" on 127.0.0.1: two `accelerate launch` commands with `--num_machines 2`, one process each, gloo.

They train exactly what one node with two processes trains on the same global batch, and when one node dies the
other ends within `--ddp_timeout` with a message that says how to resume (the commands are the ones
docs/training.md gives for N nodes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faultkit import (
    REPO_ROOT,
    SCRIPT,
    accelerate_launcher,
    child_pids,
    last_logged_step,
    tiny_args,
    train_losses,
    wait_until,
)

# LayerNorm tower and no dropout: with BatchNorm each process normalises its own half of the batch (as on real nodes)
RUN = dict(image_model_name="test_convnext", text_dropout=0.0, per_device_batch_size=8, save_steps=3, eval_steps=100,
           retrieval_set="none", logging_steps=1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_launcher(rank: int, port: int) -> list[str]:
    """One node of two, one process each: what a node of a real two-node job runs."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--rdzv_backend", "static", "--same_network", "--mixed_precision", "no",
            "--dynamo_backend", "no"]


def start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as handle:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(process: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"did not end within {timeout} s:\n{log.read_text()[-4000:]}") from None
    return log.read_text()


def kill_node(launcher: subprocess.Popen) -> None:
    """SIGKILL a node: its training processes (torch elastic starts them in sessions of their own) and its launcher."""
    descendants, frontier = [], [launcher.pid]
    while frontier:
        children = [pid for parent in frontier for pid in child_pids(parent)]
        descendants += children
        frontier = children
    for pid in [*descendants, launcher.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_two_nodes_train_like_one_node_and_a_dead_node_stops_the_other(tiny_corpus, tmp_path):
    one_node = tmp_path / "one-node"
    log = tmp_path / "one-node.log"
    output = finish(start(accelerate_launcher(2) + [str(SCRIPT), *tiny_args(tiny_corpus, one_node, max_steps=3, **RUN)],
                          log), log, timeout=240)
    assert "2 process(es)" in output, output[-3000:]

    two_nodes = tmp_path / "two-nodes"
    port = free_port()
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    nodes = [start(node_launcher(rank, port) + [str(SCRIPT), *tiny_args(tiny_corpus, two_nodes, max_steps=3, **RUN)],
                   logs[rank]) for rank in (0, 1)]
    outputs = [finish(node, log, timeout=240) for node, log in zip(nodes, logs)]
    assert all(node.returncode == 0 for node in nodes), outputs[0][-3000:] + outputs[1][-3000:]
    assert "2 process(es)" in outputs[0]
    # the same global batch of 16 pairs, split across nodes instead of processes: the same losses
    expected, got = train_losses(one_node), train_losses(two_nodes)
    assert [step for step, _ in got] == [1, 2, 3] == [step for step, _ in expected]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], rel=1e-5)

    # node 1 dies mid-run: node 0 ends within --ddp_timeout and says how to resume
    killed = tmp_path / "killed"
    port = free_port()
    logs = [tmp_path / f"killed-node{rank}.log" for rank in (0, 1)]
    arguments = tiny_args(tiny_corpus, killed, max_steps=5000, ddp_timeout=20, **RUN)
    nodes = [start(node_launcher(rank, port) + [str(SCRIPT), *arguments], logs[rank]) for rank in (0, 1)]
    wait_until(lambda: last_logged_step(killed) >= 4 or nodes[0].poll() is not None, 180, what="step 4")
    assert nodes[0].poll() is None, logs[0].read_text()[-4000:]
    kill_node(nodes[1])
    killed_at = time.monotonic()
    output = finish(nodes[0], logs[0], timeout=20 + 60)
    assert time.monotonic() - killed_at < 20 + 30, "node 0 outlived --ddp_timeout by far"
    assert nodes[0].returncode != 0
    assert "communication with the other processes failed" in output, output[-4000:]
    assert "restart every process with --resume latest" in output
