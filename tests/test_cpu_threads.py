"""A CPU run computes on every core it is given, whichever way it is started, unless the user chose a thread count."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convirt_hf import cpu_threads

from helpers import tiny_args

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "training" / "pretrain.py"


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def cores(monkeypatch) -> int:
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: 4)
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", cpu_threads.ACCELERATE_LAUNCH_MARKER):
        monkeypatch.delenv(name, raising=False)
    return 4


def test_a_plain_run_uses_every_core(cores):
    assert cpu_threads.configure_cpu_threads("cpu") == (4, "4 available core(s)")


def test_local_processes_share_the_cores(cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads.configure_cpu_threads("cpu")[0] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert cpu_threads.configure_cpu_threads("cpu")[0] == 1  # never 0


def test_the_users_omp_num_threads_is_kept(cores, monkeypatch):
    torch.set_num_threads(3)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads.configure_cpu_threads("cpu") == (3, "chosen with OMP_NUM_THREADS=3")


def test_accelerate_launchs_default_of_one_thread_is_replaced(cores, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch exports when nobody chose
    monkeypatch.setenv(cpu_threads.ACCELERATE_LAUNCH_MARKER, "no")
    monkeypatch.setattr(cpu_threads, "_launcher_thread_choice", lambda pid: None)
    assert cpu_threads.configure_cpu_threads("cpu")[0] == 4
    # ... unless the launcher was told
    torch.set_num_threads(1)
    monkeypatch.setattr(cpu_threads, "_launcher_thread_choice", lambda pid: "--num_cpu_threads_per_process 1")
    assert cpu_threads.configure_cpu_threads("cpu") == (1, "chosen with --num_cpu_threads_per_process 1")


def started_launcher(*arguments: str, env: dict) -> subprocess.Popen:
    """A stand-in launcher process, returned once it runs its own command line (not its parent's, before exec)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; print(flush=True); time.sleep(30)", *arguments],
                               env=env, stdout=subprocess.PIPE)
    process.stdout.readline()
    return process


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc (Linux)")
def test_the_launchers_command_line_and_environment_are_read():
    launcher = started_launcher("--num_cpu_threads_per_process", "3", env={**os.environ, "OMP_NUM_THREADS": "5"})
    try:
        assert cpu_threads._launcher_thread_choice(launcher.pid) == "--num_cpu_threads_per_process 3"
    finally:
        launcher.kill()
    launcher = started_launcher(env={**os.environ, "OMP_NUM_THREADS": "5"})
    try:
        assert cpu_threads._launcher_thread_choice(launcher.pid) == "OMP_NUM_THREADS=5"
    finally:
        launcher.kill()
    launcher = started_launcher("--num_cpu_threads_per_process=2", env={})
    try:
        assert cpu_threads._launcher_thread_choice(launcher.pid) == "--num_cpu_threads_per_process 2"
    finally:
        launcher.kill()
    launcher = started_launcher(env={key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"})
    try:
        assert cpu_threads._launcher_thread_choice(launcher.pid) is None
    finally:
        launcher.kill()


def test_a_gpu_process_keeps_torchs_setting():
    assert cpu_threads.configure_cpu_threads("cuda")[1] == "GPU process: torch's default"


@pytest.mark.slow
def test_every_launcher_gives_the_run_all_cores_and_the_log_says_so(tiny_corpus, tmp_path):
    corpus = tiny_corpus
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    # the code behind the `accelerate` command, found whether or not the environment put that script beside python
    accelerate = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--num_processes", "1"]
    expected = cpu_threads.available_cores()
    launches = {
        "python": ([sys.executable], {}, expected),
        "accelerate launch": (accelerate, {}, expected),
        "accelerate launch, one thread asked": (accelerate + ["--num_cpu_threads_per_process", "1"], {}, 1),
    }
    for index, (name, (launcher, extra_env, threads)) in enumerate(launches.items()):
        args = tiny_args(corpus, tmp_path / f"run{index}", max_steps=1, eval_steps=1, save_steps=1,
                         retrieval_set="none")
        result = subprocess.run(launcher + [str(SCRIPT), *args], cwd=REPO_ROOT, env={**env, **extra_env},
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        logged = re.search(r"(\d+) CPU thread\(s\) per process \(([^)]*)\)", result.stderr)
        assert logged, (name, result.stderr[-3000:])
        assert int(logged.group(1)) == threads, (name, logged.group(0))
