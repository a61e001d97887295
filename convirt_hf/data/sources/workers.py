"""Worker processes: one loop for every stage that writes records, and what travels back from the workers.

``Dataset.from_generator`` runs a generator per shard, in worker processes when there are several. Those processes
cannot update the caller's ledger, show its progress bar, or send back an exception with its cause, so each worker
writes its counts, its progress and (in strict mode) the bad row it stopped at into small files in a folder that
:func:`build_dataset` reads back. :func:`run_shards` is the loop that every stage's generator is made of (reading a
source, resizing a corpus): it keeps one ledger per shard, counts progress, and writes the ledger file however the
shard ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..records import RECORD_COLUMNS, RECORD_FEATURES
from ..skips import BadInputError
from .base import PairLedger

logger = logging.getLogger(__package__)  # the name of the module before the split, which users filter on

DEFAULT_WRITER_BATCH_SIZE = 100
_PROGRESS_INTERVAL_S = 0.25


def write_ledger_file(ledger: PairLedger, ledger_dir: str | os.PathLike, name: str, kept: int,
                      error: BadInputError | None = None) -> None:
    """
    Saves a worker's counts (and, in strict mode, the bad row that stopped it) for `merge_ledger_files`: worker
    processes cannot update the caller's ledger, and an exception pickled back from one loses its cause.
    """
    data = {**ledger.to_json(), "kept": kept}
    if error is not None:
        data["error"] = {"row_id": error.row_id, "reason": error.reason, "detail": error.detail}
    target = Path(ledger_dir) / f"{name}-{uuid.uuid4().hex[:8]}.json"
    target.write_text(json.dumps(data))


def merge_ledger_files(ledger: PairLedger, ledger_dir: str | os.PathLike) -> int:
    """Adds the workers' counts to `ledger`; returns the number of rows they kept."""
    kept = 0
    for path in sorted(Path(ledger_dir).glob("*.json")):
        data = json.loads(path.read_text())
        ledger.add_json(data)
        kept += int(data.get("kept", 0))
    return kept


def strict_error_from_files(ledger_dir: str | os.PathLike) -> BadInputError | None:
    """The bad row a worker stopped at in strict mode (the lowest shard's, when several did), or None."""
    for path in sorted(Path(ledger_dir).glob("*.json")):
        error = json.loads(path.read_text()).get("error")
        if error:
            return BadInputError(error["row_id"], error["reason"], error.get("detail", ""))
    return None


class ShardProgress:
    """
    Counts the rows a generator has processed into ``<ledger_dir>/progress-<name>.txt`` (at most every 0.25 s), for
    the :class:`ProgressMonitor` of the main process.
    """

    def __init__(self, ledger_dir: str | os.PathLike, name: str):
        self.path = Path(ledger_dir) / f"progress-{name}.txt"
        self.count = 0
        self._last = 0.0

    def advance(self, count: int = 1) -> None:
        self.count += count
        now = time.monotonic()
        if now - self._last >= _PROGRESS_INTERVAL_S:
            self._last = now
            self._write()

    def close(self) -> None:
        self._write()

    def _write(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.write_text(str(self.count))
        os.replace(temporary, self.path)  # the monitor never reads a half-written number


class ProgressMonitor:
    """
    One progress bar (tqdm, on stderr) for a load, whatever the number of worker processes: a thread sums the
    :class:`ShardProgress` files. On close it logs the count and rate at INFO.

    Args:
        ledger_dir: the folder the generators write their progress files into.
        description: the bar's label, e.g. ``"reading manifest:pairs.csv"``.
        total: the number of rows when known (the bar then shows a percentage and time left).
        enabled: draw the bar (the closing log line is written either way).
    """

    def __init__(self, ledger_dir: str | os.PathLike, description: str, total: int | None = None,
                 enabled: bool = True):
        from tqdm.auto import tqdm

        self.ledger_dir = Path(ledger_dir)
        self.description = description
        self.started = time.perf_counter()
        self.bar = tqdm(total=total, desc=description, unit=" rows", disable=not enabled, dynamic_ncols=True)
        self.shown = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="convirt-progress", daemon=True)
        self._thread.start()

    def count(self) -> int:
        total = 0
        for path in self.ledger_dir.glob("progress-*.txt"):
            try:
                total += int(path.read_text() or 0)
            except (OSError, ValueError):
                continue  # replaced while being read: the next poll has it
        return total

    def _poll(self) -> None:
        current = self.count()
        if current > self.shown:
            self.bar.update(current - self.shown)
            self.shown = current

    def _run(self) -> None:
        while not self._stop.wait(_PROGRESS_INTERVAL_S):
            self._poll()

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        self._poll()
        self.bar.close()
        seconds = time.perf_counter() - self.started
        logger.info("%s: %d rows in %.1f s (%.0f rows/s)", self.description, self.shown, seconds,
                    self.shown / seconds if seconds > 0 else 0.0)
        return self.shown


@contextmanager
def datasets_progress_bars(enabled: bool):
    """Turns the `datasets` progress bars off (or leaves them) for the duration, then restores their state."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled and not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            datasets.enable_progress_bars()


def run_shards(
    shards: list[int],
    stage: str,
    ledger_dir: str,
    ledger_name: str,
    strict: bool,
    rows: Callable[[int, PairLedger], Iterable[Any]],
    finish: Callable[[Any, PairLedger], dict | None],
) -> Iterator[dict]:
    """
    The loop of a generator behind :func:`build_dataset`: yields the records of each of `shards`.

    Args:
        shards: the shards this process handles (``build_dataset`` deals them out).
        stage: names the progress and ledger files (``"read"``, ``"resize"``).
        ledger_dir, ledger_name: the folder of the worker files, and the source name of their ledgers.
        strict: the ledgers raise :class:`~convirt_hf.data.skips.BadInputError` on the first skip.
        rows: ``rows(shard, ledger)``, the items of a shard (it may count rows left out on request in `ledger`).
        finish: ``finish(item, ledger)``, an item's record, or None once it is counted as skipped or filtered.
    """
    for shard in shards:
        ledger = PairLedger(source=ledger_name, strict=strict, log=False)  # the caller logs the rows on merging
        progress = ShardProgress(ledger_dir, f"{stage}-{shard:05d}")
        kept, error = 0, None
        try:
            for item in rows(shard, ledger):
                try:
                    record = finish(item, ledger)
                except BadInputError as raised:
                    error = raised  # written down below: the exception itself loses its cause on the way back
                    raise
                progress.advance()
                if record is not None:
                    kept += 1
                    yield record
        finally:
            progress.close()
            write_ledger_file(ledger, ledger_dir, f"{stage}-{shard:05d}", kept, error)


def _bad_row_behind(error: BaseException, ledger_dir: str) -> BadInputError | None:
    """The strict-mode bad row behind a `datasets` error: as a worker recorded it, else from the chain of causes."""
    recorded = strict_error_from_files(ledger_dir)
    if recorded is not None:
        return recorded
    cause = error.__cause__ or error.__context__
    while cause is not None and not isinstance(cause, BadInputError):
        cause = cause.__cause__ or cause.__context__
    return cause


def build_dataset(
    generator: Callable[..., Iterator[dict]],
    gen_kwargs: dict,
    num_shards: int,
    ledger: PairLedger,
    *,
    cache_dir: str | os.PathLike | None = None,
    writer_batch_size: int = DEFAULT_WRITER_BATCH_SIZE,
    progress: str | None = None,
    total: int | None = None,
    show_progress: bool = True,
):
    """
    Runs `generator` (which takes ``shards`` and ``ledger_dir`` besides `gen_kwargs`) through
    ``Dataset.from_generator`` into a fresh Arrow file, with one worker process per shard when `num_shards` > 1
    (rows then come shard by shard, not in source order), and merges the workers' ledgers into `ledger`.

    In strict mode the :class:`BadInputError` of the first bad row is raised as itself, whatever `num_shards` is
    (`datasets` wraps it in a ``DatasetGenerationError``, and a worker's exception loses its cause on the way back,
    so the generator also records it in its ledger file).

    Args:
        progress: the label of a progress bar fed by :class:`ShardProgress` files in ``ledger_dir`` (None: no bar
            and no progress line; the `datasets` "Generating ... split" bar is never shown).
        total: the bar's total, when known.
        show_progress: draw the bar (False still logs the closing count and rate at INFO).
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    ledger_dir = tempfile.mkdtemp(prefix="convirt-ledger-")
    kept = None
    monitor = None
    try:
        try:
            if progress is not None:
                import datasets

                monitor = ProgressMonitor(ledger_dir, progress, total,
                                          enabled=show_progress and not datasets.are_progress_bars_disabled())
            with datasets_progress_bars(False):
                dataset = Dataset.from_generator(
                    generator,
                    features=RECORD_FEATURES,
                    gen_kwargs={**gen_kwargs, "shards": list(range(num_shards)), "ledger_dir": ledger_dir},
                    num_proc=num_shards if num_shards > 1 else None,
                    cache_dir=None if cache_dir is None else str(cache_dir),
                    # A fresh fingerprint: the files behind a source change without its arguments changing, and a
                    # cached result would also skip the generator, leaving the ledger empty.
                    fingerprint=uuid.uuid4().hex,
                    writer_batch_size=writer_batch_size,
                )
        except DatasetGenerationError as error:
            bad_row = _bad_row_behind(error, ledger_dir)
            if bad_row is not None:
                raise bad_row from None
            raise
        except ValueError:
            # `datasets` cannot build a split from zero rows; every row being skipped is a valid (if sad) outcome.
            kept = merge_ledger_files(ledger, ledger_dir)
            if kept:
                raise
            return Dataset.from_dict({column: [] for column in RECORD_COLUMNS}, features=RECORD_FEATURES)
        finally:
            if monitor is not None:
                monitor.close()
            if kept is None:
                merge_ledger_files(ledger, ledger_dir)
    finally:
        shutil.rmtree(ledger_dir, ignore_errors=True)
    return dataset


__all__ = [
    "DEFAULT_WRITER_BATCH_SIZE",
    "ProgressMonitor",
    "ShardProgress",
    "build_dataset",
    "datasets_progress_bars",
    "merge_ledger_files",
    "run_shards",
    "strict_error_from_files",
    "write_ledger_file",
]
