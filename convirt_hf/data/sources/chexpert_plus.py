"""CheXpert-Plus (Stanford AIMI, 2024): the report CSV joined to the PNG images.

Layout, as released::

    <root>/df_chexpert_plus_240401.csv      path_to_image, path_to_dcm, frontal_lateral, ap_pa, deid_patient_id,
                                            patient_report_date_order, report, section_narrative, ...,
                                            section_findings, section_impression, section_end_of_impression,
                                            section_summary, ..., split (train / valid)
    <root>/PNG/train/patient42142/study5/view1_frontal.png

``path_to_image`` in the CSV ends in ``.jpg`` (``train/patient42142/study5/view1_frontal.jpg``) while the released
images are PNG files: each row is joined to ``<image_root>/<path_to_image>`` with the ``.jpg`` kept if such a file
exists, else with ``.png``. The image root is searched as given, then its ``PNG/`` and ``PNG/PNG/`` folders and any
``*/PNG`` folder (the PNG archive is distributed in chunks that unpack to ``<chunk>/PNG/...``).

One record per image: ``id`` = ``path_to_image`` without its suffix, ``patient_id`` = ``deid_patient_id``,
``study_id`` = ``patientNNNNN/studyN``, ``view`` = ``AP``/``PA`` for frontal images (``FRONTAL`` when ``ap_pa`` is
empty) and ``LATERAL`` for lateral ones, so ``views=("PA", "AP")`` works as for MIMIC-CXR.

Text: the release's own ``section_findings`` and ``section_impression`` (as a report with FINDINGS/IMPRESSION
headers); when both are empty the full ``report`` is sectioned by :mod:`.reports` instead. ``report_mode="whole"``
uses ``report``. Labels (CheXbert, distributed separately as JSON lines with ``path_to_image`` and one column per
finding) are read from ``labels_file=`` when given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import cast

from .base import Candidate, PairLedger, PairSource, in_shard
from .labels import positive_label_columns
from .registry import register_source
from .tables import check_columns, iter_table_rows, read_header
from .text import is_missing, to_str

logger = logging.getLogger(__name__)

CSV_PATTERN = "df_chexpert_plus_*.csv"
REQUIRED_COLUMNS = ("path_to_image", "deid_patient_id", "frontal_lateral", "ap_pa", "section_findings",
                    "section_impression")
SPLIT_ALIASES = {"train": "train", "valid": "valid", "validate": "valid", "validation": "valid", "val": "valid"}
UNCERTAIN_POLICIES = ("negative", "positive")


def find_report_csv(source: Path) -> Path:
    """The report CSV: `source` itself, or the newest ``df_chexpert_plus_*.csv`` in the folder."""
    if source.is_file():
        return source
    found = sorted(source.glob(CSV_PATTERN)) + sorted(source.glob(CSV_PATTERN + ".gz"))
    if not found:
        raise FileNotFoundError(f"{source}: no {CSV_PATTERN} (the CheXpert-Plus report table) found")
    return found[-1]  # the file names carry the release date: the last is the newest


def image_bases(image_root: Path) -> list[Path]:
    """The folders under which ``train/...`` and ``valid/...`` may live, in the order they are tried."""
    bases = [image_root, image_root / "PNG", image_root / "PNG" / "PNG"]
    bases += sorted(path for path in image_root.glob("*/PNG") if path.is_dir())
    bases += sorted(path for path in image_root.glob("*/PNG/PNG") if path.is_dir())
    unique = []
    for base in bases:
        if base.is_dir() and base not in unique:
            unique.append(base)
    return unique


def view_name(frontal_lateral: str | None, ap_pa: str | None) -> str | None:
    """``AP``/``PA`` for frontal images, ``FRONTAL`` without a projection, ``LATERAL`` for lateral images."""
    position = (frontal_lateral or "").strip().lower()
    projection = (ap_pa or "").strip().upper()
    if position == "lateral":
        return "LATERAL"
    if position == "frontal":
        return projection if projection in ("AP", "PA") else "FRONTAL"
    return projection or None


def compose_report(findings: str | None, impression: str | None) -> str:
    """The release's section columns as one report with headers, so :mod:`.reports` keeps exactly these sections."""
    parts = []
    if not is_missing(findings):
        parts.append(f"FINDINGS:\n{findings.strip()}")
    if not is_missing(impression):
        parts.append(f"IMPRESSION:\n{impression.strip()}")
    return "\n\n".join(parts)


@dataclass
class ChexpertPlusSource(PairSource):
    """
    The pairs of CheXpert-Plus (see the module docstring for the layout and the join).

    Args:
        source: the folder with ``df_chexpert_plus_*.csv``, or the CSV itself.
        image_root: where the PNG images are (defaults to the CSV's folder).
        split: ``train`` or ``valid`` (the CSV's ``split`` column).
        labels_file: optional CheXbert label file (JSON lines: ``path_to_image`` and one column per finding).
        uncertain: ``"negative"`` or ``"positive"``: how -1 (uncertain) labels count.
        report_mode: ``"findings_impression"`` or ``"whole"`` (set by `load_pairs`).
    """

    source: Path
    image_root: Path | None = None
    split: str | None = None
    labels_file: Path | None = None
    uncertain: str = "negative"
    report_mode: str = "findings_impression"
    name: str = "chexpert-plus"
    bases: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.csv = find_report_csv(Path(self.source))
        header = read_header(self.csv)
        required = list(REQUIRED_COLUMNS) + (["report"] if self.report_mode == "whole" else [])
        if self.split is not None:
            if self.split not in SPLIT_ALIASES:
                raise ValueError(f"CheXpert-Plus split must be one of {sorted(SPLIT_ALIASES)}, got {self.split!r}")
            self.split = SPLIT_ALIASES[self.split]
            required.append("split")
        check_columns(header, {"CheXpert-Plus columns": required}, str(self.csv))
        self.has_report_column = "report" in header
        self.image_root = Path(self.image_root) if self.image_root else self.csv.parent
        self.bases = image_bases(self.image_root)
        if not any((base / part).is_dir() for base in self.bases for part in ("train", "valid")):
            logger.warning("%s: no train/ or valid/ image folder found under it (or PNG/); every image will be "
                           "counted as missing", self.image_root)
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {self.uncertain!r}")
        if self.labels_file is not None:
            self.labels_file = Path(self.labels_file)
            check_columns(read_header(self.labels_file), {"labels_file": ["path_to_image"]}, str(self.labels_file))

    def _labels(self) -> dict[str, tuple[str, ...]]:
        if getattr(self, "_label_cache", None) is None:
            self._label_cache = {
                str(row["path_to_image"]): positive_label_columns(row, ("path_to_image",), self.uncertain == "positive")
                for row in iter_table_rows(self.labels_file)
            }
        return self._label_cache

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_label_cache", None)
        return state

    def resolve_image(self, path_to_image: str) -> Path:
        """The image file of a CSV path: ``.jpg`` as written if it exists, else the released ``.png``."""
        relative = PurePosixPath(path_to_image.strip().lstrip("/"))
        names = [relative, relative.with_suffix(".png")] if relative.suffix.lower() != ".png" else [relative]
        for base in self.bases:
            for name in names:
                candidate = base / name
                if candidate.is_file():
                    return candidate
        # Not found: name the file where it should have been (the base holding train/ or valid/), for the log.
        fallback = next((base for base in self.bases if (base / relative.parts[0]).is_dir()), None)
        base = fallback or (self.bases[0] if self.bases else cast(Path, self.image_root))  # set by __post_init__
        return base / names[-1]

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        labels = self._labels() if self.labels_file is not None else {}
        for index, row in enumerate(iter_table_rows(self.csv)):
            if not in_shard(index, shard, num_shards):
                continue
            if self.split is not None and SPLIT_ALIASES.get((row.get("split") or "").strip()) != self.split:
                ledger.filter("split")
                continue
            path_to_image = to_str(row.get("path_to_image"))
            if not path_to_image:
                yield Candidate(id=f"{self.name}-{index:07d}", image=None,
                                problem=("missing_file", f"CSV row {index + 1} has no path_to_image"))
                continue
            parts = PurePosixPath(path_to_image).parts
            study = "/".join(parts[-3:-1]) if len(parts) >= 3 else None
            full_report = row.get("report") if self.has_report_column else None
            if self.report_mode == "whole":
                report = full_report if not is_missing(full_report) else compose_report(
                    row.get("section_findings"), row.get("section_impression"))
            else:
                report = compose_report(row.get("section_findings"), row.get("section_impression"))
                if not report and not is_missing(full_report):
                    report = full_report  # the release's sectioner found nothing: try ours on the full text
            yield Candidate(
                id=str(PurePosixPath(path_to_image).with_suffix("")),
                image=str(self.resolve_image(path_to_image)),
                report=report,
                labels=list(labels.get(path_to_image, ())),
                patient_id=to_str(row.get("deid_patient_id")),
                study_id=study,
                view=view_name(row.get("frontal_lateral"), row.get("ap_pa")),
            )


def _is_chexpert_plus(path: Path, names: frozenset) -> bool:
    if path.is_file():
        name = path.name.lower()
        return name.startswith("df_chexpert_plus") and name.endswith((".csv", ".csv.gz"))
    return any(name.startswith("df_chexpert_plus") and ".csv" in name for name in names)


@register_source("chexpert-plus", options=("image_root", "labels_file", "uncertain"), detect=_is_chexpert_plus,
                 looks_for=CSV_PATTERN)
def build_chexpert_plus(source, *, split: str | None, columns, report_mode: str, **options) -> ChexpertPlusSource:
    """The CheXpert-Plus report CSV (or its folder); the columns are the release's."""
    return ChexpertPlusSource(Path(source).expanduser(), split=split, report_mode=report_mode, **options)


__all__ = ["CSV_PATTERN", "ChexpertPlusSource", "compose_report", "find_report_csv", "image_bases", "view_name"]
