"""Every data source as a `datasets.Dataset` in the shared record shape, with bad rows counted, never silent.

:func:`load_pairs` is the one entry point. A *source* (a small picklable object, :class:`PairSource`) reads its files
and yields :class:`Candidate` rows: an image reference, the raw report, labels and ids. One pipeline,
:func:`finish_candidate`, turns each candidate into a record or a counted skip:

1. rows the caller filtered out on purpose (``views=``, ``split=``) are counted as *filtered*, not as errors;
2. text is made valid UTF-8: bytes that are not UTF-8 (read with ``surrogateescape`` from a table, or raw report
   bytes) are re-decoded as cp1252 one invalid byte at a time, so valid UTF-8 around them is kept
   (:func:`decode_bytes`), in every column (``report_cp1252``, ``metadata_cp1252``, ``image_path_cp1252`` repairs),
   never crashing the Arrow writer; the report is then reduced to FINDINGS + IMPRESSION by
   :func:`~convirt_hf.data.reports.prepare_report`; empty, too short (< ``min_tokens``) or section-less reports are
   skipped as ``empty_report``, ``short_report`` or ``no_findings_impression``;
3. with ``check_images=True`` the image is opened and fully decoded by :func:`~convirt_hf.data.images.load_image`;
   unreadable images are skipped under their reason (``missing_file``, ``zero_byte``, ``truncated``, ``corrupt``,
   ``too_large``, ...); repaired images (16-bit, alpha, palette) are kept *as their repaired 8-bit PNG*, so training
   decodes exactly the pixels that were checked.

Records stream into an Arrow file through ``Dataset.from_generator``: memory stays bounded whatever the corpus size.
Worker processes (``num_proc``) each keep a ledger that is merged into the returned one, so counts are exact; they also
report their progress (one bar per load) and, in strict mode, the first bad row, through small files that the main
process reads (an exception pickled back from a worker loses its cause).

Kinds: ``manifest`` (a CSV/TSV/JSONL/parquet file of image paths, relative to the file, and report text),
``imagefolder`` (a folder with ``metadata.jsonl`` or ``metadata.csv`` and a ``file_name`` column), ``hub`` (a Hub
dataset id, or a local dataset folder, through ``datasets.load_dataset(..., streaming=True)``), ``disk`` (a
``save_to_disk`` folder; returned as it is when it already has the record columns), ``mimic-cxr``, ``chexpert-plus``
and ``openi`` (see :mod:`.mimic_cxr`, :mod:`.chexpert_plus`, :mod:`.openi`).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from .images import DEFAULT_MAX_PIXELS, ImageProblem, encode_png, load_image
from .records import RECORD_COLUMNS, RECORD_FEATURES, make_record
from .reports import count_tokens, extract_sections, prepare_report, report_text
from .skips import DEFAULT_MAX_LOGGED_PER_REASON, BadInputError, SkipLedger

logger = logging.getLogger(__name__)

KINDS = ("manifest", "imagefolder", "hub", "disk", "mimic-cxr", "chexpert-plus", "openi")
GENERIC_KINDS = ("manifest", "imagefolder", "hub", "disk")
# The options each kind accepts besides the generic column names (which only the generic kinds use).
KIND_OPTIONS = {
    "manifest": (),
    "imagefolder": (),
    "disk": (),
    "hub": ("config_name", "revision", "data_dir"),
    "mimic-cxr": ("reports_root", "labels", "uncertain"),
    "chexpert-plus": ("image_root", "labels_file", "uncertain"),
    "openi": ("image_root", "mesh_labels"),
}
MANIFEST_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz", ".json", ".parquet")
# Suffixes that mark a string as a file name, never a Hub id (a missing local file must not become a Hub lookup).
_LOCAL_SUFFIXES = MANIFEST_SUFFIXES + (".gz", ".arrow", ".txt", ".xml", ".zip", ".tar", ".tgz", ".png", ".jpg",
                                       ".jpeg", ".dcm", ".json.gz")
REPORT_MODES = ("findings_impression", "whole")
DEFAULT_WRITER_BATCH_SIZE = 100
# Columns of JSON lines files and schema-less streams are the union of the keys of this many first rows (a key that
# only later rows have would otherwise fail as "column not found"); the same prefix is used to check label columns.
COLUMN_SCAN_ROWS = 1000
HUB_SCAN_ROWS = 100
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_PROGRESS_INTERVAL_S = 0.25


# --- rows, problems, ledger -------------------------------------------------------------------------------------


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


class _Repairs:
    """Collects a row's repairs so they reach the ledger only if the row is kept."""

    def __init__(self, repairs: list[tuple[str, str]]):
        self.repairs = repairs

    def repair(self, row_id: str, reason: str, detail: str = "") -> None:
        self.repairs.append((reason, detail))


@dataclass(frozen=True)
class PairOptions:
    """How candidates become records (see :func:`load_pairs` for each field)."""

    report_mode: str = "findings_impression"
    min_tokens: int = 3
    check_images: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    views: tuple[str, ...] | None = None
    require_text: bool = True


# --- text that is not UTF-8 -------------------------------------------------------------------------------------

_CP1252_ERRORS = "convirt-cp1252"
_ESCAPED_BYTES = "convirt-escaped-bytes"


def _cp1252_char(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined (0x81, 0x8D, 0x8F, 0x90, 0x9D): latin-1
        return chr(byte)


def _decode_invalid_as_cp1252(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(_cp1252_char(byte) for byte in error.object[error.start : error.end]), error.end


def _escaped_surrogates_to_bytes(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    out = bytearray()
    for char in error.object[error.start : error.end]:
        code = ord(char)
        # U+DC80..U+DCFF is how `surrogateescape` carries an undecodable byte; any other lone surrogate (e.g. a "\ud83d"
        # escape in JSON) stands for nothing recoverable.
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
    return bytes(out), error.end


codecs.register_error(_CP1252_ERRORS, _decode_invalid_as_cp1252)
codecs.register_error(_ESCAPED_BYTES, _escaped_surrogates_to_bytes)


def decode_bytes(data: bytes) -> tuple[str, bool]:
    """
    Decodes text bytes that should be UTF-8; returns ``(text, repaired)``.

    Valid UTF-8 sequences stay UTF-8 and only the bytes that are not valid UTF-8 are decoded as cp1252 (Windows text,
    the usual culprit; latin-1 for the five bytes cp1252 leaves undefined), so a cell with one stray cp1252 byte keeps
    its UTF-8 accents instead of turning into mojibake. Text with a UTF-16 byte-order mark is decoded as UTF-16. A
    UTF-8 byte-order mark is dropped. ``repaired`` is True when anything but plain UTF-8 was needed.
    """
    data = bytes(data)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return data.decode("utf-16"), True
        except UnicodeDecodeError:
            pass
    return data.decode("utf-8", errors=_CP1252_ERRORS), True


def repair_text(value: str) -> tuple[str, bool]:
    """
    A string read with ``surrogateescape`` (its undecodable bytes carried as lone surrogates, which Arrow refuses) as
    valid text: the original bytes are recovered and decoded by :func:`decode_bytes`. Returns ``(text, repaired)``.
    """
    try:
        value.encode("utf-8")
        return value, False
    except UnicodeEncodeError:
        pass
    text, _ = decode_bytes(value.encode("utf-8", errors=_ESCAPED_BYTES))
    return text, True


# --- small value helpers ----------------------------------------------------------------------------------------


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def to_str(value: Any) -> str | None:
    """A metadata value as a clean string (``10000032.0`` -> ``"10000032"``), ``None`` when empty."""
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = decode_bytes(bytes(value))[0]
    return str(value).strip() or None


def fix_text(value: Any) -> tuple[str | None, bool]:
    """
    Text read from a file as valid UTF-8: bytes, or strings carrying undecodable bytes (read with
    ``surrogateescape``), go through :func:`decode_bytes`; returns ``(text, repaired)``.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, False
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(value))
    return repair_text(str(value))


_TRUE_WORDS = {"1", "1.0", "true", "t", "yes", "y", "positive", "pos", "present"}
_FALSE_WORDS = {"0", "0.0", "-1", "-1.0", "false", "f", "no", "n", "negative", "neg", "absent", "uncertain", "nan",
                "none", "null", ""}


def binary_value(value: Any) -> bool | None:
    """
    A binary label cell as True ("present": 1, 1.0, True, "1", "true", "yes", "positive") or False (0, -1 (uncertain),
    blank, "false", "no", ...); ``None`` when the cell is not a binary value at all (e.g. a label name).
    """
    if is_missing(value):
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True if value == 1 else (False if value in (0, -1) else None)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_WORDS:
            return True
        if text in _FALSE_WORDS:
            return False
    return None


def label_names(value: Any) -> list[str]:
    """A label cell holding names: a list, a JSON list, or a string separated by ``|``, ``;`` or ``,``."""
    if is_missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = [part for part in re.split(r"[\[\]'\"|;,]", text)]
        else:
            value = re.split(r"[|;,]", text)
    if not isinstance(value, (list, tuple)):
        try:
            value = list(value)
        except TypeError:
            value = [value]
    names = []
    for item in value:
        name = to_str(item)
        if name and name.lower() not in names:
            names.append(name.lower())
    return names


def positive_label_columns(row: dict, skip: Sequence[str], uncertain_is_positive: bool = False) -> tuple[str, ...]:
    """
    The lower-cased names of the columns of a CheXpert-style label row (MIMIC-CXR's chexpert/negbio tables,
    CheXpert-Plus's) whose value is positive: 1.0, and -1.0 (uncertain) too when `uncertain_is_positive`. Columns in
    `skip` (ids, paths) and blank or non-numeric cells are not labels.
    """
    positive = {1.0, -1.0} if uncertain_is_positive else {1.0}
    found = []
    for column, value in row.items():
        if column in skip or is_missing(value):
            continue
        try:
            if float(value) in positive:
                found.append(column.lower())
        except (TypeError, ValueError):
            continue
    return tuple(found)


def labels_from_row(row: dict, binary_columns: Sequence[str] = (), names_column: str | None = None
                    ) -> tuple[list[str], str | None]:
    """
    The labels of a row: the lower-cased name of each binary column that is positive, then the names in
    `names_column`. Returns ``(labels, problem)``; `problem` describes a binary column whose cell is not binary.
    """
    labels: list[str] = []
    problem = None
    for column in binary_columns:
        value = binary_value(row.get(column))
        if value is None:
            problem = (f"label column {column!r} holds {row.get(column)!r}, not a binary value (1/0, true/false, "
                       "yes/no, -1 or blank)")
        elif value and column.lower() not in labels:
            labels.append(column.lower())
    if names_column:
        labels += [name for name in label_names(row.get(names_column)) if name not in labels]
    return labels, problem


def check_binary_columns(rows: Iterator[dict], binary_columns: Sequence[str], where: str,
                         class_names: dict[str, list[str]] | None = None) -> None:
    """
    Fails early when a column given as binary holds something else in the first rows: the usual cause is a column of
    label names passed as ``label_columns`` instead of ``label_names_column``.
    """
    if not binary_columns:
        return
    for number, row in enumerate(rows, 1):
        row = decode_class_labels(row, class_names or {})
        for column in binary_columns:
            if binary_value(row.get(column)) is None:
                raise ValueError(
                    f"{where}: label_columns={column!r} must hold binary values (1/0, true/false, yes/no, -1 or "
                    f"blank), but row {number} holds {row.get(column)!r}. For a column of label names use "
                    f"label_names_column={column!r} (--label-names-column {column})."
                )


def class_label_names(features: Any, columns: Sequence[str | None]) -> dict[str, list[str]]:
    """``column -> class names`` for the columns of `features` that are ``ClassLabel`` or a list of ``ClassLabel``."""
    from datasets import ClassLabel

    found = {}
    for column in columns:
        if not column or not features or column not in features:
            continue
        feature = features[column]
        inner = getattr(feature, "feature", None)
        if isinstance(feature, ClassLabel):
            found[column] = list(feature.names)
        elif isinstance(inner, ClassLabel):
            found[column] = list(inner.names)
    return found


def _class_name(value: Any, names: list[str]) -> Any:
    if isinstance(value, (list, tuple)):
        return [name for name in (_class_name(item, names) for item in value) if name is not None]
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return names[value] if 0 <= value < len(names) else None  # -1: ClassLabel's "no label"
    return value


def decode_class_labels(row: dict, class_names: dict[str, list[str]]) -> dict:
    """`row` with the integer indices of its ``ClassLabel`` columns replaced by the class names (``int2str``)."""
    if not class_names:
        return row
    row = dict(row)
    for column, names in class_names.items():
        if column in row:
            row[column] = _class_name(row[column], names)
    return row


def in_shard(index: int, shard: int, num_shards: int) -> bool:
    return num_shards <= 1 or index % num_shards == shard


# --- reading tables ---------------------------------------------------------------------------------------------


# The csv module refuses a cell longer than 131072 characters by default, and that error ends the whole read (the
# reader cannot skip to the next row): a radiology report pasted with its history, or a manifest cell holding a whole
# document, must reach the report filter like any other text instead.
_CSV_FIELD_LIMIT = 2**31 - 1


def _allow_long_csv_fields() -> None:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)


def _open_text(path: Path):
    _allow_long_csv_fields()
    # surrogateescape: a stray cp1252 byte in one report must not make the whole file unreadable; fix_text repairs
    # (and counts) it per row.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _table_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "json"), (".tsv", "tsv"),
                        (".csv", "csv")):
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: not a table this package reads (CSV, TSV, JSONL, JSON or parquet)")


def _json_is_array(path: Path) -> bool:
    with _open_text(path) as handle:
        while True:
            char = handle.read(1)
            if not char or not char.isspace():
                return char == "["


def read_header(path: str | os.PathLike, scan_rows: int = COLUMN_SCAN_ROWS) -> list[str]:
    """
    The column names of a table file, read without loading it: the header of a CSV/TSV, the schema of a parquet
    file, and for JSON (lines or array) the union of the keys of the first `scan_rows` rows, in the order they first
    appear (so an optional key that row 1 lacks is still found).
    """
    path = Path(path)
    fmt = _table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt in ("json", "jsonl"):
        names: dict[str, None] = {}
        for row in itertools.islice(iter_table_rows_lenient(path), scan_rows):
            if isinstance(row, dict):
                names.update(dict.fromkeys(row))
        return list(names)
    with _open_text(path) as handle:
        header = next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), [])
    return _repair_header(header, path)


def _repair_header(header: list[str], path: Path) -> list[str]:
    fixed = [repair_text(name)[0] for name in header]
    if fixed != header:
        logger.warning("%s: column names that are not UTF-8 were re-decoded as cp1252: %s", path,
                       ", ".join(name for name, old in zip(fixed, header) if name != old))
    return fixed


def iter_table_rows(path: str | os.PathLike, batch_size: int = 512) -> Iterator[dict]:
    """
    Rows of a CSV/TSV(.gz), JSON lines, JSON array or parquet file as dicts, streamed (a JSON array is loaded).

    Text files are read as UTF-8 with ``surrogateescape``: a byte that is not UTF-8 reaches the caller as a lone
    surrogate (see :func:`repair_text`) instead of making the whole file unreadable. CSV/TSV column names are
    repaired here already.
    """
    path = Path(path)
    fmt = _table_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    elif fmt in ("json", "jsonl"):
        if fmt == "json" and _json_is_array(path):
            with _open_text(path) as handle:
                try:
                    rows = json.load(handle)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}: not a JSON array of rows ({error})") from error
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON array of objects")
            yield from rows
            return
        for row in _iter_json_lines(path):
            if isinstance(row, UnreadableRow):
                raise ValueError(row.detail)
            yield row
    else:
        with _open_text(path) as handle:
            reader = csv.DictReader(handle, delimiter="\t" if fmt == "tsv" else ",")
            if reader.fieldnames is not None:
                reader.fieldnames = [repair_text(name)[0] for name in reader.fieldnames]
            yield from reader


@dataclass
class UnreadableRow:
    """A line of a JSON lines file that is not JSON (``number`` counts from 1)."""

    number: int
    detail: str


def _iter_json_lines(path: Path) -> Iterator[dict | UnreadableRow]:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    yield UnreadableRow(number, f"{path}:{number}: not a JSON line ({error})")


def iter_table_rows_lenient(path: str | os.PathLike) -> Iterator[dict | UnreadableRow]:
    """:func:`iter_table_rows`, but a JSON line that cannot be parsed comes as an :class:`UnreadableRow`."""
    path = Path(path)
    fmt = _table_format(path)
    if fmt == "jsonl" or (fmt == "json" and not _json_is_array(path)):
        yield from _iter_json_lines(path)
    else:
        yield from iter_table_rows(path)


def check_columns(available: Sequence[str], wanted: dict[str, Any], where: str) -> None:
    """
    Fails, before anything is read, when a configured column is absent; the message lists the columns that exist.

    Args:
        available: the columns the source has.
        wanted: argument name -> column name (or a list of column names); ``None`` entries are not checked.
        where: the file or dataset, for the message.
    """
    missing = []
    for argument, columns in wanted.items():
        if columns is None:
            continue
        for column in [columns] if isinstance(columns, str) else columns:
            if column not in available:
                missing.append(f"{argument}={column!r}")
    if missing:
        raise ValueError(
            f"{where}: column(s) not found: {', '.join(missing)}. The columns that exist are: "
            f"{', '.join(map(str, available)) or '(none)'}"
        )


# --- sources ----------------------------------------------------------------------------------------------------


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


@dataclass
class ColumnMap:
    """Column names of a generic source (see :func:`load_pairs`)."""

    image: str = "image"
    text: str | None = "text"
    labels: tuple[str, ...] = ()
    label_names: str | None = None
    id: str | None = None
    patient: str | None = None
    study: str | None = None
    view: str | None = None

    def wanted(self) -> dict[str, Any]:
        return {"image_column": self.image, "text_column": self.text, "label_columns": list(self.labels) or None,
                "label_names_column": self.label_names, "id_column": self.id, "patient_column": self.patient,
                "study_column": self.study, "view_column": self.view}

    def metadata_columns(self) -> list[str]:
        """The columns whose ``ClassLabel`` indices are turned into class names (all but image and text)."""
        return [c for c in (*self.labels, self.label_names, self.id, self.patient, self.study, self.view) if c]


def candidate_from_row(row: dict, index: int, columns: ColumnMap, base_dir: Path | None, name: str,
                       class_names: dict[str, list[str]] | None = None) -> Candidate:
    """A generic table row (manifest, imagefolder, Hub or disk dataset) as a candidate."""
    row_id = f"{name}-{index:07d}"
    if not isinstance(row, dict):
        return Candidate(id=row_id, image=None, problem=("unreadable_row", f"row {index + 1} is not an object"))
    row = decode_class_labels(row, class_names or {})
    image = row.get(columns.image)
    if isinstance(image, str) and image.strip():
        image = image.strip()
        if base_dir is not None and not Path(image).is_absolute() and "://" not in image:
            image = str((base_dir / image).resolve())
    elif isinstance(image, dict) and image.get("bytes") is None and image.get("path") and base_dir is not None:
        if not Path(image["path"]).is_absolute():
            image = {"bytes": None, "path": str((base_dir / image["path"]).resolve())}
    if columns.id:
        row_id = to_str(row.get(columns.id)) or row_id
    labels, label_problem = labels_from_row(row, columns.labels, columns.label_names)
    return Candidate(
        id=row_id,
        image=None if is_missing(image) else image,
        report=row.get(columns.text) if columns.text else None,
        labels=labels,
        patient_id=to_str(row.get(columns.patient)) if columns.patient else None,
        study_id=to_str(row.get(columns.study)) if columns.study else None,
        view=to_str(row.get(columns.view)) if columns.view else None,
        problem=("bad_label", label_problem) if label_problem else None,
    )


@dataclass
class TableSource(PairSource):
    """
    One or more table files (a manifest, or the metadata files of an imagefolder); image paths are relative to the
    folder of the table that lists them.
    """

    tables: tuple[str, ...]
    columns: ColumnMap
    name: str = "manifest"
    split: str | None = None
    split_column: str | None = None

    def __post_init__(self):
        for table in self.tables:
            header = read_header(table)
            check_columns(header, self.columns.wanted(), table)
            if self.split is not None and self.split_column is not None and self.split_column not in header:
                raise ValueError(
                    f"{table}: split={self.split!r} needs a {self.split_column!r} column (or a split sub-folder). "
                    f"The columns that exist are: {', '.join(header)}"
                )
            if self.columns.labels:
                rows = (row for row in iter_table_rows_lenient(table) if isinstance(row, dict))
                check_binary_columns(itertools.islice(rows, COLUMN_SCAN_ROWS), self.columns.labels, table)

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        index = -1
        for table in self.tables:
            base_dir = Path(table).resolve().parent
            for row in iter_table_rows_lenient(table):
                index += 1
                if not in_shard(index, shard, num_shards):
                    continue
                if isinstance(row, UnreadableRow):
                    yield Candidate(id=f"{self.name}-{index:07d}", image=None, problem=("unreadable_row", row.detail))
                    continue
                if self.split is not None and self.split_column is not None and isinstance(row, dict):
                    if to_str(row.get(self.split_column)) != self.split:
                        ledger.filter("split")
                        continue
                yield candidate_from_row(row, index, self.columns, base_dir, self.name)


def _pick_split(available: Sequence[str], split: str | None, where: str) -> str:
    available = list(available)
    if split is not None:
        if split not in available:
            raise ValueError(f"{where}: no split {split!r}; the splits are: {', '.join(available)}")
        return split
    if len(available) == 1:
        return available[0]
    if "train" in available:
        logger.info("%s has splits %s; reading 'train' (pass split= for another)", where, available)
        return "train"
    raise ValueError(f"{where} has several splits ({', '.join(available)}): pass split=")


@dataclass
class HubSource(PairSource):
    """
    A dataset read with ``datasets.load_dataset(..., streaming=True)``: a Hub id or a local dataset folder.

    Args:
        path: the Hub id or folder.
        columns: the column names.
        split: the split (the only one, or ``train``, when None).
        name: a short name for ids and logs.
        config_name: the configuration of a dataset with several (``load_dataset``'s ``name``).
        revision: a branch, tag or commit of a Hub dataset.
        data_dir: a sub-folder of the dataset to read.
    """

    path: str
    columns: ColumnMap
    split: str | None = None
    name: str = "hub"
    config_name: str | None = None
    revision: str | None = None
    data_dir: str | None = None
    shardable = False  # every worker would stream (download) the whole dataset

    @property
    def load_kwargs(self) -> dict:
        """The keyword arguments given to ``load_dataset`` / ``get_dataset_split_names`` besides the path."""
        kwargs = {"revision": self.revision, "data_dir": self.data_dir}
        return {key: value for key, value in kwargs.items() if value is not None}

    def __post_init__(self):
        from datasets import get_dataset_split_names

        try:
            splits = get_dataset_split_names(self.path, config_name=self.config_name, **self.load_kwargs)
        except ValueError as error:
            if self.config_name is None and "config" in str(error).lower():
                raise ValueError(f"{self.path}: {error}\nPass config_name= (--config-name) to choose one.") from None
            raise
        self.split = _pick_split(splits, self.split, self.path)
        dataset = self._open()
        names = dataset.column_names
        if names is None:  # features unknown until rows are read: the union of a bounded prefix
            found: dict[str, None] = {}
            for row in itertools.islice(dataset, HUB_SCAN_ROWS):
                found.update(dict.fromkeys(row))
            names = list(found)
        check_columns(names, self.columns.wanted(), self.path)
        self.class_names = class_label_names(dataset.features, self.columns.metadata_columns())
        if self.columns.labels:
            check_binary_columns(itertools.islice(dataset, HUB_SCAN_ROWS), self.columns.labels, self.path,
                                 self.class_names)

    def _open(self):
        from datasets import Image, load_dataset

        dataset = load_dataset(self.path, self.config_name, split=self.split, streaming=True, **self.load_kwargs)
        features = dataset.features or {}
        if isinstance(features.get(self.columns.image), Image):
            dataset = dataset.cast_column(self.columns.image, Image(decode=False))  # bytes/paths, not PIL
        return dataset

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        base_dir = Path(self.path).resolve() if Path(self.path).is_dir() else None
        if self.data_dir and base_dir is not None:
            base_dir = base_dir / self.data_dir
        for index, row in enumerate(self._open()):
            if in_shard(index, shard, num_shards):
                yield candidate_from_row(row, index, self.columns, base_dir, self.name, self.class_names)


@dataclass
class DatasetSource(PairSource):
    """A `datasets.Dataset` (e.g. from ``load_from_disk``) whose columns are mapped by name."""

    dataset: Any
    columns: ColumnMap
    name: str = "disk"
    base_dir: str | None = None

    def __post_init__(self):
        from datasets import Image

        check_columns(self.dataset.column_names, self.columns.wanted(), self.name)
        if isinstance(self.dataset.features.get(self.columns.image), Image):
            self.dataset = self.dataset.cast_column(self.columns.image, Image(decode=False))
        self.class_names = class_label_names(self.dataset.features, self.columns.metadata_columns())
        if self.columns.labels:
            prefix = self.dataset.select_columns(list(self.columns.labels))
            check_binary_columns(itertools.islice(prefix, COLUMN_SCAN_ROWS), self.columns.labels, self.name,
                                 self.class_names)

    def count_hint(self) -> int | None:
        return len(self.dataset)

    def iter_candidates(self, shard: int, num_shards: int, ledger: PairLedger) -> Iterator[Candidate]:
        part = self.dataset if num_shards <= 1 else self.dataset.shard(num_shards, shard, contiguous=True)
        offset = 0
        if num_shards > 1:  # contiguous shards: recover the global row index for ids
            size, extra = divmod(len(self.dataset), num_shards)
            offset = shard * size + min(shard, extra)
        base_dir = Path(self.base_dir) if self.base_dir else None
        for index, row in enumerate(part, start=offset):
            yield candidate_from_row(row, index, self.columns, base_dir, self.name, self.class_names)


# --- the pipeline -----------------------------------------------------------------------------------------------


def report_problem(report: str, mode: str, min_tokens: int) -> str:
    """Why `prepare_report` found a report unusable: empty, no FINDINGS/IMPRESSION, or too short."""
    if not report or not report.strip():
        return "empty_report"
    text = report_text(report, mode)
    if not text.strip():
        sections = set(extract_sections(report)) - {"preamble"}
        return "no_findings_impression" if sections else "empty_report"
    if count_tokens(text) < min_tokens:
        return "short_report"
    return "short_report"


_IMAGE_TYPES = (str, bytes, bytearray, memoryview, dict, PILImage.Image, np.ndarray)


def _repair_metadata(candidate: Candidate, repairs: list[tuple[str, str]]) -> None:
    """Makes the candidate's id, metadata and labels valid UTF-8 (Arrow refuses the surrogates of undecodable bytes)."""
    fields = []
    for name in ("id", "patient_id", "study_id", "view"):
        value = getattr(candidate, name)
        if isinstance(value, str):
            fixed, repaired = repair_text(value)
            if repaired:
                setattr(candidate, name, fixed)
                fields.append(name)
    labels = []
    for label in candidate.labels:
        fixed, repaired = repair_text(label) if isinstance(label, str) else (label, False)
        labels.append(fixed)
        if repaired and "labels" not in fields:
            fields.append("labels")
    candidate.labels = labels
    if candidate.problem:
        candidate.problem = (candidate.problem[0], repair_text(str(candidate.problem[1]))[0])
    if fields:
        repairs.append(("metadata_cp1252", f"{', '.join(fields)} not UTF-8; decoded as cp1252"))


def _storable_path(path: str, repairs: list[tuple[str, str]]) -> tuple[Any, tuple[str, str] | None]:
    """
    An image path that Arrow can store. A path carrying undecodable bytes is re-decoded (the manifest was written in
    cp1252 but the file is named in UTF-8); when only the raw bytes name an existing file, its content is kept
    instead, since Arrow stores text. Returns ``(image, problem)``.
    """
    fixed, repaired = repair_text(path)
    if not repaired:
        return path, None
    if os.path.lexists(fixed) or not os.path.lexists(path):
        repairs.append(("image_path_cp1252", f"{fixed}: the path was not UTF-8; decoded as cp1252"))
        return fixed, None
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return None, ("missing_file", f"{fixed} ({error})")
    repairs.append(("image_path_embedded", f"{fixed}: the file name is not UTF-8; its bytes are stored instead"))
    return {"bytes": data, "path": None}, None


def finish_candidate(candidate: Candidate, options: PairOptions, ledger: PairLedger) -> dict | None:
    """
    Checks one candidate: returns its record, or ``None`` after counting it in `ledger` as filtered or skipped (in
    strict mode a skip raises :class:`~convirt_hf.data.skips.BadInputError`).
    """
    repairs = list(candidate.repairs)
    _repair_metadata(candidate, repairs)  # first: the id is what every log line names
    row_id = candidate.id
    if options.views is not None and (candidate.view or "").upper() not in options.views:
        ledger.filter("view")
        return None
    if candidate.problem:
        ledger.skip(row_id, *candidate.problem)
        return None

    report = candidate.report
    if callable(report):
        try:
            report = report()
        except ReportProblem as problem:
            ledger.skip(row_id, problem.reason, problem.detail)
            return None
    report, repaired = fix_text(report)
    if repaired:
        repairs.append(("report_cp1252", "report bytes were not UTF-8; decoded as cp1252"))
    text, sentences = "", []
    if report is not None and report.strip():
        text, sentences = prepare_report(report, mode=options.report_mode, min_tokens=options.min_tokens)
    if not text and options.require_text:
        reason = "missing_report" if report is None else report_problem(report, options.report_mode, options.min_tokens)
        ledger.skip(row_id, reason)
        return None

    image = candidate.image
    if isinstance(image, dict) and image.get("bytes") is None and isinstance(image.get("path"), str):
        image = image["path"]  # a path either way: checked (and repaired) as one
    if isinstance(image, os.PathLike):
        image = os.fspath(image)
    if image is None:
        ledger.skip(row_id, "missing_file", "no image reference")
        return None
    if not isinstance(image, _IMAGE_TYPES):
        ledger.skip(row_id, "unsupported_image", f"the image cell holds a {type(image).__name__}: {image!r:.80}")
        return None
    if isinstance(image, dict) and image.get("bytes") is None and not image.get("path"):
        ledger.skip(row_id, "missing_file", "image dict has neither bytes nor a path")
        return None
    if isinstance(image, str):
        image, problem = _storable_path(image, repairs)
        if problem:
            ledger.skip(row_id, *problem)
            return None
    if options.check_images:
        before = len(repairs)
        try:
            decoded = load_image(image, max_pixels=options.max_pixels, row_id=row_id, ledger=_Repairs(repairs))
        except ImageProblem as problem:
            ledger.skip(row_id, problem.reason, problem.detail)
            return None
        if len(repairs) > before:
            # Keep the repaired pixels: decoding the original later would need the same repair (or get it wrong).
            image = {"bytes": encode_png(decoded), "path": None}
    elif isinstance(image, str) and "://" not in image and not os.path.isfile(image):
        ledger.skip(row_id, "missing_file", image)  # cheap to check, expensive to discover mid-training
        return None
    for reason, detail in repairs:
        ledger.repair(row_id, reason, detail)
    return make_record(row_id, image, text, sentences, candidate.labels, candidate.patient_id, candidate.study_id,
                       candidate.view)


# --- worker processes: ledgers, progress and strict-mode errors travel through small files ----------------------


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


def _generate_records(shards: list[int], source: PairSource, options: PairOptions, num_shards: int, strict: bool,
                      ledger_dir: str, ledger_name: str) -> Iterator[dict]:
    """The generator behind ``Dataset.from_generator``; each shard's ledger goes to a file merged by the caller."""
    for shard in shards:
        ledger = PairLedger(source=ledger_name, strict=strict, log=False)  # the caller logs the rows on merging
        progress = ShardProgress(ledger_dir, f"read-{shard:05d}")
        kept, error = 0, None
        try:
            for candidate in source.iter_candidates(shard, num_shards, ledger):
                try:
                    record = finish_candidate(candidate, options, ledger)
                except BadInputError as raised:
                    error = raised
                    raise
                progress.advance()
                if record is not None:
                    kept += 1
                    yield record
        finally:
            progress.close()
            write_ledger_file(ledger, ledger_dir, f"shard-{shard:05d}", kept, error)


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
            recorded = strict_error_from_files(ledger_dir)
            if recorded is not None:
                raise recorded from None
            cause = error.__cause__ or error.__context__
            while cause is not None and not isinstance(cause, BadInputError):
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise cause from None
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


# --- kinds and the entry point ----------------------------------------------------------------------------------


def _has_disk_dataset(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))


def _imagefolder_tables(path: Path, split: str | None) -> tuple[list[Path], bool]:
    """The metadata files of an imagefolder (and whether `split` selected a sub-folder)."""
    root = path
    used_folder = False
    if split is not None and (path / split).is_dir():
        root, used_folder = path / split, True
    tables = sorted(p for p in root.rglob("metadata.*") if p.name in ("metadata.jsonl", "metadata.csv"))
    return tables, used_folder


def _declares_configs(folder: Path) -> bool:
    """Whether the folder's dataset card (README.md) declares ``configs:`` in its YAML header."""
    card = folder / "README.md"
    if not card.is_file():
        return False
    with open(card, encoding="utf-8", errors="replace") as handle:
        head = handle.read(20_000)
    return head.startswith("---") and re.search(r"^configs:", head, flags=re.MULTILINE) is not None


def looks_like_local_path(source: str | os.PathLike) -> bool:
    """
    Whether `source` is meant as a local path rather than a Hub id: it has a file suffix this package knows, starts
    with ``./``, ``../``, ``/`` or ``~``, contains a backslash, or has more than one ``/`` (Hub ids are ``name`` or
    ``org/name``).
    """
    if isinstance(source, os.PathLike):
        return True
    text = str(source)
    return (text.lower().endswith(_LOCAL_SUFFIXES) or text.startswith((".", "/", "~")) or "\\" in text
            or text.count("/") > 1)


def detect_kind(source: str | os.PathLike) -> str:
    """
    Guesses the kind of a source from its path (see :data:`KINDS`).

    Raises:
        ValueError: a local path whose kind cannot be told.
        FileNotFoundError: a path that does not exist (anything that looks like a local path, see
            :func:`looks_like_local_path`, is never taken for a Hub dataset id).
    """
    path = Path(source).expanduser()
    if path.is_file():
        name = path.name.lower()
        if name.startswith("df_chexpert_plus") and name.endswith((".csv", ".csv.gz")):
            return "chexpert-plus"
        if name.startswith("mimic-cxr-2.0.0-metadata"):
            return "mimic-cxr"
        if name.endswith(MANIFEST_SUFFIXES):
            return "manifest"
        raise ValueError(f"{path}: cannot tell what kind of source this file is; pass kind= (one of {KINDS})")
    if path.is_dir():
        names = {child.name for child in path.iterdir()}
        if _has_disk_dataset(path):
            return "disk"
        if any(name.startswith("mimic-cxr-2.0.0-metadata.csv") for name in names):
            return "mimic-cxr"
        if any(name.startswith("df_chexpert_plus") and ".csv" in name for name in names):
            return "chexpert-plus"
        if "ecgen-radiology" in names:
            return "openi"
        if "metadata.jsonl" in names or "metadata.csv" in names or _imagefolder_tables(path, None)[0]:
            return "imagefolder"
        if any(name.lower().endswith(MANIFEST_SUFFIXES + (".arrow",)) for name in names) or _declares_configs(path):
            return "hub"  # a local folder of data files (or a dataset card listing them): load_dataset reads it
        raise ValueError(
            f"{path}: cannot tell what kind of source this folder is (looked for save_to_disk files, "
            f"mimic-cxr-2.0.0-metadata.csv(.gz), df_chexpert_plus_*.csv, ecgen-radiology/, metadata.jsonl/csv and "
            f"data files); pass kind= (one of {KINDS})"
        )
    if looks_like_local_path(source):
        raise FileNotFoundError(f"{source}: no such file or folder (looked for {path.resolve()})")
    if _HUB_ID.match(str(source)):
        return "hub"
    raise FileNotFoundError(f"{source}: no such file or folder (and not a Hub dataset id)")


def _load_disk(path: Path, split: str | None):
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        dataset = dataset[_pick_split(list(dataset), split, str(path))]
    elif split is not None:
        logger.info("%s holds a single dataset; split=%r ignored", path, split)
    return dataset


def check_kind_options(kind: str, options: dict[str, Any]) -> None:
    """Refuses options that `kind` does not use (they would otherwise be ignored without a word)."""
    allowed = KIND_OPTIONS[kind]
    unexpected = sorted(set(options) - set(allowed))
    if unexpected:
        accepted = f"it accepts {', '.join(allowed)}" if allowed else "it takes no such options"
        raise TypeError(f"unexpected argument(s) for a {kind!r} source: {', '.join(unexpected)} ({accepted})")


def build_source(
    source: str | os.PathLike,
    kind: str,
    *,
    split: str | None = None,
    columns: ColumnMap | None = None,
    report_mode: str = "findings_impression",
    **kind_options,
) -> PairSource:
    """
    Builds (and validates) the :class:`PairSource` for `source` of `kind` (not ``"auto"``; see `detect_kind`).

    Raises:
        TypeError: an option that `kind` does not use (see :data:`KIND_OPTIONS`).
        FileNotFoundError: a file or folder that does not exist.
        ValueError: a wrong column name, split or option value.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or 'auto', got {kind!r}")
    check_kind_options(kind, kind_options)
    columns = columns or ColumnMap()
    path = Path(source).expanduser()
    if kind == "mimic-cxr":
        from .mimic_cxr import MimicCxrSource

        return MimicCxrSource(path, split=split, **kind_options)
    if kind == "chexpert-plus":
        from .chexpert_plus import ChexpertPlusSource

        return ChexpertPlusSource(path, split=split, report_mode=report_mode, **kind_options)
    if kind == "openi":
        from .openi import OpenISource

        if split is not None:
            raise ValueError("Open-i has no official splits: split= is not supported for kind='openi'")
        return OpenISource(path, **kind_options)
    if kind == "manifest":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: manifest file not found")
        return TableSource((str(path),), columns, name=path.name.split(".")[0], split=split,
                           split_column="split" if split is not None else None)
    if kind == "imagefolder":
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: imagefolder not found")
        tables, used_folder = _imagefolder_tables(path, split)
        if not tables:
            raise FileNotFoundError(f"{path}: an imagefolder needs metadata.jsonl or metadata.csv")
        header = read_header(tables[0])
        if columns.image == "image" and "image" not in header and "file_name" in header:
            columns = ColumnMap(**{**columns.__dict__, "image": "file_name"})  # the imagefolder convention
        return TableSource(tuple(str(t) for t in tables), columns, name=path.name, split=split,
                           split_column=None if (split is None or used_folder) else "split")
    if kind == "hub":
        if not path.exists() and looks_like_local_path(source):
            raise FileNotFoundError(f"{source}: no such folder (looked for {path.resolve()}); not a Hub id either")
        return HubSource(str(path) if path.exists() else str(source), columns, split=split,
                         name=path.name or str(source), **kind_options)
    # kind == "disk"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: save_to_disk folder not found")
    dataset = _load_disk(path, split)
    return DatasetSource(dataset, columns, name=path.name, base_dir=str(path.resolve()))


def _log_summary(ledger: PairLedger, kept: int) -> None:
    line = ledger.summary(kept=kept)
    (logger.warning if ledger.total_skipped else logger.info)(line)


_GENERIC_DEFAULTS = {"image_column": "image", "text_column": "text", "label_columns": None,
                     "label_names_column": None, "id_column": None, "patient_column": None, "study_column": None,
                     "view_column": None}


def load_pairs(
    source: str | os.PathLike,
    *,
    kind: str = "auto",
    split: str | None = None,
    image_column: str = "image",
    text_column: str | None = "text",
    label_columns: str | Sequence[str] | None = None,
    label_names_column: str | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
    study_column: str | None = None,
    view_column: str | None = None,
    report_mode: str = "findings_impression",
    min_tokens: int = 3,
    views: Sequence[str] | None = None,
    strict: bool = False,
    check_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    writer_batch_size: int = DEFAULT_WRITER_BATCH_SIZE,
    max_logged_per_reason: int | None = DEFAULT_MAX_LOGGED_PER_REASON,
    progress: bool = True,
    **kind_options,
):
    r"""
    Reads image-report pairs from any supported source into a `datasets.Dataset` in the shared record shape
    (:data:`~convirt_hf.data.records.RECORD_FEATURES`).

    Args:
        source: a manifest file, a folder (imagefolder, ``save_to_disk`` output, MIMIC-CXR-JPG, CheXpert-Plus, Open-i,
            or a local folder of data files) or a Hub dataset id. A string that looks like a local path (see
            :func:`looks_like_local_path`) but does not exist raises ``FileNotFoundError``, never a Hub lookup.
        kind: one of :data:`KINDS`, or ``"auto"`` to detect it from the path (:func:`detect_kind`).
        split: the split to read: a Hub or ``save_to_disk`` split, an imagefolder sub-folder or ``split`` column, a
            manifest's ``split`` column, MIMIC-CXR's official split (``train``/``validate``/``test``), CheXpert-Plus's
            ``split`` column (``train``/``valid``).
        image_column, text_column: columns of generic sources (an imagefolder's ``file_name`` is used when there is
            no ``image`` column). ``text_column=None`` reads a label-only data set (no report filter).
        label_columns: binary label columns (one name or several): a row gets the lower-cased column name of each
            column whose cell is positive (``1``, ``1.0``, ``true``, ``yes``); ``0``, ``-1`` (uncertain), ``false``,
            ``no`` and blanks are not. A column that holds anything else in its first rows fails at once (it is
            most likely a column of names: use `label_names_column`); later such cells skip the row as
            ``bad_label``.
        label_names_column: one column holding label names: a list, a JSON list, or names separated by ``|``, ``;``
            or ``,``. ``ClassLabel`` and list-of-``ClassLabel`` columns of Hub and ``save_to_disk`` datasets give
            their class names (``int2str``), in every metadata column.
        id_column, patient_column, study_column, view_column: optional metadata columns (ids default to
            ``<source name>-<row number>``).
        report_mode: ``"findings_impression"`` (the paper: FINDINGS + IMPRESSION) or ``"whole"``.
        min_tokens: pairs whose text has fewer tokens are skipped as ``short_report`` (the paper: 3).
        views: keep only rows with one of these views (case-insensitive, e.g. ``("PA", "AP")``); others are counted
            as filtered, not as errors. Generic sources need `view_column` for it (refused without one, since it
            would drop every row); Open-i has no views.
        strict: raise :class:`~convirt_hf.data.skips.BadInputError` on the first bad row instead of skipping it,
            with or without worker processes.
        check_images: open and fully decode every image now, skipping (and counting) unreadable ones. When False,
            only the existence of image files is checked.
        max_pixels: images with more pixels (width x height, from the header) are skipped as ``too_large``.
        num_proc: worker processes (rows are dealt out between them, so the output comes worker by worker rather
            than in source order; the ledgers are merged). Hub sources always use one.
        cache_dir: where `datasets` writes the Arrow file (its default cache when None).
        writer_batch_size: rows buffered before each write (bounds memory for sources with image bytes).
        max_logged_per_reason: skipped (and repaired) rows logged per reason before the rest are only recorded
            (``ledger.skipped_ids``, ``ledger.rows()``); ``None`` logs them all.
        progress: show a progress bar (rows read, and the total when the source knows it) on stderr (not while
            `datasets` progress bars are disabled); a line with the count and rate is logged at INFO either way.
            `datasets`' own "Generating split" bar is never shown.
        kind_options: options of the kind (see :data:`KIND_OPTIONS`; any other raises ``TypeError``):
            ``reports_root=``, ``labels=``, ``uncertain=`` for MIMIC-CXR; ``image_root=``, ``labels_file=``,
            ``uncertain=`` for CheXpert-Plus; ``image_root=``, ``mesh_labels=`` for Open-i; ``config_name=``,
            ``revision=``, ``data_dir=`` for Hub datasets (``load_dataset``'s ``name``, ``revision``, ``data_dir``).

    Returns:
        `tuple[datasets.Dataset, PairLedger]`: the records and the counts of skipped, repaired and filtered rows, with
        every skipped and repaired id (its summary line is logged).

    Raises:
        ValueError: a wrong column name (the message lists the columns that exist), kind, split or option value;
            raised before any row is read.
        TypeError: an option the kind does not use (e.g. ``image_column=`` for MIMIC-CXR, whose columns are fixed).
        FileNotFoundError: a local path that does not exist.
        BadInputError: in strict mode, the first bad row.

    Example:

    ```python
    >>> dataset, ledger = load_pairs("/data/mimic-cxr-jpg/2.1.0", kind="mimic-cxr", split="train", views=("PA", "AP"),
    ...                              reports_root="/data/mimic-cxr/2.1.0")
    >>> print(ledger.summary(kept=len(dataset)))
    ```
    """
    if report_mode not in REPORT_MODES:
        raise ValueError(f"report_mode must be one of {REPORT_MODES}, got {report_mode!r}")
    if min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    if max_logged_per_reason is not None and max_logged_per_reason < 0:
        raise ValueError(f"max_logged_per_reason must be >= 0 or None, got {max_logged_per_reason}")
    kind = detect_kind(source) if kind == "auto" else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or 'auto', got {kind!r}")
    check_kind_options(kind, kind_options)
    generic = {"image_column": image_column, "text_column": text_column, "label_columns": label_columns,
               "label_names_column": label_names_column, "id_column": id_column, "patient_column": patient_column,
               "study_column": study_column, "view_column": view_column}
    if kind not in GENERIC_KINDS:
        given = [name for name, value in generic.items() if value != _GENERIC_DEFAULTS[name]]
        if given:
            raise TypeError(f"{', '.join(given)}: not used by kind={kind!r}, whose columns are fixed by the "
                            "release's layout; remove them")
    if kind == "openi" and views:
        raise ValueError("Open-i has no per-image view position, so views= would drop every row")
    wanted_views = tuple(str(view).upper() for view in views) if views else None
    name = f"{kind}:{Path(str(source)).name or source}"
    binary = (label_columns,) if isinstance(label_columns, str) else tuple(label_columns or ())
    columns = ColumnMap(image_column, text_column, binary, label_names_column, id_column, patient_column,
                        study_column, view_column)

    if kind == "disk" and Path(source).expanduser().is_dir():
        dataset = _load_disk(Path(source).expanduser(), split)
        if set(RECORD_COLUMNS) <= set(dataset.column_names):
            return _record_dataset_as_is(dataset, wanted_views, PairLedger(source=name, strict=strict))
        _check_views_option(wanted_views, view_column, kind)
        pair_source: PairSource = DatasetSource(dataset, columns, name=Path(source).name,
                                                base_dir=str(Path(source).expanduser().resolve()))
    else:
        if kind in GENERIC_KINDS:
            _check_views_option(wanted_views, view_column, kind)
        pair_source = build_source(source, kind, split=split, columns=columns, report_mode=report_mode,
                                   **kind_options)
    options = PairOptions(report_mode=report_mode, min_tokens=min_tokens, check_images=check_images,
                          max_pixels=max_pixels, views=wanted_views, require_text=text_column is not None)
    ledger = PairLedger(source=name, strict=strict, max_logged_per_reason=max_logged_per_reason)
    num_shards = max(1, num_proc or 1) if pair_source.shardable else 1
    dataset = build_dataset(
        _generate_records,
        {"source": pair_source, "options": options, "num_shards": num_shards, "strict": strict, "ledger_name": name},
        num_shards, ledger, cache_dir=cache_dir, writer_batch_size=writer_batch_size,
        progress=f"reading {name}" + (f" [{split}]" if split else ""), total=pair_source.count_hint(),
        show_progress=progress,
    )
    _log_summary(ledger, len(dataset))
    return dataset, ledger


def _check_views_option(views: tuple[str, ...] | None, view_column: str | None, kind: str) -> None:
    if views and not view_column:
        raise ValueError(
            f"views={list(views)} needs view_column= (--view-column): the column holding each row's view; a "
            f"{kind!r} source has no view otherwise, so every row would be dropped"
        )


def _record_dataset_as_is(dataset, views: tuple[str, ...] | None, ledger: PairLedger):
    """A dataset already in the record shape (preprocessed shards, the synthetic corpus): no row is re-read."""
    if views is not None:
        before = len(dataset)
        dataset = dataset.filter(lambda view: (view or "").upper() in views, input_columns="view",
                                 keep_in_memory=True)  # an in-memory index: never write next to the source files
        ledger.filter("view", before - len(dataset))
    _log_summary(ledger, len(dataset))
    return dataset, ledger


__all__ = [
    "GENERIC_KINDS",
    "KINDS",
    "KIND_OPTIONS",
    "Candidate",
    "ColumnMap",
    "DatasetSource",
    "HubSource",
    "PairLedger",
    "PairOptions",
    "PairSource",
    "ReportProblem",
    "TableSource",
    "build_dataset",
    "binary_value",
    "build_source",
    "check_columns",
    "check_kind_options",
    "decode_bytes",
    "detect_kind",
    "finish_candidate",
    "iter_table_rows",
    "load_pairs",
    "looks_like_local_path",
    "read_header",
    "repair_text",
]
