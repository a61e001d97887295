"""Counting and logging the rows a reader drops or repairs, so bad input is never silent.

Readers call :meth:`SkipLedger.skip` for a row they drop and :meth:`SkipLedger.repair` for a row they keep after
fixing it (a 16-bit PNG scaled to 8 bits, a report re-decoded from cp1252). Every event is recorded with its row id,
reason and detail (:attr:`SkipLedger.skipped_ids`, :attr:`SkipLedger.repaired_ids`, :meth:`SkipLedger.rows`, which
:meth:`SkipLedger.write_rows` saves as JSON lines) and logged once; so that a corpus with thousands of missing files
keeps a readable console, only the first ``max_logged_per_reason`` events of each reason are logged, followed by one
line saying that the rest are only recorded. :meth:`SkipLedger.summary` gives the one line printed at the end of
loading. In strict mode the first skip raises :class:`BadInputError` instead.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

DEFAULT_MAX_LOGGED_PER_REASON = 20


class BadInputError(ValueError):
    """Raised for a bad row in strict mode; ``reason`` is the same key the ledger would count."""

    def __init__(self, row_id: str, reason: str, detail: str = ""):
        self.row_id = row_id
        self.reason = reason
        self.detail = detail
        super().__init__(f"{row_id}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        # Worker processes send exceptions back pickled; the default (`cls(*self.args)`) would call __init__ with the
        # message alone and fail, losing the row id.
        return type(self), (self.row_id, self.reason, self.detail)


class RowRepairs:
    """
    One row's repairs, held until the row is kept: a row skipped after a repair counts as skipped only.

    It takes repairs as a ledger does (:meth:`repair`, so it can be the ``ledger=`` of
    :func:`~convirt_hf.data.images.load_image`) or by reason alone (:meth:`add`); :meth:`commit` hands them to the
    row's ledger once the row is kept.

    Args:
        items: repairs already made, as ``(reason, detail)`` (copied).
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()):
        self.items: list[tuple[str, str]] = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, reason: str, detail: str = "") -> None:
        self.items.append((reason, detail))

    def repair(self, row_id: str, reason: str, detail: str = "") -> None:
        self.add(reason, detail)

    def commit(self, ledger: SkipLedger, row_id: str) -> None:
        """Records the repairs in `ledger` under `row_id`."""
        for reason, detail in self.items:
            ledger.repair(row_id, reason, detail)


@dataclass
class SkipLedger:
    """Counts dropped and repaired rows by reason, and records every one of them with its id.

    Args:
        source: a short name used in log lines and the summary (e.g. ``"mimic-cxr"``).
        strict: raise :class:`BadInputError` on the first skipped row instead of counting it.
        max_logged_per_reason: after this many log lines for one reason, further rows of that reason are recorded
            and counted but not logged; ``None`` logs every row, ``0`` none.
        log: log the rows at all. Worker processes record without logging and the main process logs their rows when
            it merges their ledgers (a worker's log handlers are not the caller's, e.g. under ``spawn``), so the cap
            holds over all workers together.
    """

    source: str = "data"
    strict: bool = False
    max_logged_per_reason: int | None = DEFAULT_MAX_LOGGED_PER_REASON
    log: bool = True
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)
    skipped_details: dict[str, list[str]] = field(default_factory=dict)
    repaired_ids: dict[str, list[str]] = field(default_factory=dict)
    repaired_details: dict[str, list[str]] = field(default_factory=dict)

    def _should_log(self, count: int, kind: str, reason: str) -> bool:
        cap = self.max_logged_per_reason
        if cap is None or count <= cap:
            return True
        if count == cap + 1:
            # At the level of the rows it stands for, so that a console showing warnings only still says it.
            (logger.warning if kind == "skipped" else logger.info)(
                "[%s] more rows %s as %s: only the first %d are logged; every id is recorded "
                "(ledger.%s_ids; %s_rows.jsonl in a preprocessed output folder)",
                self.source, kind, reason, cap, kind, kind)
        return False

    def skip(self, row_id: str, reason: str, detail: str = "") -> None:
        if self.strict:
            raise BadInputError(row_id, reason, detail)
        self._add("skipped", row_id, reason, detail)

    def repair(self, row_id: str, reason: str, detail: str = "") -> None:
        self._add("repaired", row_id, reason, detail)

    def _add(self, kind: str, row_id: str, reason: str, detail: str) -> None:
        counts = self.skipped if kind == "skipped" else self.repaired
        counts[reason] += 1
        getattr(self, f"{kind}_ids").setdefault(reason, []).append(str(row_id))
        getattr(self, f"{kind}_details").setdefault(reason, []).append(detail)
        if self.log and self._should_log(counts[reason], kind, reason):
            (logger.warning if kind == "skipped" else logger.info)(
                "[%s] %s %s: %s%s", self.source, kind, row_id, reason, f" ({detail})" if detail else "")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def total_repaired(self) -> int:
        return sum(self.repaired.values())

    def merge(self, other: SkipLedger) -> None:
        """Adds another ledger's counts and ids to this one (without logging them again)."""
        self.skipped.update(other.skipped)
        self.repaired.update(other.repaired)
        for mine, theirs in ((self.skipped_ids, other.skipped_ids), (self.skipped_details, other.skipped_details),
                             (self.repaired_ids, other.repaired_ids),
                             (self.repaired_details, other.repaired_details)):
            for reason, values in theirs.items():
                mine.setdefault(reason, []).extend(values)

    def rows(self, kind: str = "skipped") -> Iterator[dict]:
        """Every ``"skipped"`` (or ``"repaired"``) row as ``{"id", "reason", "detail"}``, by reason."""
        if kind not in ("skipped", "repaired"):
            raise ValueError(f"kind must be 'skipped' or 'repaired', got {kind!r}")
        ids, details = getattr(self, f"{kind}_ids"), getattr(self, f"{kind}_details")
        for reason in sorted(ids):
            reason_details = details.get(reason, [])
            for index, row_id in enumerate(ids[reason]):
                detail = reason_details[index] if index < len(reason_details) else ""
                yield {"id": row_id, "reason": reason, "detail": detail}

    def write_rows(self, path: str | os.PathLike, kind: str = "skipped") -> int:
        """Writes :meth:`rows` to `path` as JSON lines; returns how many were written."""
        count = 0
        with open(path, "w", encoding="utf-8") as handle:
            for row in self.rows(kind):
                # ensure_ascii: an id that still carries an undecodable byte must not make the file unwritable.
                handle.write(json.dumps(row) + "\n")
                count += 1
        return count

    def summary(self, kept: int | None = None) -> str:
        parts = [f"[{self.source}]"]
        if kept is not None:
            parts.append(f"kept {kept} rows;")
        if self.skipped:
            detail = ", ".join(f"{reason}={count}" for reason, count in sorted(self.skipped.items()))
            parts.append(f"skipped {self.total_skipped} ({detail});")
        else:
            parts.append("skipped 0;")
        if self.repaired:
            detail = ", ".join(f"{reason}={count}" for reason, count in sorted(self.repaired.items()))
            parts.append(f"repaired {self.total_repaired} ({detail})")
        return " ".join(parts).rstrip(";")

    def as_dict(self) -> dict:
        return {"source": self.source, "skipped": dict(self.skipped), "repaired": dict(self.repaired)}

