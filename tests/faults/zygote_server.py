"""A fork server for the fault tests: imports the training stack once, then forks one training process per request.

Importing torch, transformers, timm, datasets and accelerate takes about 6 s on a 2-core CI machine, and the crash
tests start a dozen training processes; forking them from one process that has already imported everything (and
computed nothing, so no thread pool exists yet) makes each start cost a fraction of a second. Each child is an
ordinary process running ``training/pretrain.py``'s ``cli()`` with the request's arguments: the tests SIGKILL it,
limit its file sizes or make it kill itself at a chosen point of a checkpoint write (see ``install_faults``).

Protocol (JSON lines): the test writes ``{"id", "argv", "log", "env", "faults"}`` to stdin; the server answers
``{"event": "started", "id", "pid"}`` and, when the child ends, ``{"event": "exit", "pid", "returncode"}``
(``-9`` for SIGKILL). Run as ``python zygote_server.py``; it ends when stdin closes.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from convirt_hf import atomic, checkpointing  # noqa: E402
from convirt_hf.training import pretrain  # noqa: E402  (the heavy imports, once)

torch.set_num_threads(1)
_OUTPUT_LOCK = threading.Lock()


def send(message: dict) -> None:
    with _OUTPUT_LOCK:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def reap_children() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.01)
            continue
        send({"event": "exit", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})


def die() -> None:
    """SIGKILL this process: no cleanup, no flush, exactly what the OOM killer or `kill -9` does."""
    os.kill(os.getpid(), signal.SIGKILL)


# --- faults a child installs in itself -----------------------------------------------------------------------


class _Counter:
    checkpoint = 0  # how many save_checkpoint calls this process has started
    best_model = 0


def install_faults(faults: list[dict]) -> None:
    """
    Each fault is ``{"kind": ..., ...}``:

    - ``kill_in_checkpoint`` (``checkpoint``: the n-th save of this process, ``phase``): SIGKILL during that save, at
      ``torn_weights`` (model.safetensors half written), ``after_state`` (accelerate's files written, no
      train_state.json yet), ``torn_train_state`` (train_state.json half written), ``before_commit`` (everything
      written, not yet renamed) or ``after_commit`` (renamed, old checkpoints not yet pruned);
    - ``kill_in_best_model`` (``save``: the n-th best-model save): SIGKILL when the new best_model is written but not
      yet swapped in;
    - ``slow_checkpoint`` (``seconds``): a slow disk: each save pauses with its temporary folder on disk, so that an
      outside observer can SIGKILL the process while the folder exists;
    - ``file_size_limit`` (``after_checkpoint``, ``bytes``): after the n-th save completes, every file write beyond
      ``bytes`` fails with EFBIG (RLIMIT_FSIZE), as on a full disk.
    """
    import accelerate
    import accelerate.utils.other as accelerate_other

    def fault(kind):
        return [f for f in faults if f["kind"] == kind]

    from convirt_hf.pretraining import loop

    original_save_checkpoint = loop.save_checkpoint

    def counting_save_checkpoint(*args, **kwargs):
        _Counter.checkpoint += 1
        result = original_save_checkpoint(*args, **kwargs)
        for limit in fault("file_size_limit"):
            if _Counter.checkpoint == limit["after_checkpoint"]:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit["bytes"], resource.RLIM_INFINITY))
        return result

    loop.save_checkpoint = counting_save_checkpoint  # the loop's checkpoints (periodic and before a stop)

    kills = {f["phase"]: f["checkpoint"] for f in fault("kill_in_checkpoint")}

    def armed(phase: str) -> bool:
        return kills.get(phase) == _Counter.checkpoint

    original_save_state = accelerate.Accelerator.save_state

    def save_state(self, *args, **kwargs):
        result = original_save_state(self, *args, **kwargs)
        for slow in fault("slow_checkpoint"):
            time.sleep(slow["seconds"])
        if armed("after_state"):
            die()
        return result

    accelerate.Accelerator.save_state = save_state

    original_safe_save = accelerate_other.safe_save_file

    def safe_save_file(tensors, filename, *args, **kwargs):
        original_safe_save(tensors, filename, *args, **kwargs)
        if armed("torn_weights") and ".incomplete-step_" in str(filename):
            size = os.path.getsize(filename)
            os.truncate(filename, size // 2)
            die()

    accelerate_other.safe_save_file = safe_save_file

    original_dump = checkpointing.json.dump

    def dump(obj, handle, *args, **kwargs):
        if armed("torn_train_state") and str(getattr(handle, "name", "")).endswith(checkpointing.TRAIN_STATE_FILE):
            text = json.dumps(obj, *args, **kwargs)
            handle.write(text[: len(text) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            die()
        return original_dump(obj, handle, *args, **kwargs)

    checkpointing.json.dump = dump

    best_kills = [f["save"] for f in fault("kill_in_best_model")]
    original_replace = os.replace

    def replace(source, destination, *args, **kwargs):
        name = os.path.basename(os.fspath(source))
        if name.startswith(checkpointing.TEMPORARY_PREFIX + "step_") and armed("before_commit"):
            die()
        if name == ".incomplete-best_model":
            _Counter.best_model += 1
            if _Counter.best_model in best_kills:
                die()
        return original_replace(source, destination, *args, **kwargs)

    os.replace = replace

    original_fsync_folder = atomic.fsync_folder

    def fsync_folder(path):  # only a checkpoint's commit syncs its folder
        original_fsync_folder(path)
        if armed("after_commit"):
            die()

    atomic.fsync_folder = fsync_folder


def run_child(request: dict) -> None:
    descriptor = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    code = 1
    try:
        os.environ.update(request.get("env") or {})
        for name in request.get("unset_env") or []:
            os.environ.pop(name, None)
        install_faults(request.get("faults") or [])
        sys.argv = ["training/pretrain.py", *request["argv"]]
        pretrain.cli()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child reports every failure through its exit status and log
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    threading.Thread(target=reap_children, daemon=True).start()
    send({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        with _OUTPUT_LOCK:  # no thread is writing while the child is forked
            sys.stdout.flush()
            pid = os.fork()
        if pid == 0:
            run_child(request)
        send({"event": "started", "id": request["id"], "pid": pid})


if __name__ == "__main__":
    main()
