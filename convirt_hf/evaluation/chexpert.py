"""The paper's CheXpert 8 x 200 zero-shot retrieval set, built from CheXpert-v1.0's own label CSVs.

For users who have CheXpert (https://stanfordmlgroup.github.io/competitions/chexpert/; not redistributable, so
nothing of it ships here). Two inputs are accepted:

1. CheXpert's ``train.csv`` / ``valid.csv`` (one or more), columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the
   14 observations, each ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain) or blank (unmentioned).
   ``Path`` (e.g. ``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg``) is relative to the folder that
   holds ``CheXpert-v1.0``. The set is sampled as in the paper, see [`select_chexpert_retrieval`].
2. A CSV that already lists a set: columns ``Path``, ``category`` and ``role`` (``candidate`` or ``query``), paths
   relative to the same root (see [`read_listed_retrieval_csv`]); e.g. to reproduce someone else's exact set.

"Clean" rows: among the 8 retrieval labels (atelectasis, cardiomegaly, edema, fracture, pleural effusion, pneumonia,
pneumothorax, no finding) exactly one is positive (1.0) and none is uncertain (-1.0); the others are negative or
unmentioned. Rows uncertain on any of the 8, with several or none of them positive, are left out (counted). The other
six observations (Lung Opacity, Consolidation, Support Devices, ...) are ignored by default, as the paper only speaks
of the 8; ``exclude_other_findings=True`` also leaves out rows positive or uncertain on the other pathologies
(everything but Support Devices).

Sampling (seeded, independent of the CSVs' row order): each category's clean rows are sorted by path and shuffled
with a generator seeded by (seed, category). Queries are drawn first (at most one per patient); then candidates,
from patients that have no query image, so no query can retrieve another film of its own patient. Frontal views only
by default. Image files that are missing are logged with their path, counted and skipped (the next row is taken).

The result is written as a retrieval-set folder that `convirt_hf.evaluation.zero_shot.load_retrieval_set` reads:
``save_to_disk`` splits ``retrieval_candidates`` and ``retrieval_queries`` in the shared record shape (image bytes
embedded, so the folder is self-contained), ``text_queries.json`` and ``retrieval_set.json`` (how it was built).

Text queries: the paper's five radiologist-written sentences per category are not public (its text quotes two).
`CHEXPERT_TEXT_QUERIES` are this project's own sentences, written in the style of report impressions; results
with them are not directly comparable to the paper's text->image numbers. Pass your own JSON (category -> list of
sentences) to replace them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convirt_hf.atomic import swap_in_folder

logger = logging.getLogger(__name__)

__all__ = [
    "CATEGORY_COLUMNS", "CHEXPERT_COLUMNS", "CHEXPERT_OBSERVATIONS", "CHEXPERT_TEXT_QUERIES",
    "RETRIEVAL_CATEGORIES", "ChexpertSelection", "build_chexpert_retrieval_set", "is_listed_retrieval_csv",
    "load_text_queries", "read_chexpert_csv", "read_listed_retrieval_csv", "row_category",
    "select_chexpert_retrieval", "write_retrieval_set",
]

CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)

# The paper's 8 retrieval categories (lower-case, as in the records) and their CheXpert columns.
RETRIEVAL_CATEGORIES = (
    "atelectasis", "cardiomegaly", "edema", "fracture", "pleural effusion", "pneumonia", "pneumothorax", "no finding",
)
CATEGORY_COLUMNS = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "edema": "Edema",
    "fracture": "Fracture",
    "pleural effusion": "Pleural Effusion",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "no finding": "No Finding",
}
# Pathologies outside the 8 (Support Devices is not one): checked only with exclude_other_findings.
OTHER_FINDING_COLUMNS = tuple(
    name for name in CHEXPERT_OBSERVATIONS if name not in CATEGORY_COLUMNS.values() and name != "Support Devices"
)

# This project's text queries, NOT the paper's (its radiologist-written sentences are unpublished). Five per category,
# phrased like report impressions; each names its own finding and no other category's (bar one realistic negation
# in "no finding").
CHEXPERT_TEXT_QUERIES: dict[str, list[str]] = {
    "atelectasis": [
        "Linear opacities at the lung bases compatible with subsegmental atelectasis.",
        "Left lower lobe atelectasis.",
        "Streaky bibasilar opacities most consistent with atelectasis.",
        "Plate-like atelectasis in the right mid lung.",
        "Mild volume loss at the right base with adjacent atelectasis.",
    ],
    "cardiomegaly": [
        "The heart is enlarged.",
        "Moderate enlargement of the cardiac silhouette.",
        "Stable cardiomegaly.",
        "The cardiothoracic ratio is increased, consistent with cardiomegaly.",
        "Mild cardiomegaly.",
    ],
    "edema": [
        "Diffuse interstitial pulmonary edema.",
        "Bilateral hazy perihilar opacities consistent with pulmonary edema.",
        "Pulmonary vascular congestion with interstitial edema.",
        "Kerley B lines and peribronchial cuffing indicating interstitial edema.",
        "Findings consistent with moderate pulmonary edema.",
    ],
    "fracture": [
        "Acute fracture of the left lateral seventh rib.",
        "Nondisplaced right posterior rib fractures.",
        "Healing fracture of the left clavicle.",
        "Compression fracture of a lower thoracic vertebral body.",
        "Old healed right rib fractures are noted.",
    ],
    "pleural effusion": [
        "Small left pleural effusion.",
        "Moderate right pleural effusion with blunting of the costophrenic angle.",
        "Bilateral pleural effusions, larger on the right.",
        "Layering pleural fluid at the left base.",
        "A large pleural effusion opacifies the lower half of the right hemithorax.",
    ],
    "pneumonia": [
        "Focal consolidation in the right lower lobe concerning for pneumonia.",
        "Patchy left basilar airspace opacity suspicious for pneumonia.",
        "Multifocal pneumonia.",
        "Dense right upper lobe consolidation with air bronchograms, consistent with pneumonia.",
        "Findings compatible with lingular pneumonia.",
    ],
    "pneumothorax": [
        "Small right apical pneumothorax.",
        "Large left pneumothorax with a visible visceral pleural line.",
        "Moderate right pneumothorax without mediastinal shift.",
        "Left-sided pneumothorax with partial collapse of the left lung.",
        "Interval development of a right pneumothorax.",
    ],
    "no finding": [
        "No acute cardiopulmonary abnormality.",
        "The lungs are clear without focal opacity, effusion or pneumothorax.",
        "Normal heart size and clear lungs.",
        "The cardiomediastinal silhouette is within normal limits and the lungs are clear.",
        "Unremarkable chest radiograph.",
    ],
}

LISTED_COLUMNS = ("Path", "category", "role")
ROLES = ("candidate", "query")
MISSING_LOG_LIMIT = 20  # missing files logged one by one; the rest are counted (all are listed in retrieval_set.json)

_VALUES = {"1.0": 1, "1": 1, "0.0": 0, "0": 0, "-1.0": -1, "-1": -1, "": None}


# ------------------------------------------------------------------------------------------------------- reading


def _label(value: str | None, column: str, where: str) -> int | None:
    text = (value or "").strip()
    if text not in _VALUES:
        raise ValueError(f"{where}: column {column!r} must be 1.0, 0.0, -1.0 or blank, got {value!r}")
    return _VALUES[text]


def _patient_study(path: str) -> tuple[str | None, str | None]:
    parts = Path(path).parts
    patient = next((part for part in parts if re.fullmatch(r"patient\d+", part)), None)
    study = next((part for part in parts if re.fullmatch(r"study\d+", part)), None)
    if patient is None and len(parts) >= 3:  # an unusual layout: .../<patient>/<study>/<file>
        patient, study = parts[-3], parts[-2]
    return patient, (f"{patient}/{study}" if patient and study else None)


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def read_chexpert_csv(path: str | os.PathLike, exclude_other_findings: bool = False) -> list[dict]:
    """
    Rows of a CheXpert-v1.0 label CSV as dicts: `path`, `frontal` (bool), `view` ("AP", "PA", "lateral" or None),
    `patient_id`, `study_id` and `labels` (`{observation column: 1, 0, -1 or None}`).

    Raises:
        FileNotFoundError: no such file. ValueError: required columns missing or a label value that is not
        1.0/0.0/-1.0/blank (naming the row and column).
    """
    path = Path(path).expanduser()
    header, rows = _read_csv(path)
    needed = ["Path", "Frontal/Lateral", *CATEGORY_COLUMNS.values()] + (
        list(OTHER_FINDING_COLUMNS) if exclude_other_findings else [])
    missing = [name for name in needed if name not in header]
    if missing:
        raise ValueError(f"{path} is not a CheXpert label CSV: columns {missing} are missing (it has {header}); "
                         f"a CSV listing a set needs the columns {list(LISTED_COLUMNS)}")
    label_columns = [name for name in CHEXPERT_OBSERVATIONS if name in header]
    parsed = []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}, line {number}"
        image_path = (row.get("Path") or "").strip()
        if not image_path:
            raise ValueError(f"{where}: empty Path")
        frontal = (row.get("Frontal/Lateral") or "").strip().lower() == "frontal"
        ap_pa = (row.get("AP/PA") or "").strip().upper()
        view = (ap_pa or None) if frontal else "lateral"
        patient, study = _patient_study(image_path)
        parsed.append({
            "path": image_path, "frontal": frontal, "view": view, "patient_id": patient, "study_id": study,
            "labels": {column: _label(row.get(column), column, where) for column in label_columns},
        })
    return parsed


def row_category(labels: Mapping[str, int | None], exclude_other_findings: bool = False) -> tuple[str | None, str]:
    """
    The retrieval category of a row whose labels are clean, else None; and the reason: "clean", "uncertain" (-1 on
    one of the 8 labels), "multiple_positive", "no_positive" or "other_findings" (with `exclude_other_findings`).
    """
    values = {category: labels.get(column) for category, column in CATEGORY_COLUMNS.items()}
    if any(value == -1 for value in values.values()):
        return None, "uncertain"
    positive = [category for category, value in values.items() if value == 1]
    if len(positive) > 1:
        return None, "multiple_positive"
    if not positive:
        return None, "no_positive"
    if exclude_other_findings and any(labels.get(column) in (1, -1) for column in OTHER_FINDING_COLUMNS):
        return None, "other_findings"
    return positive[0], "clean"


def _default_root(csv_path: Path, first_image_path: str | None) -> Path:
    """The folder the CSV's paths are relative to: above the CheXpert folder the CSV lives in, else the CSV's own."""
    if first_image_path and Path(first_image_path).parts and Path(first_image_path).parts[0] == csv_path.parent.name:
        return csv_path.parent.parent
    return csv_path.parent


def _as_paths(csv_paths: str | os.PathLike | Iterable) -> list[Path]:
    if isinstance(csv_paths, (str, os.PathLike)):
        csv_paths = [csv_paths]
    paths = [Path(p).expanduser() for p in csv_paths]
    if not paths:
        raise ValueError("no CSV given")
    return paths


# ------------------------------------------------------------------------------------------------------ selection


@dataclass
class ChexpertSelection:
    """
    A chosen retrieval set: `candidates` and `queries` in the shared record shape (`image` an absolute path),
    `counts` (how many rows were read, left out and why, clean rows per category, missing files, chosen per
    category), the `missing` image paths and the image `root`.
    """

    candidates: list[dict]
    queries: list[dict]
    counts: dict
    missing: list[str] = field(default_factory=list)
    root: str = ""
    source: str = "chexpert"

    @property
    def categories(self) -> list[str]:
        found = {record["labels"][0] for record in self.candidates + self.queries}
        ordered = [category for category in RETRIEVAL_CATEGORIES if category in found]
        return ordered + sorted(found - set(ordered))


class _Files:
    """Existence checks of image files, each path checked once; missing ones logged (up to a limit) and kept."""

    def __init__(self, root: Path):
        self.root = root
        self.checked: dict[str, bool] = {}
        self.missing: list[str] = []

    def absolute(self, path: str) -> Path:
        return self.root / path

    def exists(self, path: str) -> bool:
        if path not in self.checked:
            present = self.absolute(path).is_file()
            self.checked[path] = present
            if not present:
                self.missing.append(path)
                if len(self.missing) <= MISSING_LOG_LIMIT:
                    logger.warning("image file missing, skipped: %s", self.absolute(path))
                elif len(self.missing) == MISSING_LOG_LIMIT + 1:
                    logger.warning("more image files are missing; further ones are counted, not logged")
        return self.checked[path]


def _record(row: dict, category: str, files: _Files) -> dict:
    from convirt_hf.data.records import make_record

    return make_record(id=row["path"], image=str(files.absolute(row["path"])), labels=[category],
                       patient_id=row["patient_id"], study_id=row["study_id"], view=row["view"])


def select_chexpert_retrieval(
    csv_paths: str | os.PathLike | Iterable,
    root: str | os.PathLike | None = None,
    candidates_per_category: int = 200,
    queries_per_category: int = 10,
    seed: int = 0,
    frontal_only: bool = True,
    exclude_other_findings: bool = False,
) -> ChexpertSelection:
    """
    Samples the paper's 8 x N retrieval set from CheXpert label CSVs (see the module docstring for the rules).

    Args:
        csv_paths: `train.csv`, `valid.csv` or both (rows are pooled; a path listed twice is read once).
        root: the folder the CSVs' `Path` values are relative to (the one holding `CheXpert-v1.0`); default: the
            folder above the CSV's when the paths start with the CSV folder's name, else the CSV's folder.
        candidates_per_category: N (the paper: 200). queries_per_category: Q (the paper: 10).
        seed: the sampling seed; the same CSV rows and files give the same set whatever the CSVs' row order.
        frontal_only: leave out lateral views (the default, as the paper's images are frontal films).
        exclude_other_findings: also leave out rows positive/uncertain on the other pathologies.

    Raises:
        ValueError: a category has too few clean rows, or too few whose image file exists (naming the category and
            the counts); FileNotFoundError: a CSV or the root does not exist.
    """
    if candidates_per_category < 1 or queries_per_category < 1:
        raise ValueError(f"candidates_per_category and queries_per_category must be >= 1, got "
                         f"{candidates_per_category} and {queries_per_category}")
    paths = _as_paths(csv_paths)
    rows, duplicates = _read_unique_rows(paths, exclude_other_findings)
    root_dir = Path(root).expanduser() if root is not None else _default_root(paths[0], next(iter(rows), None))
    if not root_dir.is_dir():
        raise FileNotFoundError(f"CheXpert root {root_dir} does not exist (the folder holding CheXpert-v1.0)")
    counts, pools = _clean_pools(rows, duplicates, frontal_only, exclude_other_findings)
    _check_pool_sizes(pools, counts, candidates_per_category, queries_per_category)

    files = _Files(root_dir)
    orders = _shuffled_pools(pools, seed)
    queries, query_patients = _pick_queries(orders, queries_per_category, files)
    candidates, excluded_patients = _pick_candidates(orders, queries, query_patients, candidates_per_category, files)
    counts["missing_images"] = len(files.missing)
    counts["query_patient_rows_left_out"] = excluded_patients
    _check_shortfalls(queries, candidates, counts, queries_per_category, candidates_per_category, files, root_dir)
    if files.missing:
        logger.warning("%d image files missing under %s were skipped", len(files.missing), root_dir)
    counts["selected"] = {category: {"candidates": len(candidates[category]), "queries": len(queries[category])}
                          for category in RETRIEVAL_CATEGORIES}
    return ChexpertSelection(
        candidates=[_record(row, c, files) for c in RETRIEVAL_CATEGORIES for row in candidates[c]],
        queries=[_record(row, c, files) for c in RETRIEVAL_CATEGORIES for row in queries[c]],
        counts=counts, missing=list(files.missing), root=str(root_dir),
    )


def _read_unique_rows(paths: list[Path], exclude_other_findings: bool) -> tuple[dict[str, dict], int]:
    """The CSVs' rows by image path (a path listed again is read once) and the number of repeated rows."""
    rows: dict[str, dict] = {}
    duplicates = 0
    for path in paths:
        for row in read_chexpert_csv(path, exclude_other_findings):
            if row["path"] in rows:
                duplicates += 1
                continue
            rows[row["path"]] = row
    return rows, duplicates


def _clean_pools(rows: dict[str, dict], duplicates: int, frontal_only: bool,
                 exclude_other_findings: bool) -> tuple[dict, dict[str, list[dict]]]:
    """The selection's counts so far and the clean rows of each category (the rest counted by reason)."""
    counts: dict = {"rows": len(rows), "duplicate_rows": duplicates, "lateral": 0, "uncertain": 0,
                    "multiple_positive": 0, "no_positive": 0, "other_findings": 0}
    pools: dict[str, list[dict]] = {category: [] for category in RETRIEVAL_CATEGORIES}
    for row in rows.values():
        if frontal_only and not row["frontal"]:
            counts["lateral"] += 1
            continue
        category, reason = row_category(row["labels"], exclude_other_findings)
        if category is None:
            counts[reason] += 1
        else:
            pools[category].append(row)
    counts["clean"] = {category: len(pool) for category, pool in pools.items()}
    return counts, pools


def _check_pool_sizes(pools: dict[str, list[dict]], counts: dict, candidates_per_category: int,
                      queries_per_category: int) -> None:
    """Fails, naming each short category and why rows were left out, when a pool cannot fill its queries and
    candidates."""
    needed = candidates_per_category + queries_per_category
    short = {category: len(pool) for category, pool in pools.items() if len(pool) < needed}
    if short:
        raise ValueError(
            "too few clean rows for " + ", ".join(f"category {c!r} ({n} clean)" for c, n in short.items())
            + f": each needs {candidates_per_category} candidates + {queries_per_category} queries = {needed} "
            f"(of {counts['rows']} rows: {counts['lateral']} lateral, {counts['uncertain']} uncertain, "
            f"{counts['multiple_positive']} with several and {counts['no_positive']} with none of the 8 labels "
            f"positive, {counts['other_findings']} with other findings)"
        )


def _shuffled_pools(pools: dict[str, list[dict]], seed: int) -> dict[str, list[dict]]:
    """Each category's rows in a seeded random order that does not depend on the CSVs' row order."""
    orders = {}
    for index, category in enumerate(RETRIEVAL_CATEGORIES):
        pool = sorted(pools[category], key=lambda row: row["path"])
        permutation = np.random.default_rng([seed, index]).permutation(len(pool))
        orders[category] = [pool[i] for i in permutation]
    return orders


def _pick_queries(orders: dict[str, list[dict]], queries_per_category: int,
                  files: _Files) -> tuple[dict[str, list[dict]], set]:
    """The queries of each category, at most one per patient over all categories, and their patients."""
    queries: dict[str, list[dict]] = {}
    query_patients: set = set()
    for category in RETRIEVAL_CATEGORIES:
        chosen: list[dict] = []
        for row in orders[category]:
            if len(chosen) == queries_per_category:
                break
            if row["patient_id"] in query_patients or not files.exists(row["path"]):
                continue
            chosen.append(row)
            query_patients.add(row["patient_id"])
        queries[category] = chosen
    return queries, query_patients


def _pick_candidates(orders: dict[str, list[dict]], queries: dict[str, list[dict]], query_patients: set,
                     candidates_per_category: int, files: _Files) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """The candidates of each category, from the patients without a query, and how many rows of query patients
    each category left out."""
    query_paths = {row["path"] for chosen in queries.values() for row in chosen}
    candidates: dict[str, list[dict]] = {}
    excluded_patients = {}
    for category in RETRIEVAL_CATEGORIES:
        chosen: list[dict] = []
        excluded = 0
        for row in orders[category]:
            if len(chosen) == candidates_per_category:
                break
            if row["path"] in query_paths:
                continue
            if row["patient_id"] in query_patients:
                excluded += 1
                continue
            if files.exists(row["path"]):
                chosen.append(row)
        candidates[category] = chosen
        excluded_patients[category] = excluded
    return candidates, excluded_patients


def _check_shortfalls(queries: dict[str, list[dict]], candidates: dict[str, list[dict]], counts: dict,
                      queries_per_category: int, candidates_per_category: int, files: _Files, root: Path) -> None:
    """Fails, naming each category short of queries or candidates, once missing files or shared patients left
    too few."""
    shortfalls = [
        f"category {category!r}: {len(queries[category])} of {queries_per_category} queries and "
        f"{len(candidates[category])} of {candidates_per_category} candidates "
        f"({counts['clean'][category]} clean rows, {counts['query_patient_rows_left_out'][category]} left out as "
        "query patients' films)"
        for category in RETRIEVAL_CATEGORIES
        if len(queries[category]) < queries_per_category or len(candidates[category]) < candidates_per_category
    ]
    if shortfalls:
        raise ValueError(f"too few usable rows ({len(files.missing)} image files missing under {root}): "
                         + "; ".join(shortfalls))


def is_listed_retrieval_csv(path: str | os.PathLike) -> bool:
    """Whether a CSV lists a retrieval set (columns Path, category, role) rather than CheXpert labels."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CSV {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return all(name in header for name in LISTED_COLUMNS)


def read_listed_retrieval_csv(csv_path: str | os.PathLike, root: str | os.PathLike | None = None) -> ChexpertSelection:
    """
    A retrieval set listed in a CSV with columns `Path`, `category` (any names, lower-cased) and `role`
    (`candidate` or `query`); other columns are ignored. Missing image files are logged, counted and skipped.

    Raises:
        ValueError: missing columns, an unknown role, a path listed twice, or no usable candidate or query left.
    """
    csv_path = Path(csv_path).expanduser()
    header, rows = _read_csv(csv_path)
    missing_columns = [name for name in LISTED_COLUMNS if name not in header]
    if missing_columns:
        raise ValueError(f"{csv_path}: a CSV listing a retrieval set needs the columns {list(LISTED_COLUMNS)}; "
                         f"{missing_columns} are missing (it has {header})")
    root = Path(root).expanduser() if root is not None else _default_root(
        csv_path, (rows[0].get("Path") or "").strip() if rows else None)
    if not root.is_dir():
        raise FileNotFoundError(f"image root {root} does not exist")
    files = _Files(root)
    seen: set = set()
    chosen: dict[str, list[dict]] = {role: [] for role in ROLES}
    for number, row in enumerate(rows, start=2):
        where = f"{csv_path}, line {number}"
        image_path = (row.get("Path") or "").strip()
        category = (row.get("category") or "").strip().lower()
        role = (row.get("role") or "").strip().lower()
        if not image_path or not category:
            raise ValueError(f"{where}: Path and category must not be empty")
        if role not in ROLES:
            raise ValueError(f"{where}: role must be one of {list(ROLES)}, got {row.get('role')!r}")
        if image_path in seen:
            raise ValueError(f"{where}: {image_path} is listed twice")
        seen.add(image_path)
        if not files.exists(image_path):
            continue
        patient, study = _patient_study(image_path)
        view = "lateral" if "lateral" in Path(image_path).name.lower() else None
        chosen[role].append({"path": image_path, "patient_id": patient, "study_id": study, "view": view,
                             "category": category})
    if not chosen["candidate"] or not chosen["query"]:
        raise ValueError(f"{csv_path}: no usable {'candidates' if not chosen['candidate'] else 'queries'} "
                         f"({len(files.missing)} image files missing under {root})")
    overlap = {r["patient_id"] for r in chosen["query"]} & {r["patient_id"] for r in chosen["candidate"]} - {None}
    if overlap:
        logger.warning("%d patients have both query and candidate images in %s", len(overlap), csv_path)
    if files.missing:
        logger.warning("%d image files missing under %s were skipped", len(files.missing), root)
    selected: dict[str, dict] = {}
    for role, plural in (("candidate", "candidates"), ("query", "queries")):
        for row in chosen[role]:
            selected.setdefault(row["category"], {"candidates": 0, "queries": 0})[plural] += 1
    counts = {"rows": len(rows), "missing_images": len(files.missing), "selected": selected}
    records = {role: [_record(row, row["category"], files) for row in chosen[role]] for role in ROLES}
    return ChexpertSelection(records["candidate"], records["query"], counts, list(files.missing), str(root),
                             source="listed")


# ---------------------------------------------------------------------------------------------------- text queries


def load_text_queries(
    source: str | os.PathLike | Mapping[str, Sequence[str]] | None = None, categories: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """
    Text queries (category -> sentences): `CHEXPERT_TEXT_QUERIES` (this project's) by default, or a JSON file /
    mapping that replaces them. With `categories`, user queries must cover exactly those categories (an unknown
    key is most likely a typo); the defaults are restricted to them.

    Raises:
        ValueError: not a mapping of non-empty sentence lists, or categories missing / unknown.
    """
    if source is None:
        queries = {category: list(sentences) for category, sentences in CHEXPERT_TEXT_QUERIES.items()}
        where = "the default text queries"
    elif isinstance(source, Mapping):
        queries, where = dict(source), "text queries"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"text queries file {path} does not exist")
        try:
            queries = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"text queries file {path} is not valid JSON: {error}") from None
        where = str(path)
    if not isinstance(queries, Mapping) or not queries:
        raise ValueError(f"{where}: expected a JSON object mapping categories to lists of sentences")
    cleaned: dict[str, list[str]] = {}
    for category, sentences in queries.items():
        if isinstance(sentences, str) or not isinstance(sentences, Sequence) or not sentences or not all(
                isinstance(s, str) and s.strip() for s in sentences):
            raise ValueError(f"{where}: category {category!r} needs a non-empty list of non-empty sentences")
        cleaned[str(category).strip().lower()] = [s.strip() for s in sentences]
    if categories is not None:
        wanted = list(categories)
        missing = [c for c in wanted if c not in cleaned]
        # the defaults cover the 8 categories: a listed set with fewer simply uses those it needs
        unknown = [] if source is None else [c for c in cleaned if c not in wanted]
        if missing or unknown:
            raise ValueError(f"{where} must have sentences for exactly the set's categories {wanted}: "
                             f"missing {missing}, unknown {unknown}")
        cleaned = {category: cleaned[category] for category in wanted}
    return cleaned


# ---------------------------------------------------------------------------------------------------------- output


def write_retrieval_set(
    output_dir: str | os.PathLike,
    selection: ChexpertSelection,
    text_queries: Mapping[str, Sequence[str]],
    overwrite: bool = False,
    metadata: Mapping | None = None,
) -> Path:
    """
    Writes a selection as a retrieval-set folder (see the module docstring), atomically: it is built beside
    `output_dir` and renamed into place. An existing folder is only replaced with `overwrite`, and only when it is
    a retrieval set (holds `dataset_dict.json` or `retrieval_set.json`).
    """
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import (
        disable_progress_bar,
        enable_progress_bar,
        is_progress_bar_enabled,
    )

    from convirt_hf.data.records import RECORD_FEATURES

    output = Path(output_dir).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{output} exists: pass overwrite=True (--overwrite) to replace it")
        if not output.is_dir() or not ((output / "dataset_dict.json").is_file()
                                       or (output / "retrieval_set.json").is_file()):
            raise FileExistsError(f"{output} exists and is not a retrieval set; refusing to replace it")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".incomplete-{output.name}-", dir=output.parent))
    bars = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        folder = staging / "set"
        with tempfile.TemporaryDirectory(prefix="convirt-retrieval-") as cache_dir:
            splits = {
                name: Dataset.from_generator(_yield_records, gen_kwargs={"records": records}, features=RECORD_FEATURES,
                                             cache_dir=cache_dir, writer_batch_size=64)
                for name, records in (("retrieval_candidates", selection.candidates),
                                      ("retrieval_queries", selection.queries))
            }
            DatasetDict(splits).save_to_disk(str(folder))
        (folder / "text_queries.json").write_text(json.dumps(dict(text_queries), indent=2) + "\n")
        description = {
            "source": selection.source, "root": selection.root, "counts": selection.counts,
            "missing_images": selection.missing, "categories": selection.categories,
            "text_queries": "this project's (convirt_hf.evaluation.chexpert.CHEXPERT_TEXT_QUERIES), not the paper's"
            if dict(text_queries) == {c: CHEXPERT_TEXT_QUERIES.get(c) for c in text_queries} else "user-supplied",
            **dict(metadata or {}),
        }
        (folder / "retrieval_set.json").write_text(json.dumps(description, indent=2) + "\n")
        swap_in_folder(folder, output, aside=staging / "previous")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if bars:
            enable_progress_bar()
    logger.info("retrieval set written to %s: %d candidates, %d queries (%s)", output, len(selection.candidates),
                len(selection.queries), ", ".join(selection.categories))
    return output


def _yield_records(records):
    yield from records


def build_chexpert_retrieval_set(
    csv_paths: str | os.PathLike | Iterable,
    output_dir: str | os.PathLike,
    root: str | os.PathLike | None = None,
    candidates_per_category: int = 200,
    queries_per_category: int = 10,
    seed: int = 0,
    frontal_only: bool = True,
    exclude_other_findings: bool = False,
    text_queries: str | os.PathLike | Mapping[str, Sequence[str]] | None = None,
    overwrite: bool = False,
) -> Path:
    """
    Builds the retrieval-set folder from CheXpert's label CSVs (sampled, see [`select_chexpert_retrieval`]) or
    from one CSV that lists a set (columns Path, category, role; detected from its header), and returns its path.
    """
    paths = _as_paths(csv_paths)
    listed = [is_listed_retrieval_csv(path) for path in paths]
    settings: dict[str, Any]
    if any(listed):
        if len(paths) != 1:
            raise ValueError("a CSV that lists a retrieval set (Path, category, role) must be given alone")
        selection = read_listed_retrieval_csv(paths[0], root)
        settings = {"csv": [str(paths[0])]}
    else:
        selection = select_chexpert_retrieval(paths, root, candidates_per_category, queries_per_category, seed,
                                              frontal_only, exclude_other_findings)
        settings = {"csv": [str(p) for p in paths], "candidates_per_category": candidates_per_category,
                    "queries_per_category": queries_per_category, "seed": seed, "frontal_only": frontal_only,
                    "exclude_other_findings": exclude_other_findings}
    queries = load_text_queries(text_queries, selection.categories)
    return write_retrieval_set(output_dir, selection, queries, overwrite=overwrite, metadata={"settings": settings})
