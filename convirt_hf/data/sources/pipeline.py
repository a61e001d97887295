"""The read pipeline: :func:`load_pairs` looks the kind up in the registry, builds its reader, and writes the records.

Records stream into an Arrow file through ``Dataset.from_generator`` (memory stays bounded whatever the corpus size),
each candidate going through :func:`~convirt_hf.data.sources.checks.finish_candidate`; with ``num_proc`` the rows are
dealt out to worker processes (:mod:`~convirt_hf.data.sources.workers`), whose ledgers are merged into the one
returned, so counts are exact.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..images import DEFAULT_MAX_PIXELS
from ..records import RECORD_COLUMNS, dataset_report_keys
from ..skips import DEFAULT_MAX_LOGGED_PER_REASON
from .base import PairLedger, PairOptions, PairSource
from .checks import finish_candidate
from .generic import ColumnMap, DatasetSource
from .registry import SourceKind, detect_kind, source_kind
from .workers import DEFAULT_WRITER_BATCH_SIZE, build_dataset, run_shards

logger = logging.getLogger(__package__)  # the name of the module before the split, which users filter on

REPORT_MODES = ("findings_impression", "whole")


def check_kind_options(kind: str, options: dict[str, Any]) -> None:
    """Refuses options that `kind` does not use (they would otherwise be ignored without a word)."""
    allowed = source_kind(kind).options
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
    Builds (and validates) the :class:`~convirt_hf.data.sources.base.PairSource` for `source` of `kind` (a
    registered kind, not ``"auto"``; see :func:`~convirt_hf.data.sources.registry.detect_kind`).

    Raises:
        TypeError: an option that `kind` does not use (see :func:`~convirt_hf.data.sources.registry.register_source`).
        FileNotFoundError: a file or folder that does not exist.
        ValueError: an unknown kind, a wrong column name, split or option value.
    """
    entry = source_kind(kind)
    check_kind_options(kind, kind_options)
    return entry.build(source, split=split, columns=columns or ColumnMap(), report_mode=report_mode, **kind_options)


def _log_summary(ledger: PairLedger, dataset) -> None:
    kept_reports = len(dataset_report_keys(dataset)) if ledger.reports_read else None
    line = ledger.summary(kept=len(dataset), kept_reports=kept_reports)
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
        kind: a registered kind (:data:`KINDS`, and any added since: :func:`source_kinds`), or ``"auto"`` to
            detect it from the path (:func:`detect_kind`).
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
    _check_load_arguments(report_mode, min_tokens, max_logged_per_reason)
    kind = detect_kind(source) if kind == "auto" else kind
    entry = source_kind(kind)
    check_kind_options(kind, kind_options)
    generic = {"image_column": image_column, "text_column": text_column, "label_columns": label_columns,
               "label_names_column": label_names_column, "id_column": id_column, "patient_column": patient_column,
               "study_column": study_column, "view_column": view_column}
    _check_fixed_columns(entry, generic)
    if entry.no_views is not None and views:
        raise ValueError(entry.no_views)
    wanted_views = tuple(str(view).upper() for view in views) if views else None
    name = f"{kind}:{Path(str(source)).name or source}"
    binary = (label_columns,) if isinstance(label_columns, str) else tuple(label_columns or ())
    columns = ColumnMap(image_column, text_column, binary, label_names_column, id_column, patient_column,
                        study_column, view_column)

    dataset = _open_dataset(entry, source, split)  # opened once: it may already hold the records
    if dataset is not None and set(RECORD_COLUMNS) <= set(dataset.column_names):
        return _record_dataset_as_is(dataset, wanted_views, PairLedger(source=name, strict=strict))
    if dataset is not None or entry.generic:
        _check_views_option(wanted_views, view_column, kind)
    if dataset is not None:
        pair_source: PairSource = DatasetSource(dataset, columns, name=Path(source).name,
                                                base_dir=str(Path(source).expanduser().resolve()))
    else:
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
    _log_summary(ledger, dataset)
    return dataset, ledger


def _check_load_arguments(report_mode: str, min_tokens: int, max_logged_per_reason: int | None) -> None:
    if report_mode not in REPORT_MODES:
        raise ValueError(f"report_mode must be one of {REPORT_MODES}, got {report_mode!r}")
    if min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    if max_logged_per_reason is not None and max_logged_per_reason < 0:
        raise ValueError(f"max_logged_per_reason must be >= 0 or None, got {max_logged_per_reason}")


def _check_fixed_columns(entry: SourceKind, generic: dict[str, Any]) -> None:
    """A kind whose columns are fixed by its layout refuses the generic column names rather than ignoring them."""
    if entry.generic:
        return
    given = [name for name, value in generic.items() if value != _GENERIC_DEFAULTS[name]]
    if given:
        raise TypeError(f"{', '.join(given)}: not used by kind={entry.name!r}, whose columns are fixed by the "
                        "release's layout; remove them")


def _open_dataset(entry: SourceKind, source: str | os.PathLike, split: str | None):
    """The `datasets.Dataset` of a kind stored as one, when `source` is such a folder; else None."""
    path = Path(source).expanduser()
    if entry.open_dataset is None or not path.is_dir():
        return None
    return entry.open_dataset(path, split)


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
    ledger.images_read += len(dataset)  # records already: every row left was read, and is kept
    ledger.reports_read.update(dataset_report_keys(dataset))
    _log_summary(ledger, dataset)
    return dataset, ledger


def _generate_records(shards: list[int], source: PairSource, options: PairOptions, num_shards: int, strict: bool,
                      ledger_dir: str, ledger_name: str) -> Iterator[dict]:
    """The generator behind ``Dataset.from_generator``; each shard's ledger goes to a file merged by the caller."""
    yield from run_shards(shards, "read", ledger_dir, ledger_name, strict,
                          rows=lambda shard, ledger: source.iter_candidates(shard, num_shards, ledger),
                          finish=lambda candidate, ledger: finish_candidate(candidate, options, ledger))


__all__ = ["REPORT_MODES", "build_source", "check_kind_options", "load_pairs"]
