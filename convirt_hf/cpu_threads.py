"""How many threads a CPU training process uses: all the cores it is given, unless the user said otherwise.

`accelerate launch` exports ``OMP_NUM_THREADS=1`` to the script unless it was given ``--num_cpu_threads_per_process``,
``--cpu``, or an ``OMP_NUM_THREADS`` of the user's (accelerate 1.15, `_validate_launch_command`), so on a machine
without a GPU a plain ``accelerate launch train.py`` computes on one core however many it has. The script cannot see
from its own environment whether that 1 was chosen; it reads the launcher's command line and environment (its parent
process, on Linux) to tell, and otherwise gives each local process an equal share of the cores it may run on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

__all__ = ["available_cores", "configure_cpu_threads"]

ACCELERATE_LAUNCH_MARKER = "ACCELERATE_DYNAMO_BACKEND"  # exported by every `accelerate launch` to its processes


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, bounded by a cgroup v2 CPU quota when one is set."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _launcher_thread_choice(parent_pid: int) -> str | None:
    """What the user gave `accelerate launch` about threads (its flag or their OMP_NUM_THREADS), None if nothing."""
    try:
        argv = Path(f"/proc/{parent_pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{parent_pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "unknown"  # cannot look (not Linux, or not allowed): keep what the launcher set
    for index, argument in enumerate(argv):
        if argument.startswith(b"--num_cpu_threads_per_process"):
            value = argument.partition(b"=")[2] or (argv[index + 1] if index + 1 < len(argv) else b"")
            return f"--num_cpu_threads_per_process {value.decode(errors='replace')}"
    for variable in environ:
        if variable.startswith(b"OMP_NUM_THREADS="):
            return variable.decode(errors="replace")
    return None


def configure_cpu_threads(device: torch.device | str = "cpu") -> tuple[int, str]:
    """
    Sets torch's intra-op threads for a process that computes on the CPU and returns (threads, why).

    Threads are the available cores divided among the local processes (``LOCAL_WORLD_SIZE``), unless the user chose:
    an ``OMP_NUM_THREADS`` of their own, or ``accelerate launch --num_cpu_threads_per_process N``. A process that
    computes on a GPU keeps torch's setting (its CPU threads only feed the GPU).
    """
    if torch.device(device).type != "cpu":
        return torch.get_num_threads(), "GPU process: torch's default"
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = available_cores()
    share = max(1, cores // local_processes)
    if ACCELERATE_LAUNCH_MARKER in os.environ:
        choice = _launcher_thread_choice(os.getppid())
        if choice == "unknown":
            return torch.get_num_threads(), ("as accelerate launch set it (pass --num_cpu_threads_per_process to "
                                            f"choose; {share} would use every core)")
        if choice is not None:
            return torch.get_num_threads(), f"chosen with {choice}"
    elif "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads(), f"chosen with OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    torch.set_num_threads(share)
    why = f"{cores} available core(s)" + (
        f" shared by {local_processes} local processes" if local_processes > 1 else "")
    return torch.get_num_threads(), why
