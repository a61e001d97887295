"""MIMIC-CXR-JPG (PhysioNet, v2.0.0 and v2.1.0) with the free-text reports of MIMIC-CXR.

Layout, as released (the ``.csv.gz`` tables may also be unpacked to ``.csv``)::

    <root>/mimic-cxr-2.0.0-metadata.csv.gz    dicom_id, subject_id, study_id, PerformedProcedureStepDescription,
                                              ViewPosition, Rows, Columns, StudyDate, StudyTime, ...
    <root>/mimic-cxr-2.0.0-split.csv.gz       dicom_id, study_id, subject_id, split (train / validate / test)
    <root>/mimic-cxr-2.0.0-chexpert.csv.gz    subject_id, study_id, Atelectasis, Cardiomegaly, ..., Support Devices
                                              (1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned)
    <root>/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg

and the reports (``mimic-cxr-reports.zip`` of MIMIC-CXR, one text file per study)::

    <reports_root>/files/p10/p10000032/s50414267.txt

``reports_root`` defaults to ``root``; it may also name the ``files`` folder itself or a folder holding
``mimic-cxr-reports/files``. One record per image (``id`` = ``dicom_id``, ``patient_id`` = ``subject_id``,
``study_id`` = ``study_id``, ``view`` = ``ViewPosition``); the images of a study share its report. Missing image or
report files are counted (``missing_file``, ``missing_report``) and skipped, never fatal.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .base import Candidate, PairLedger, PairSource, ReportProblem, in_shard
from .labels import positive_label_columns
from .registry import register_source
from .tables import check_columns, iter_table_rows, read_header
from .text import to_str

logger = logging.getLogger(__name__)

METADATA_TABLE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_TABLE = "mimic-cxr-2.0.0-split.csv"
LABEL_TABLES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv", "negbio": "mimic-cxr-2.0.0-negbio.csv"}
SPLIT_ALIASES = {"train": "train", "validate": "validate", "validation": "validate", "valid": "validate",
                 "val": "validate", "test": "test"}
UNCERTAIN_POLICIES = ("negative", "positive")
_ID_COLUMNS = ("subject_id", "study_id")


def find_table(root: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` under `root` (PhysioNet ships .csv.gz; unpacked copies are common)."""
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    return None


def study_parts(subject_id: str, study_id: str) -> tuple[str, str, str]:
    """The folder names of a study: ``("p10", "p10000032", "s50414267")``."""
    return f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}"


def _has_reports(folder: Path) -> bool:
    """Whether ``folder/pXX/pSUBJECT/`` holds report ``.txt`` files (a bounded look, not a walk of 377k files)."""
    if not folder.is_dir():
        return False
    groups = sorted(child for child in folder.iterdir() if child.name[:1] == "p" and child.is_dir())[:3]
    for group in groups:
        for patient in itertools.islice((child for child in group.iterdir() if child.is_dir()), 25):
            if any(child.suffix == ".txt" for child in patient.iterdir()):
                return True
    return False


def _find_reports_files(reports_root: Path) -> Path:
    """The folder holding ``pXX/pSUBJECT/sSTUDY.txt``, from any of the usual starting points."""
    for candidate in (reports_root / "files", reports_root, reports_root / "mimic-cxr-reports" / "files"):
        if _has_reports(candidate):
            return candidate
    raise FileNotFoundError(
        f"{reports_root}: no MIMIC-CXR reports found (expected files/pXX/pSUBJECT/sSTUDY.txt, as in "
        "mimic-cxr-reports.zip); pass reports_root= to where they are"
    )


@dataclass
class MimicCxrSource(PairSource):
    """
    The pairs of a MIMIC-CXR-JPG folder (see the module docstring for the layout).

    Args:
        root: the MIMIC-CXR-JPG folder (or its metadata table).
        reports_root: where the report text files are (defaults to `root`).
        split: keep one official split (``train``, ``validate``/``validation``, ``test``); needs the split table.
        labels: ``"chexpert"`` (default), ``"negbio"`` or ``None``: the label table to read, when present.
        uncertain: ``"negative"`` (uncertain findings, -1.0, are left out) or ``"positive"`` (counted as present).
    """

    root: Path
    reports_root: Path | None = None
    split: str | None = None
    labels: str | None = "chexpert"
    uncertain: str = "negative"
    name: str = "mimic-cxr"

    def __post_init__(self):
        root = Path(self.root)
        if root.is_file():
            root = root.parent
        self.root = root
        self.metadata = find_table(root, METADATA_TABLE)
        if self.metadata is None:
            raise FileNotFoundError(f"{root}: {METADATA_TABLE}(.gz) not found; is this a MIMIC-CXR-JPG folder?")
        check_columns(read_header(self.metadata), {"metadata": ["dicom_id", "subject_id", "study_id", "ViewPosition"]},
                      str(self.metadata))
        self.images = root / "files"
        if not self.images.is_dir():
            raise FileNotFoundError(f"{root}: no files/ folder with the JPG images")
        self.reports = _find_reports_files(Path(self.reports_root) if self.reports_root else root)

        self.split_table = None
        if self.split is not None:
            if self.split not in SPLIT_ALIASES:
                raise ValueError(f"MIMIC-CXR split must be one of {sorted(SPLIT_ALIASES)}, got {self.split!r}")
            self.split = SPLIT_ALIASES[self.split]
            self.split_table = find_table(root, SPLIT_TABLE)
            if self.split_table is None:
                raise FileNotFoundError(f"{root}: split={self.split!r} needs {SPLIT_TABLE}(.gz)")
            check_columns(read_header(self.split_table), {"split table": ["dicom_id", "split"]}, str(self.split_table))

        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}, got {self.uncertain!r}")
        self.label_table = None
        if self.labels is not None:
            if self.labels not in LABEL_TABLES:
                raise ValueError(f"labels must be one of {sorted(LABEL_TABLES)} or None, got {self.labels!r}")
            self.label_table = find_table(root, LABEL_TABLES[self.labels])
            if self.label_table is None:
                logger.warning("%s: %s(.gz) not found; records get no labels", root, LABEL_TABLES[self.labels])
            else:
                check_columns(read_header(self.label_table), {"label table": list(_ID_COLUMNS)}, str(self.label_table))

    # Lookup tables are built lazily in each worker process (never pickled from the main one).
    def _split_ids(self) -> set[str]:
        if getattr(self, "_split_cache", None) is None:
            self._split_cache = {
                str(row["dicom_id"]) for row in iter_table_rows(self.split_table)
                if SPLIT_ALIASES.get(str(row.get("split", "")).strip()) == self.split
            }
        return self._split_cache

    def _study_labels(self) -> dict[str | None, tuple[str, ...]]:  # None: rows without a study id
        if getattr(self, "_label_cache", None) is None:
            self._label_cache = {
                to_str(row["study_id"]): positive_label_columns(row, _ID_COLUMNS, self.uncertain == "positive")
                for row in iter_table_rows(self.label_table)
            }
        return self._label_cache

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_split_cache", None)
        state.pop("_label_cache", None)
        return state

    def report_path(self, subject_id: str, study_id: str) -> Path:
        group, subject, study = study_parts(subject_id, study_id)
        return self.reports / group / subject / f"{study}.txt"

    def image_path(self, subject_id: str, study_id: str, dicom_id: str) -> Path:
        group, subject, study = study_parts(subject_id, study_id)
        return self.images / group / subject / study / f"{dicom_id}.jpg"

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        split_ids = self._split_ids() if self.split_table is not None else None
        study_labels = self._study_labels() if self.label_table is not None else {}
        last_report: dict[str, bytes] = {}  # the images of a study are adjacent: read its report once

        def reader(path: Path):
            def read() -> bytes:
                key = str(path)
                if key not in last_report:
                    try:
                        data = path.read_bytes()
                    except FileNotFoundError:
                        raise ReportProblem("missing_report", key) from None
                    except OSError as error:
                        raise ReportProblem("unreadable_report", f"{key} ({error})") from None
                    last_report.clear()
                    last_report[key] = data
                return last_report[key]

            return read

        for index, row in enumerate(iter_table_rows(self.metadata)):
            if not in_shard(index, shard, num_shards):
                continue
            dicom_id, subject_id, study_id = (to_str(row.get(key)) for key in ("dicom_id", "subject_id", "study_id"))
            if split_ids is not None and dicom_id not in split_ids:
                ledger.filter("split")
                continue
            if not (dicom_id and subject_id and study_id):
                yield Candidate(id=dicom_id or f"{self.name}-{index:07d}", image=None,
                                problem=("bad_metadata", f"metadata row {index + 1} lacks an id"))
                continue
            yield Candidate(
                id=dicom_id,
                image=str(self.image_path(subject_id, study_id, dicom_id)),
                report=reader(self.report_path(subject_id, study_id)),
                labels=list(study_labels.get(study_id, ())),
                patient_id=subject_id,
                study_id=study_id,
                view=to_str(row.get("ViewPosition")),
            )


def _is_mimic_cxr(path: Path, names: frozenset) -> bool:
    if path.is_file():
        return path.name.lower().startswith("mimic-cxr-2.0.0-metadata")
    return any(name.startswith(METADATA_TABLE) for name in names)


@register_source("mimic-cxr", options=("reports_root", "labels", "uncertain"), detect=_is_mimic_cxr,
                 looks_for=f"{METADATA_TABLE}(.gz)")
def build_mimic_cxr(source, *, split: str | None, columns, report_mode: str, **options) -> MimicCxrSource:
    """A MIMIC-CXR-JPG folder (or its metadata table); the columns are the release's."""
    return MimicCxrSource(Path(source).expanduser(), split=split, **options)


__all__ = ["LABEL_TABLES", "METADATA_TABLE", "SPLIT_TABLE", "MimicCxrSource", "find_table"]
