"""Table files (CSV/TSV, JSON lines, JSON arrays, parquet, optionally gzipped) read as rows, streamed, never loaded.

Manifests, imagefolder metadata and the tables of the built-in corpora (MIMIC-CXR's metadata and label tables,
CheXpert-Plus's report CSV) are all read here. Column names are checked against a file's header before any row is
read, so a wrong name fails at once with the list of the columns that exist.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .text import repair_text

logger = logging.getLogger(__package__)  # the name of the module before the split, which users filter on

MANIFEST_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".jsonl", ".jsonl.gz", ".json", ".parquet")
# Columns of JSON lines files and schema-less streams are the union of the keys of this many first rows (a key that
# only later rows have would otherwise fail as "column not found"); the same prefix is used to check label columns.
COLUMN_SCAN_ROWS = 1000


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


__all__ = [
    "COLUMN_SCAN_ROWS",
    "MANIFEST_SUFFIXES",
    "UnreadableRow",
    "check_columns",
    "iter_table_rows",
    "iter_table_rows_lenient",
    "read_header",
]
