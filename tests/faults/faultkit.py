"""Helpers of the fault tests: tiny training arguments, a client of the fork server, process inspection."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers import tiny_args  # noqa: F401  (the fault tests import it from here)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "training" / "pretrain.py"
ZYGOTE = Path(__file__).resolve().parent / "zygote_server.py"

# The crash tests' run: 16 steps, a checkpoint every 4, validation (and a best-model save) every 8.
CRASH_RUN = dict(max_steps=16, save_steps=4, eval_steps=8, save_total_limit=2, retrieval_set="none")


def read_log(output_dir: Path) -> list[dict]:
    path = Path(output_dir) / "train_log.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass  # a line being written right now
    return rows


def last_logged_step(output_dir: Path) -> int:
    return max((row.get("step", 0) for row in read_log(output_dir)), default=0)


def train_losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["train/loss"]) for row in read_log(output_dir) if "train/loss" in row]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(expected_file: Path, actual_file: Path, context: str = "") -> None:
    expected, actual = weights(expected_file), weights(actual_file)
    assert expected.keys() == actual.keys(), context
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert not different, f"{len(different)} tensors differ ({different[:3]}) {context}"


# --- the fork server ------------------------------------------------------------------------------------------


class ChildRun:
    def __init__(self, zygote: Zygote, pid: int, log: Path):
        self.zygote, self.pid, self.log = zygote, pid, log

    def poll(self) -> int | None:
        return self.zygote.returncodes.get(self.pid)

    def wait(self, timeout: float = 120) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            code = self.poll()
            if code is not None:
                return code
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"training process {self.pid} did not end within {timeout} s:\n{self.output()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Sends `sig`; False when the process had already ended."""
        if self.poll() is not None:
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


class Zygote:
    """Client of zygote_server.py: `start(argv)` forks a training process from the pre-imported server."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, str(ZYGOTE)], cwd=REPO_ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=open(self.log_dir / "zygote.stderr", "w"))
        self.returncodes: dict[int, int] = {}
        self.started: queue.Queue = queue.Queue()
        self.counter = 0
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.started.get(timeout=120)
        assert ready["event"] == "ready", ready

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            if message["event"] == "exit":
                self.returncodes[message["pid"]] = message["returncode"]
            else:
                self.started.put(message)

    def start(self, argv: list[str], env: dict | None = None, faults: list[dict] | None = None,
              unset_env: list[str] | None = None, name: str = "run") -> ChildRun:
        if self.process.poll() is not None:
            raise AssertionError(f"the fork server died:\n{(self.log_dir / 'zygote.stderr').read_text()}")
        self.counter += 1
        log = self.log_dir / f"{self.counter:03d}-{name}.log"
        request = {"id": self.counter, "argv": [str(a) for a in argv], "log": str(log), "env": env or {},
                   "unset_env": unset_env or [], "faults": faults or []}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        message = self.started.get(timeout=60)
        assert message["id"] == self.counter, message
        return ChildRun(self, message["pid"], log)

    def run(self, argv: list[str], timeout: float = 120, **kwargs) -> ChildRun:
        """Starts a run and waits for it; raises with its output unless it exits 0."""
        child = self.start(argv, **kwargs)
        code = child.wait(timeout)
        if code != 0:
            raise AssertionError(f"training exited {code}:\n{child.output()[-4000:]}")
        return child

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


# --- processes launched by accelerate ---------------------------------------------------------------------------


def accelerate_launcher(num_processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(29500 + random.randint(0, 20000))]


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


def process_rank(pid: int) -> int | None:
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environment:
        if item.startswith(b"RANK="):
            return int(item[len("RANK="):])
    return None


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_until(condition, timeout: float, interval: float = 0.005, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
