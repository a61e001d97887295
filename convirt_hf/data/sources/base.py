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
        images: how many images the row stands for: 1, or 0 for a report whose image list could not be read (an
            Open-i XML file that does not parse), which the summary then counts as a report only.
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
    images: int = 1


# Skip reasons whose unit is the report: every image of the report is skipped with it, so the summary counts them in
# reports as well as in images (an empty report with two images is 1 report and 2 images).
REPORT_REASONS = frozenset({"empty_report", "short_report", "no_findings_impression", "missing_report",
                            "unreadable_report"})


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


@dataclass
class PairLedger(SkipLedger):
    """
    A :class:`~convirt_hf.data.skips.SkipLedger` for image-report pairs, whose counts say their unit.

    A row is one image with its report, so ``skipped``, ``repaired`` and ``filtered`` count images. Reports are
    counted besides: the reports read (:meth:`read`), those whose images were all skipped for a reason whose unit is
    the report (:data:`REPORT_REASONS`, in ``skipped_reports``) and those that list no image at all
    (:meth:`without_images`, in ``unpaired``). ``filtered`` only counts rows left out on request (``views=``,
    ``split=``): those are not bad input, so they never raise in strict mode.
    """

    filtered: Counter = field(default_factory=Counter)
    images_read: int = 0
    reports_read: set = field(default_factory=set)
    skipped_reports: dict = field(default_factory=dict)  # reason -> report keys (REPORT_REASONS only)
    imageless: Counter = field(default_factory=Counter)  # skipped rows standing for no known image, per reason
    unpaired: Counter = field(default_factory=Counter)  # reports read that gave no row at all, per reason

    def filter(self, reason: str, count: int = 1) -> None:
        """Counts `count` images left out on request (``views=``, ``split=``)."""
        self.filtered[reason] += count

    def read(self, report: str | None, images: int = 1) -> None:
        """Counts a row that reached the checks: its images, and its report (a report key, or None for no report)."""
        self.images_read += images
        if report is not None:
            self.reports_read.add(report)

    def without_images(self, report: str, reason: str = "report_without_image") -> None:
        """Counts a report that was read but lists no image, so it gives no row (not a filter: nobody asked)."""
        self.reports_read.add(report)
        self.unpaired[reason] += 1

    def skip(self, row_id: str, reason: str, detail: str = "", *, report: str | None = None, images: int = 1) -> None:
        """Skips a row (see :meth:`SkipLedger.skip`); `report` is its report key, `images` how many images it holds."""
        super().skip(row_id, reason, detail)
        if images == 0:
            self.imageless[reason] += 1
        if reason in REPORT_REASONS:
            self.skipped_reports.setdefault(reason, set()).add(report if report is not None else f"row:{row_id}")

    @property
    def skipped_images(self) -> dict[str, int]:
        """Skipped images per reason (a row standing for no known image counts under ``skipped_reports`` only)."""
        counts = {reason: count - self.imageless.get(reason, 0) for reason, count in sorted(self.skipped.items())}
        return {reason: count for reason, count in counts.items() if count}

    @property
    def skipped_report_counts(self) -> dict[str, int]:
        """Reports whose images were skipped, per reason whose unit is the report."""
        return {reason: len(keys) for reason, keys in sorted(self.skipped_reports.items())}

    def merge(self, other: SkipLedger) -> None:
        super().merge(other)
        self.filtered.update(getattr(other, "filtered", {}))
        if isinstance(other, PairLedger):
            self._add_counts(other.images_read, other.reports_read, other.skipped_reports, other.imageless,
                             other.unpaired)

    def _add_counts(self, images_read, reports_read, skipped_reports, imageless, unpaired) -> None:
        self.images_read += int(images_read)
        self.reports_read.update(reports_read)
        for reason, keys in skipped_reports.items():
            self.skipped_reports.setdefault(reason, set()).update(keys)
        self.imageless.update(imageless)
        self.unpaired.update(unpaired)

    def summary(self, kept: int | None = None, kept_reports: int | None = None) -> str:
        """
        One line, every count with its unit: ``[source] read R reports with I images; kept K images (N reports);
        skipped S images (reason=count, report_reason=images/reports, ...); U reports without images; repaired ...;
        filtered by request F images (reason=count)``.
        """
        parts = [f"[{self.source}]"]
        if self.reports_read:
            parts.append(f"read {_plural(len(self.reports_read), 'report')} with {_plural(self.images_read, 'image')};")
        elif self.images_read:
            parts.append(f"read {_plural(self.images_read, 'image')};")
        if kept is not None:
            of_reports = f" ({_plural(kept_reports, 'report')})" if kept_reports is not None else ""
            parts.append(f"kept {_plural(kept, 'image')}{of_reports};")
        images, reports = self.skipped_images, self.skipped_report_counts
        details = []
        for reason in sorted(set(images) | set(reports)):
            count = images.get(reason, 0)
            if reason in reports:  # the report is the unit: both counts, each with its unit
                details.append(f"{reason}={_plural(count, 'image')}/{_plural(reports[reason], 'report')}")
            else:
                details.append(f"{reason}={count}")
        total = sum(images.values())
        parts.append(f"skipped {_plural(total, 'image')}" + (f" ({', '.join(details)});" if details else ";"))
        if self.unpaired:
            detail = ", ".join(f"{reason}={count}" for reason, count in sorted(self.unpaired.items()))
            parts.append(f"{_plural(sum(self.unpaired.values()), 'report')} without images ({detail});")
        if self.repaired:
            detail = ", ".join(f"{reason}={count}" for reason, count in sorted(self.repaired.items()))
            parts.append(f"repaired {_plural(self.total_repaired, 'image')} ({detail});")
        if self.filtered:
            detail = ", ".join(f"{reason}={count}" for reason, count in sorted(self.filtered.items()))
            parts.append(f"filtered by request {_plural(sum(self.filtered.values()), 'image')} ({detail});")
        return " ".join(parts).rstrip(";")

    def as_dict(self) -> dict:
        return {**super().as_dict(), "filtered": dict(self.filtered), "images_read": self.images_read,
                "reports_read": len(self.reports_read), "skipped_images": self.skipped_images,
                "skipped_reports": self.skipped_report_counts, "without_images": dict(self.unpaired)}

    def to_json(self) -> dict:
        """Everything needed to rebuild the counts and ids in another process."""
        return {**self.as_dict(), "skipped_ids": self.skipped_ids, "skipped_details": self.skipped_details,
                "repaired_ids": self.repaired_ids, "repaired_details": self.repaired_details,
                "report_keys": sorted(self.reports_read), "imageless": dict(self.imageless),
                "skipped_report_keys": {reason: sorted(keys) for reason, keys in self.skipped_reports.items()}}

    def add_json(self, data: dict) -> None:
        """Adds the rows of a :meth:`to_json` dict from a worker, logging each as :meth:`skip` / :meth:`repair` do."""
        self.filtered.update(data.get("filtered", {}))
        for kind in ("skipped", "repaired"):
            details = data.get(f"{kind}_details", {})
            for reason, ids in data.get(f"{kind}_ids", {}).items():
                reason_details = details.get(reason, [])
                for index, row_id in enumerate(ids):
                    self._add(kind, row_id, reason, reason_details[index] if index < len(reason_details) else "")
        self._add_counts(data.get("images_read", 0), data.get("report_keys", ()),
                         data.get("skipped_report_keys", {}), data.get("imageless", {}),
                         data.get("without_images", {}))


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


__all__ = ["REPORT_REASONS", "Candidate", "PairLedger", "PairOptions", "PairSource", "ReportProblem", "in_shard"]
