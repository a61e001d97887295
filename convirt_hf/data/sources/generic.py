"""The generic sources: a manifest, an imagefolder, a Hub dataset (or a local dataset folder), a save_to_disk folder.

Their columns are named by the caller (:class:`ColumnMap`); each row becomes a candidate through one function,
:func:`candidate_from_row`, whatever the container. Image paths are relative to the file (or folder) that lists them.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Candidate, PairLedger, PairSource, in_shard
from .labels import check_binary_columns, class_label_names, decode_class_labels, labels_from_row
from .registry import looks_like_local_path, register_source
from .tables import (
    COLUMN_SCAN_ROWS,
    MANIFEST_SUFFIXES,
    UnreadableRow,
    check_columns,
    iter_table_rows_lenient,
    read_header,
)
from .text import is_missing, to_str

logger = logging.getLogger(__package__)  # the name of the module before the split, which users filter on

HUB_SCAN_ROWS = 100
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


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


def _load_disk(path: Path, split: str | None):
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(str(path))
    if isinstance(dataset, DatasetDict):
        dataset = dataset[_pick_split(list(dataset), split, str(path))]
    elif split is not None:
        logger.info("%s holds a single dataset; split=%r ignored", path, split)
    return dataset


# --- the generic kinds, in the order `KINDS` has always listed them ----------------------------------------------


def _is_manifest(path: Path, names: frozenset) -> bool:
    return path.is_file() and path.name.lower().endswith(MANIFEST_SUFFIXES)


def _is_imagefolder(path: Path, names: frozenset) -> bool:
    return path.is_dir() and ("metadata.jsonl" in names or "metadata.csv" in names
                              or bool(_imagefolder_tables(path, None)[0]))


def _is_dataset_folder(path: Path, names: frozenset) -> bool:
    """A local folder of data files (or a dataset card listing them): ``load_dataset`` reads it."""
    return path.is_dir() and (any(name.lower().endswith(MANIFEST_SUFFIXES + (".arrow",)) for name in names)
                              or _declares_configs(path))


def _is_disk_dataset(path: Path, names: frozenset) -> bool:
    return path.is_dir() and _has_disk_dataset(path)


def _is_hub_id(text: str) -> bool:
    return _HUB_ID.match(text) is not None


@register_source("manifest", generic=True, detect=_is_manifest, fallback=True)
def build_manifest(source, *, split: str | None, columns: ColumnMap, report_mode: str) -> TableSource:
    """A manifest file; ``split=`` keeps the rows of its ``split`` column."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest file not found")
    return TableSource((str(path),), columns, name=path.name.split(".")[0], split=split,
                       split_column="split" if split is not None else None)


@register_source("imagefolder", generic=True, detect=_is_imagefolder, fallback=True, looks_for="metadata.jsonl/csv")
def build_imagefolder(source, *, split: str | None, columns: ColumnMap, report_mode: str) -> TableSource:
    """An imagefolder: its metadata files, from the `split` sub-folder when there is one, else its ``split`` column."""
    path = Path(source).expanduser()
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


@register_source("hub", options=("config_name", "revision", "data_dir"), generic=True, detect=_is_dataset_folder,
                 fallback=True, looks_for="data files", detect_id=_is_hub_id)
def build_hub(source, *, split: str | None, columns: ColumnMap, report_mode: str, **options) -> HubSource:
    """A Hub dataset id or a local dataset folder; a missing local path is never taken for a Hub id."""
    path = Path(source).expanduser()
    if not path.exists() and looks_like_local_path(source):
        raise FileNotFoundError(f"{source}: no such folder (looked for {path.resolve()}); not a Hub id either")
    return HubSource(str(path) if path.exists() else str(source), columns, split=split,
                     name=path.name or str(source), **options)


@register_source("disk", generic=True, detect=_is_disk_dataset, looks_for="save_to_disk files",
                 open_dataset=_load_disk)
def build_disk(source, *, split: str | None, columns: ColumnMap, report_mode: str) -> DatasetSource:
    """A ``save_to_disk`` folder (one `split` of a `DatasetDict`)."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: save_to_disk folder not found")
    return DatasetSource(_load_disk(path, split), columns, name=path.name, base_dir=str(path.resolve()))


__all__ = ["ColumnMap", "DatasetSource", "HUB_SCAN_ROWS", "HubSource", "TableSource", "candidate_from_row"]
