"""What every source shares: the rows it yields (:class:`Candidate`), the ledger that counts them, the reader base.

A source (:class:`PairSource`) only reads: it yields a :class:`Candidate` per image-report row, or counts a row left
out on request in the :class:`PairLedger`. Checking a candidate and turning it into a record is the pipeline's job
(:func:`~convirt_hf.data.sources.checks.finish_candidate`), the same for every source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..images import DEFAULT_MAX_PIXELS
from ..skips import SkipLedger


class ReportProblem(Exception):
    """Raised by a lazy report reader when the report cannot be had (e.g. ``missing_report``)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Candidate:
    """
    One image-report row as a source reads it, before any check.

    Args:
        id: the row's stable id.
        image: a path, encoded bytes, a ``datasets`` image dict or a PIL image.
        report: the report text, its raw bytes, ``None`` (no text column) or a zero-argument callable returning
            either (read lazily, only for rows that pass the filters; it may raise :class:`ReportProblem`).
        labels: positive finding names.
        patient_id, study_id, view: metadata (``None`` when unknown).
        problem: ``(reason, detail)`` when the source already knows the row is unusable.
        repairs: ``(reason, detail)`` repairs the source already made (counted only if the row is kept).
    """

    id: str
    image: Any
    report: Any = None
    labels: list[str] = field(default_factory=list)
    patient_id: str | None = None
    study_id: str | None = None
    view: str | None = None
    problem: tuple[str, str] | None = None
    repairs: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PairLedger(SkipLedger):
    """
    A :class:`~convirt_hf.data.skips.SkipLedger` that also counts rows left out on request (``views=``, ``split=``,
    a report without images): those are not bad input, so they never raise in strict mode.
    """

    filtered: Counter = field(default_factory=Counter)

    def filter(self, reason: str, count: int = 1) -> None:
        self.filtered[reason] += count

    def merge(self, other: SkipLedger) -> None:
        super().merge(other)
        self.filtered.update(getattr(other, "filtered", {}))

    def summary(self, kept: int | None = None) -> str:
        line = super().summary(kept)
        if self.filtered:
            detail = ", ".join(f"{reason}={count}" for reason, count in sorted(self.filtered.items()))
            line += f"; filtered {sum(self.filtered.values())} by request ({detail})"
        return line

    def as_dict(self) -> dict:
        return {**super().as_dict(), "filtered": dict(self.filtered)}

    def to_json(self) -> dict:
        """Everything needed to rebuild the counts and ids in another process."""
        return {**self.as_dict(), "skipped_ids": self.skipped_ids, "skipped_details": self.skipped_details,
                "repaired_ids": self.repaired_ids, "repaired_details": self.repaired_details}

    def add_json(self, data: dict) -> None:
        """Adds the rows of a :meth:`to_json` dict from a worker, logging each as :meth:`skip` / :meth:`repair` do."""
        self.filtered.update(data.get("filtered", {}))
        for kind in ("skipped", "repaired"):
            details = data.get(f"{kind}_details", {})
            for reason, ids in data.get(f"{kind}_ids", {}).items():
                reason_details = details.get(reason, [])
                for index, row_id in enumerate(ids):
                    self._add(kind, row_id, reason, reason_details[index] if index < len(reason_details) else "")


@dataclass(frozen=True)
class PairOptions:
    """How candidates become records (see :func:`load_pairs` for each field)."""

    report_mode: str = "findings_impression"
    min_tokens: int = 3
    check_images: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    views: tuple[str, ...] | None = None
    require_text: bool = True


class PairSource:
    """
    Base class of the readers: a small picklable description of where the pairs are, checked when built (missing
    files and wrong column names fail then, before any row is read).

    Subclasses implement :meth:`iter_candidates`; rows are split over ``num_shards`` worker processes by index.
    """

    name: str = "data"
    shardable: bool = True

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        raise NotImplementedError

    def count_hint(self) -> int | None:
        """The number of candidates when known without reading them (for the progress bar's total)."""
        return None


def in_shard(index: int, shard: int, num_shards: int) -> bool:
    """Whether row `index` is worker `shard`'s: rows are dealt out in turn, so every worker gets a similar mix."""
    return num_shards <= 1 or index % num_shards == shard


__all__ = ["Candidate", "PairLedger", "PairOptions", "PairSource", "ReportProblem", "in_shard"]
