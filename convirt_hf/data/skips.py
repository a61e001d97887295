"""Counting and logging the rows a reader drops or repairs, so bad input is never silent.

Readers call :meth:`SkipLedger.skip` for a row they drop and :meth:`SkipLedger.repair` for a row they keep after
fixing it (a 16-bit PNG scaled to 8 bits, a report re-decoded from cp1252). Each event is logged once, with the row
id and the reason; :meth:`SkipLedger.summary` gives the one line printed at the end of loading. In strict mode the
first skip raises :class:`BadInputError` instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class BadInputError(ValueError):
    """Raised for a bad row in strict mode; ``reason`` is the same key the ledger would count."""

    def __init__(self, row_id: str, reason: str, detail: str = ""):
        self.row_id = row_id
        self.reason = reason
        self.detail = detail
        super().__init__(f"{row_id}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class SkipLedger:
    """Counts dropped and repaired rows by reason.

    Args:
        source: a short name used in log lines and the summary (e.g. ``"mimic-cxr"``).
        strict: raise :class:`BadInputError` on the first skipped row instead of counting it.
        max_logged_per_reason: after this many log lines for one reason, further rows of that reason are only
            counted (the summary still has the exact total).
    """

    source: str = "data"
    strict: bool = False
    max_logged_per_reason: int = 20
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    skipped_ids: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, row_id: str, reason: str, detail: str = "") -> None:
        if self.strict:
            raise BadInputError(row_id, reason, detail)
        self.skipped[reason] += 1
        self.skipped_ids.setdefault(reason, []).append(str(row_id))
        if self.skipped[reason] <= self.max_logged_per_reason:
            logger.warning("[%s] skipped %s: %s%s", self.source, row_id, reason, f" ({detail})" if detail else "")

    def repair(self, row_id: str, reason: str, detail: str = "") -> None:
        self.repaired[reason] += 1
        if self.repaired[reason] <= self.max_logged_per_reason:
            logger.info("[%s] repaired %s: %s%s", self.source, row_id, reason, f" ({detail})" if detail else "")

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: SkipLedger) -> None:
        """Adds another ledger's counts (e.g. from a worker process) to this one."""
        self.skipped.update(other.skipped)
        self.repaired.update(other.repaired)
        for reason, ids in other.skipped_ids.items():
            self.skipped_ids.setdefault(reason, []).extend(ids)

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
            parts.append(f"repaired {sum(self.repaired.values())} ({detail})")
        return " ".join(parts).rstrip(";")

    def as_dict(self) -> dict:
        return {"source": self.source, "skipped": dict(self.skipped), "repaired": dict(self.repaired)}
