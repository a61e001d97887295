"""Resize a raw corpus once into compact shards that training reads with ``datasets.load_from_disk``.

Every image is decoded once (:func:`~convirt_hf.data.images.load_image`: full decode, bad files skipped and
counted), converted to 8-bit grayscale, resized to 256 pixels on its long side (the paper's size; never upscaled)
and stored as PNG bytes in the shared record shape. A 3000 x 2500 MIMIC-CXR JPG of ~1.5 MB becomes a PNG of
~50 kB, so data-loader workers decode small files instead of full-size ones.

    python -m convirt_hf.data.preprocess --source /data/mimic-cxr-jpg/2.1.0 --kind mimic-cxr \\
        --reports-root /data/mimic-cxr/2.1.0 --split train validation=validate test --views PA AP \\
        --output /data/mimic-256

A source without official splits (Open-i, a manifest without a split column) gets patient-level splits with
``--holdout validation=0.1 test=0.1 --seed 0`` (:func:`~convirt_hf.data.holdout.patient_holdout`; the held-out
patient ids are written to ``<split>_patients.txt``).

The result is written under a temporary name next to ``output_dir`` and renamed when complete, so an interrupted
run leaves nothing that looks finished; an existing ``output_dir`` is never replaced without ``overwrite=True``.
``preprocess_summary.json`` in the output records what was kept, skipped, repaired and filtered; ``skipped_rows.jsonl``
and ``repaired_rows.jsonl`` list every skipped and repaired row (id, reason, detail), since the console shows only the
first ``--max-logged-per-reason`` of each reason. Progress is one bar per stage and split (``-q``: none).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .holdout import TRAIN_SPLIT, check_holdout, held_out_patients, parse_holdout, patient_holdout
from .images import DEFAULT_MAX_PIXELS, ImageProblem, encode_png, load_image, resize_long_side
from .records import RECORD_COLUMNS, dataset_report_keys
from .skips import DEFAULT_MAX_LOGGED_PER_REASON, BadInputError, RowRepairs
from .sources import (
    DEFAULT_WRITER_BATCH_SIZE,
    PairLedger,
    build_dataset,
    datasets_progress_bars,
    detect_kind,
    load_pairs,
    looks_like_local_path,
    run_shards,
    source_kind,
    source_kinds,
)

logger = logging.getLogger(__name__)

SUMMARY_FILE = "preprocess_summary.json"
SKIPPED_ROWS_FILE = "skipped_rows.jsonl"
REPAIRED_ROWS_FILE = "repaired_rows.jsonl"
PATIENTS_FILE = "{split}_patients.txt"  # the held-out patient ids of a --holdout split, one per line
# What the counts of the summary count: a row of the output is one image, and a report may have several images.
SUMMARY_UNITS = {
    "images": "image rows, one per image file: 'rows', 'kept', 'skipped', 'repaired', 'filtered' and 'images' "
              "count these",
    "reports": "reports, one per study (study_id, else the row): 'reports' and 'skipped_reports' count these",
}


def _resize_rows(shards: list[int], dataset, num_shards: int, size: int, max_pixels: int, strict: bool,
                 ledger_dir: str, ledger_name: str) -> Iterator[dict]:
    """Decodes, checks, resizes and re-encodes the rows of `dataset` (the generator behind `from_generator`)."""
    yield from run_shards(
        shards, "resize", ledger_dir, ledger_name, strict,
        rows=lambda shard, ledger: dataset if num_shards <= 1 else dataset.shard(num_shards, shard, contiguous=True),
        finish=lambda row, ledger: _resize_row(row, ledger, size, max_pixels),
    )


def _resize_row(row: dict, ledger: PairLedger, size: int, max_pixels: int) -> dict | None:
    repairs = RowRepairs()
    try:
        # draft_size: a JPEG may be decoded at a reduced scale that is still >= size on both sides.
        image = load_image(row["image"], max_pixels=max_pixels, row_id=row["id"], ledger=repairs, draft_size=size)
    except ImageProblem as problem:
        ledger.skip(row["id"], problem.reason, problem.detail)
        return None
    repairs.commit(ledger, row["id"])
    record = {column: row[column] for column in RECORD_COLUMNS}
    record["image"] = {"bytes": encode_png(resize_long_side(image, size)), "path": None}
    return record


def resize_dataset(
    dataset,
    *,
    size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    strict: bool = False,
    ledger: PairLedger | None = None,
    num_proc: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    writer_batch_size: int = DEFAULT_WRITER_BATCH_SIZE,
    progress: bool = True,
    description: str | None = None,
):
    """
    Returns a copy of a record dataset whose images are 8-bit grayscale PNG bytes with the long side at most `size`.

    Args:
        dataset: a `datasets.Dataset` with the record columns (images as paths or bytes; a row without an image is
            skipped as ``missing_file``).
        size: the long side of the stored images (smaller images are kept at their size).
        max_pixels, strict: as for :func:`~convirt_hf.data.sources.load_pairs` (strict mode raises
            :class:`~convirt_hf.data.skips.BadInputError` whatever `num_proc` is).
        ledger: receives the skipped and repaired rows (a new one when None); its ``max_logged_per_reason`` applies.
        num_proc: worker processes.
        cache_dir: where the Arrow file is written.
        writer_batch_size: rows buffered before each write.
        progress: show a progress bar with the number of rows as total (a line with the count and rate is logged at
            INFO either way).
        description: the bar's label (default ``"resizing to <size> px"``).

    Returns:
        `tuple[datasets.Dataset, PairLedger]`.
    """
    from datasets import Image

    missing = [column for column in RECORD_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset lacks record column(s) {missing}; its columns are {dataset.column_names}")
    ledger = ledger if ledger is not None else PairLedger(source="preprocess", strict=strict)
    if isinstance(dataset.features["image"], Image):
        dataset = dataset.cast_column("image", Image(decode=False))  # decode ourselves, with every check
    num_shards = max(1, min(num_proc or 1, len(dataset) or 1))
    resized = build_dataset(
        _resize_rows,
        {"dataset": dataset, "num_shards": num_shards, "size": size, "max_pixels": max_pixels, "strict": strict,
         "ledger_name": ledger.source},
        num_shards, ledger, cache_dir=cache_dir, writer_batch_size=writer_batch_size,
        progress=description or f"resizing to {size} px", total=len(dataset), show_progress=progress,
    )
    return resized, ledger


def split_mapping(split: str | Sequence[str] | dict | None) -> dict[str | None, str | None]:
    """
    Output split name -> source split: ``None`` / ``"train"`` give one unnamed output (a `Dataset`); a list or dict
    gives named outputs (a `DatasetDict`), with ``"out=source"`` items renaming a split.
    """
    if split is None or isinstance(split, str):
        return {None: split}
    mapping: dict[str | None, str | None]
    if isinstance(split, dict):
        mapping = {str(name): source for name, source in split.items()}
    else:
        mapping = {}
        for item in split:
            name, _, source = str(item).partition("=")
            mapping[name.strip()] = (source or name).strip()
    if not mapping or any(not name for name in mapping):
        raise ValueError(f"split names must not be empty: {split!r}")
    return mapping


def _describe_source(dataset_or_source: Any) -> str:
    if isinstance(dataset_or_source, (str, os.PathLike)):
        return str(dataset_or_source)
    return f"<{type(dataset_or_source).__name__}>"


def preprocess_corpus(
    dataset_or_source: Any,
    output_dir: str | os.PathLike,
    *,
    size: int = 256,
    max_shard_size: str | int = "500MB",
    num_proc: int | None = None,
    overwrite: bool = False,
    writer_batch_size: int = DEFAULT_WRITER_BATCH_SIZE,
    progress: bool = True,
    max_logged_per_reason: int | None = DEFAULT_MAX_LOGGED_PER_REASON,
    holdout: dict[str, float] | None = None,
    seed: int = 0,
    **load_pairs_kwargs,
) -> Path:
    r"""
    Decodes every image of a corpus once, resizes it to `size` on its long side and writes the records, as PNG
    bytes, with ``save_to_disk`` into `output_dir`.

    Args:
        dataset_or_source: a `datasets.Dataset` / `DatasetDict` in the record shape, or anything
            :func:`~convirt_hf.data.sources.load_pairs` reads (a path or Hub id; pass its options as keyword
            arguments). ``split=`` may name several splits: a list (``["train", "validate"]``; an item
            ``"validation=validate"`` renames the source's ``validate`` split to ``validation``) or a dict
            ``{output name: source split}``; the output is then a `DatasetDict` with one split each.
        output_dir: the folder to create. Training reads it with ``datasets.load_from_disk``.
        size: the long side of the stored images, in pixels (the paper: 256). Smaller images are not upscaled.
        max_shard_size: the largest Arrow file of the output (``save_to_disk``'s option).
        num_proc: worker processes for reading and resizing.
        overwrite: replace an existing `output_dir` (only once the new output is complete).
        writer_batch_size: rows buffered before each write: bounds memory.
        progress: one progress bar per stage and split (reading, resizing; `datasets`' own bar while saving) on
            stderr. False shows none; the INFO log lines with counts and rates remain.
        max_logged_per_reason: skipped and repaired rows logged per reason before the rest are only recorded;
            ``None`` logs all. Every one of them is in ``skipped_rows.jsonl`` / ``repaired_rows.jsonl``.
        holdout, seed: patient-level splits of the kept rows, ``{name: fraction of the rows}`` (e.g.
            ``{"validation": 0.1}``; the rest is ``train``), assigned by
            :func:`~convirt_hf.data.holdout.patient_holdout` for `seed`; ``<name>_patients.txt`` lists each one's
            patient ids. Not with `split` (official splits) nor a `DatasetDict` input.
        load_pairs_kwargs: `load_pairs` options (``kind``, ``views``, ``strict``, ``max_pixels``, column names,
            kind options, ...). ``check_images`` is not needed: every image is decoded here anyway.

    Returns:
        `Path`: `output_dir`, holding the dataset files, ``preprocess_summary.json`` (counts, the summary line, the
        options), ``skipped_rows.jsonl`` and ``repaired_rows.jsonl`` (one ``{"id", "reason", "detail"}`` line per
        skipped or repaired row).

    Raises:
        FileExistsError: `output_dir` exists and `overwrite` is False.
        BadInputError: in strict mode, the first bad row (nothing is written), whatever `num_proc` is.
    """
    output_dir = Path(output_dir)
    holdout = _check_corpus_arguments(size, output_dir, overwrite, holdout, dataset_or_source, load_pairs_kwargs)
    strict = bool(load_pairs_kwargs.get("strict", False))
    max_pixels = int(load_pairs_kwargs.get("max_pixels", DEFAULT_MAX_PIXELS))
    load_pairs_kwargs.pop("check_images", None)
    started = time.perf_counter()
    work, cache, backup = _staging_paths(output_dir)
    try:
        with datasets_progress_bars(progress):
            inputs, ledger, kind = _read_inputs(
                dataset_or_source, load_pairs_kwargs, strict=strict, num_proc=num_proc, cache=cache,
                writer_batch_size=writer_batch_size, progress=progress, max_logged_per_reason=max_logged_per_reason)
            outputs = _resize_inputs(inputs, ledger, size=size, max_pixels=max_pixels, strict=strict,
                                     num_proc=num_proc, cache=cache, writer_batch_size=writer_batch_size,
                                     progress=progress)
            # of the kept rows: the fractions are of what training will see
            outputs, held_out = _hold_out(outputs, holdout, seed) if holdout else (outputs, None)
            _save(outputs, work, max_shard_size)
        summary = _write_summary(work, ledger, outputs, source=_describe_source(dataset_or_source), kind=kind,
                                 size=size, options=load_pairs_kwargs, started=started, holdout=held_out)
        _publish(work, output_dir, backup)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    _log_outcome(ledger, summary, output_dir)
    return output_dir


def _check_corpus_arguments(size: int, output_dir: Path, overwrite: bool, holdout: dict | None,
                            dataset_or_source: Any, load_pairs_kwargs: dict) -> dict[str, float] | None:
    """Refuses, before any work, what `preprocess_corpus` could not do; returns the checked `holdout` fractions."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    return None if holdout is None else _check_holdout_input(holdout, dataset_or_source, load_pairs_kwargs)


def _save(outputs: dict, work: Path, max_shard_size: str | int) -> None:
    """Saves one `Dataset` (a single unnamed output) or a `DatasetDict` into `work`."""
    from datasets import DatasetDict

    # written under a temporary name: an interrupted run leaves nothing that looks finished
    result = outputs[None] if list(outputs) == [None] else DatasetDict(outputs)
    result.save_to_disk(str(work), max_shard_size=max_shard_size)


def _check_holdout_input(holdout: dict, dataset_or_source: Any, load_pairs_kwargs: dict) -> dict[str, float]:
    """The checked `holdout` fractions; refused, before any work, with official splits or a `DatasetDict`."""
    from datasets import DatasetDict

    holdout = check_holdout(holdout, flag="holdout")
    if load_pairs_kwargs.get("split") is not None:
        raise ValueError("holdout= cannot be combined with split=: split= reads a source's official splits, holdout= "
                         "makes patient-level splits of all its rows; use one of them")
    if isinstance(dataset_or_source, DatasetDict):
        raise TypeError("holdout= needs one Dataset (or a source), not a DatasetDict, which already has splits")
    return holdout


def _hold_out(outputs: dict, holdout: dict[str, float], seed: int) -> tuple[dict, dict]:
    """
    The one output split as ``train`` and the `holdout` splits (:func:`patient_holdout` on its patient ids), and
    what the summary says about them.
    """
    (dataset,) = outputs.values()
    patient_ids = dataset["patient_id"] if len(dataset) else []
    splits = patient_holdout(patient_ids, holdout, seed)
    names = [TRAIN_SPLIT, *holdout]
    rows = {name: [index for index, split in enumerate(splits) if split == name] for name in names}
    patients = held_out_patients(patient_ids, splits)
    held_out = {
        "seed": seed,
        "fractions": dict(holdout),
        "balance": "patients in a seeded order, laid end to end by rows; each split takes the patients whose middle "
                   "falls in its stretch of fraction x rows: within one patient's rows of the request",
        "rows": {name: len(rows[name]) for name in names},
        "patients": {name: len(patients.get(name, [])) for name in holdout},
        "rows_without_patient_id": sum(patient in (None, "") for patient in patient_ids),
        "patient_files": {name: PATIENTS_FILE.format(split=name) for name in holdout},
        "patient_ids": {name: patients.get(name, []) for name in holdout},  # written to the files, not the summary
    }
    return {name: dataset.select(rows[name]) for name in names}, held_out


def _staging_paths(output_dir: Path) -> tuple[Path, Path, Path]:
    """
    Beside `output_dir`, under names of this run: the output being written, the Arrow cache, and where an output it
    replaces waits until the new one is in place. Leftovers of an interrupted run are named, never deleted.
    """
    parent = output_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    stale = sorted(parent.glob(f".{output_dir.name}.incomplete-*")) + sorted(parent.glob(f".{output_dir.name}.cache-*"))
    if stale:
        logger.warning("leftovers of an interrupted run (safe to delete): %s", ", ".join(map(str, stale)))
    return (parent / f".{output_dir.name}.incomplete-{token}", parent / f".{output_dir.name}.cache-{token}",
            parent / f".{output_dir.name}.replaced-{token}")


def _read_inputs(dataset_or_source: Any, load_pairs_kwargs: dict, *, strict: bool, num_proc: int | None, cache: Path,
                 writer_batch_size: int, progress: bool, max_logged_per_reason: int | None):
    """
    The inputs, one per output split, the ledger of reading them and the source's kind (None for a `Dataset`).
    ``split`` is taken out of `load_pairs_kwargs`: the rest are the options the summary lists.
    """
    from datasets import Dataset, DatasetDict

    if isinstance(dataset_or_source, (Dataset, DatasetDict)):
        unexpected = set(load_pairs_kwargs) - {"strict", "max_pixels"}
        if unexpected:
            raise TypeError(f"options {sorted(unexpected)} apply to a source path, not to a Dataset")
        is_dict = isinstance(dataset_or_source, DatasetDict)
        inputs = dict(dataset_or_source) if is_dict else {None: dataset_or_source}
        ledger = PairLedger(source="preprocess", strict=strict, max_logged_per_reason=max_logged_per_reason)
        for dataset in inputs.values():  # records already: every row was read, none checked yet
            ledger.images_read += len(dataset)
            ledger.reports_read.update(dataset_report_keys(dataset))
        return inputs, ledger, None
    splits = split_mapping(load_pairs_kwargs.pop("split", None))
    inputs = {}
    merged: PairLedger | None = None
    for name, source_split in splits.items():
        dataset, split_ledger = load_pairs(dataset_or_source, split=source_split, check_images=False,
                                           num_proc=num_proc, cache_dir=cache, writer_batch_size=writer_batch_size,
                                           progress=progress, max_logged_per_reason=max_logged_per_reason,
                                           **load_pairs_kwargs)
        if merged is None:
            merged = PairLedger(source=split_ledger.source, strict=strict, max_logged_per_reason=max_logged_per_reason)
        merged.merge(split_ledger)
        inputs[name] = dataset
    return inputs, merged, load_pairs_kwargs.get("kind", "auto")


def _resize_inputs(inputs: dict, ledger: PairLedger, *, size: int, max_pixels: int, strict: bool,
                   num_proc: int | None, cache: Path, writer_batch_size: int, progress: bool) -> dict:
    """Each input decoded, checked, resized and re-encoded (:func:`resize_dataset`), by output split."""
    outputs = {}
    for name, dataset in inputs.items():
        label = f"resizing {name!r} to {size} px" if name else f"resizing to {size} px"
        outputs[name], _ = resize_dataset(dataset, size=size, max_pixels=max_pixels, strict=strict, ledger=ledger,
                                          num_proc=num_proc, cache_dir=cache, writer_batch_size=writer_batch_size,
                                          progress=progress, description=label)
    return outputs


def _write_summary(work: Path, ledger: PairLedger, outputs: dict, *, source: str, kind: str | None, size: int,
                   options: dict, started: float, holdout: dict | None = None) -> dict:
    """
    Writes the skipped and repaired rows, the held-out patients (``<split>_patients.txt``) and
    ``preprocess_summary.json`` into `work`; returns the summary.
    """
    ledger.write_rows(work / SKIPPED_ROWS_FILE, "skipped")
    ledger.write_rows(work / REPAIRED_ROWS_FILE, "repaired")
    if holdout is not None:
        holdout = dict(holdout)
        for name, patients in holdout.pop("patient_ids").items():
            (work / holdout["patient_files"][name]).write_text("".join(f"{patient}\n" for patient in patients))
    rows = {str(name or "all"): len(dataset) for name, dataset in outputs.items()}
    kept = sum(rows.values())
    kept_reports = len(set().union(*(dataset_report_keys(dataset) for dataset in outputs.values())))
    summary = {
        "source": source,
        "kind": kind,
        "size": size,
        "splits": [name for name in outputs if name is not None],
        "units": SUMMARY_UNITS,
        "images": {"read": ledger.images_read, "kept": kept, "skipped": sum(ledger.skipped_images.values()),
                   "filtered": sum(ledger.filtered.values())},
        "reports": {"read": len(ledger.reports_read), "kept": kept_reports,
                    "without_images": sum(ledger.unpaired.values())},
        "rows": rows,
        "kept": kept,
        "skipped": ledger.skipped_images,  # images, per reason
        "skipped_reports": ledger.skipped_report_counts,  # reports, per reason whose unit is the report
        "repaired": dict(ledger.repaired),
        "filtered": dict(ledger.filtered),  # images left out on request (views, split) only
        "skipped_rows_file": SKIPPED_ROWS_FILE,  # every skipped id, with its reason and detail
        "repaired_rows_file": REPAIRED_ROWS_FILE,
        "holdout": holdout,
        "summary": ledger.summary(kept=kept, kept_reports=kept_reports),
        "options": {key: (list(value) if isinstance(value, tuple) else value)
                    for key, value in options.items()
                    if isinstance(value, (str, int, float, bool, tuple, list, type(None)))},
        "seconds": round(time.perf_counter() - started, 1),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (work / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _publish(work: Path, output_dir: Path, backup: Path) -> None:
    """Renames `work` into place; an output it replaces (with overwrite) goes only once the new one is complete."""
    replaced = output_dir.exists()
    if replaced:
        os.replace(output_dir, backup)
    os.replace(work, output_dir)
    if replaced:
        shutil.rmtree(backup, ignore_errors=True)


def _log_outcome(ledger: PairLedger, summary: dict, output_dir: Path) -> None:
    (logger.warning if ledger.total_skipped else logger.info)(summary["summary"])
    if ledger.total_skipped or ledger.total_repaired:
        (logger.warning if ledger.total_skipped else logger.info)(
            "every skipped row is listed in %s and every repaired row in %s (id, reason, detail)",
            output_dir / SKIPPED_ROWS_FILE, output_dir / REPAIRED_ROWS_FILE)
    logger.info("preprocessed corpus written to %s in %.1f s", output_dir, summary["seconds"])


def _log_cap(text: str) -> int | None:
    value = int(text)
    return None if value < 0 else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convirt_hf.data.preprocess",
        description="Resize a raw image-report corpus once (8-bit grayscale PNG, long side --size) into shards that "
                    "training reads with datasets.load_from_disk. Every skipped or repaired row is listed in "
                    f"{SKIPPED_ROWS_FILE} / {REPAIRED_ROWS_FILE} in the output.",
    )
    parser.add_argument("--source", required=True, help="manifest, folder or Hub dataset id")
    parser.add_argument("--kind", default="auto", choices=("auto",) + source_kinds())
    parser.add_argument("--output", required=True, help="output folder (must not exist unless --overwrite)")
    parser.add_argument("--size", type=int, default=256, help="long side of the stored images (default 256)")
    parser.add_argument("--split", nargs="+", action="append", default=None,
                        help="split(s) to read, each NAME or OUTPUT=SOURCE (e.g. validation=validate); the output is "
                             "then a DatasetDict with these split names")
    parser.add_argument("--holdout", nargs="+", action="append", default=None, metavar="NAME=FRACTION",
                        help="patient-level held-out splits of any source, e.g. validation=0.1 test=0.1: each about "
                             "that fraction of the kept rows, no patient in two splits, the rest is train; the "
                             "held-out patient ids go to <NAME>_patients.txt (not with --split)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the --holdout assignment (default 0)")
    parser.add_argument("--views", nargs="+", default=None,
                        help="keep these views only, e.g. PA AP (generic sources need --view-column)")
    parser.add_argument("--report-mode", default="findings_impression", choices=("findings_impression", "whole"))
    parser.add_argument("--min-tokens", type=int, default=3)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--num-proc", type=int, default=None)
    parser.add_argument("--max-shard-size", default="500MB")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--max-logged-per-reason", type=_log_cap, default=DEFAULT_MAX_LOGGED_PER_REASON,
                        metavar="N", help="skipped/repaired rows logged per reason before the rest are only listed "
                                          f"in {SKIPPED_ROWS_FILE} (default {DEFAULT_MAX_LOGGED_PER_REASON}; -1: all)")
    generic = parser.add_argument_group("generic sources (manifest, imagefolder, hub, disk)")
    generic.add_argument("--image-column", help="default: image (file_name in an imagefolder)")
    generic.add_argument("--text-column", help="default: text")
    generic.add_argument("--label-columns", nargs="+", default=None, metavar="COLUMN",
                         help="binary label columns (1/0, true/false, yes/no, -1 or blank): each positive column "
                              "gives its lower-cased name as a label; one column works too")
    generic.add_argument("--label-names-column", metavar="COLUMN",
                         help="one column holding label names (a list, JSON list, or names separated by | ; or ,)")
    generic.add_argument("--id-column")
    generic.add_argument("--patient-column")
    generic.add_argument("--study-column")
    generic.add_argument("--view-column")
    hub = parser.add_argument_group("Hub datasets (--kind hub)")
    hub.add_argument("--config-name", help="the configuration of a dataset with several")
    hub.add_argument("--revision", help="branch, tag or commit")
    hub.add_argument("--data-dir", help="sub-folder of the dataset to read")
    corpora = parser.add_argument_group("built-in corpora")
    corpora.add_argument("--reports-root", help="MIMIC-CXR: folder of the report text files")
    corpora.add_argument("--image-root", help="CheXpert-Plus / Open-i: folder of the images")
    corpora.add_argument("--labels", help="MIMIC-CXR: chexpert (default), negbio or none")
    corpora.add_argument("--labels-file", help="CheXpert-Plus: CheXbert labels (JSON lines)")
    corpora.add_argument("--uncertain", choices=("negative", "positive"), help="MIMIC-CXR / CheXpert-Plus: -1 labels")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars; log warnings only")
    return parser


# The options of the built-in corpora and Hub datasets (see `register_source`), by command-line flag.
KIND_OPTION_FLAGS = {"config_name": "--config-name", "revision": "--revision", "data_dir": "--data-dir",
                     "reports_root": "--reports-root", "image_root": "--image-root", "labels": "--labels",
                     "labels_file": "--labels-file", "uncertain": "--uncertain"}
LOCAL_PATH_OPTIONS = {"reports_root": ("--reports-root", "folder"), "image_root": ("--image-root", "folder"),
                      "labels_file": ("--labels-file", "file")}


def _positive(flag: str, value: int | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 if allow_zero else value <= 0):
        raise ValueError(f"{flag} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def check_arguments(args: argparse.Namespace) -> None:
    """
    Refuses, naming the flag, the values that preprocessing would refuse only once under way (or would ignore
    without a word). Nothing is read but the source's folder listing; column names are checked by `load_pairs`
    against the source's header, before any row is read.
    """
    from datasets.utils.py_utils import convert_file_size_to_int

    from .sources.mimic_cxr import LABEL_TABLES

    _positive("--size", args.size)
    _positive("--max-pixels", args.max_pixels)
    _positive("--num-proc", args.num_proc)
    _positive("--min-tokens", args.min_tokens, allow_zero=True)
    try:
        shard_size = convert_file_size_to_int(args.max_shard_size)
    except (ValueError, TypeError):
        shard_size = None
    if not shard_size or shard_size <= 0:
        raise ValueError(f"--max-shard-size {args.max_shard_size!r} is not a size: expected a number with a unit, "
                         "e.g. 500MB or 2GB")
    names = []
    for item in (item for group in args.split or () for item in group):
        name, _, source = item.partition("=")
        if not name.strip() or not (source or name).strip():
            raise ValueError(f"--split {item!r}: expected NAME or OUTPUT=SOURCE with non-empty names")
        names.append(name.strip())
    if len(set(names)) != len(names):
        raise ValueError(f"--split names an output split twice: {names}")
    _check_holdout_arguments(args)
    if args.views is not None and not all(view.strip() for view in args.views):
        raise ValueError(f"--views must be view names such as PA AP, got {args.views}")
    if args.labels is not None and args.labels.lower() not in ("none", *LABEL_TABLES):
        raise ValueError(f"--labels must be one of {sorted(LABEL_TABLES)} or none, got {args.labels!r}")

    output = Path(args.output).expanduser()
    existing = next((path for path in (output, *output.parents) if path.exists()), None)
    if existing == output and not output.is_dir():
        raise ValueError(f"--output {args.output} is a file: expected a folder to create")
    if existing is not None and not existing.is_dir():
        raise ValueError(f"--output {args.output}: {existing} is a file, so no folder can be created there")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"--output {args.output} already exists; pass --overwrite to replace it")

    # A missing local path is never taken for a Hub id (see looks_like_local_path).
    if not Path(args.source).expanduser().exists() and (args.kind not in ("auto", "hub")
                                                        or looks_like_local_path(args.source)):
        raise FileNotFoundError(f"--source {args.source}: no such file or folder")
    kind = args.kind
    if kind == "auto":
        try:
            kind = detect_kind(args.source)
        except (ValueError, FileNotFoundError) as error:
            raise type(error)(f"--source: {error}") from error
    for name, flag in KIND_OPTION_FLAGS.items():
        if getattr(args, name) is not None and name not in source_kind(kind).options:
            accepting = [other for other in source_kinds() if name in source_kind(other).options]
            raise ValueError(f"{flag} only applies to --kind {' or '.join(accepting)} (this source is {kind!r})")
    for name, (flag, what) in LOCAL_PATH_OPTIONS.items():
        value = getattr(args, name)
        path = Path(value).expanduser() if value is not None else None
        if path is not None and not (path.is_dir() if what == "folder" else path.is_file()):
            raise FileNotFoundError(f"{flag} {value}: no such {what}")
    if kind == "openi" and args.views:
        raise ValueError("--views: Open-i has no per-image view position, so every row would be dropped")


def holdout_argument(args: argparse.Namespace) -> dict[str, float] | None:
    """The ``--holdout`` fractions (checked, see :func:`~convirt_hf.data.holdout.parse_holdout`), or None."""
    if not args.holdout:
        return None
    return parse_holdout([item for group in args.holdout for item in group])


def _check_holdout_arguments(args: argparse.Namespace) -> None:
    holdout = holdout_argument(args)
    if holdout and args.split:
        raise ValueError("--holdout cannot be combined with --split: --split reads a source's official splits, "
                         "--holdout makes patient-level splits of all its rows; use one of them")
    if args.seed is not None and not holdout:
        raise ValueError("--seed only applies with --holdout (it seeds the patient assignment)")
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")


def flags_named_in(message: str, parser: argparse.ArgumentParser) -> list[str]:
    """
    The flags of the `load_pairs` keyword arguments that `message` names as ``name=`` or ``name:``
    (``text_column='report'``), when it does not name the flag itself: the library speaks of its parameters, while
    the user typed flags.
    """
    flags = []
    for action in parser._actions:
        flag = max(action.option_strings, key=len, default=None)
        if flag and flag not in message and re.search(rf"\b{re.escape(action.dest)}[=:]", message):
            flags.append(flag)
    return flags


def report_error(error: Exception, parser: argparse.ArgumentParser) -> int:
    """Prints a refusal as one line on stderr, with the flags it is about, and returns the exit status 2."""
    flags = flags_named_in(str(error), parser)
    print(f"error: {error}" + (f" (on the command line: {', '.join(flags)})" if flags else ""), file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        check_arguments(args)
    except (FileExistsError, FileNotFoundError, ValueError) as error:
        return report_error(error, parser)
    kwargs: dict[str, Any] = {
        "kind": args.kind, "views": args.views, "report_mode": args.report_mode, "min_tokens": args.min_tokens,
        "strict": args.strict, "max_pixels": args.max_pixels,
    }
    if args.split:
        kwargs["split"] = [item for group in args.split for item in group]
    if args.holdout:
        kwargs.update(holdout=holdout_argument(args), seed=args.seed or 0)
    # Only what was given, so that load_pairs can tell an option set on purpose from its default.
    given = {"image_column": args.image_column, "text_column": args.text_column, "label_columns": args.label_columns,
             "label_names_column": args.label_names_column, "id_column": args.id_column,
             "patient_column": args.patient_column, "study_column": args.study_column,
             "view_column": args.view_column, "config_name": args.config_name, "revision": args.revision,
             "data_dir": args.data_dir, "reports_root": args.reports_root, "image_root": args.image_root,
             "labels_file": args.labels_file, "uncertain": args.uncertain}
    kwargs.update({key: value for key, value in given.items() if value is not None})
    if args.labels is not None:
        kwargs["labels"] = None if args.labels.lower() == "none" else args.labels
    try:
        output = preprocess_corpus(args.source, args.output, size=args.size, max_shard_size=args.max_shard_size,
                                   num_proc=args.num_proc, overwrite=args.overwrite, progress=not args.quiet,
                                   max_logged_per_reason=args.max_logged_per_reason, **kwargs)
    except BadInputError as error:
        print(f"error: bad row in strict mode: {error}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError, TypeError) as error:
        return report_error(error, parser)
    summary = json.loads((output / SUMMARY_FILE).read_text())
    print(summary["summary"])
    if summary["skipped"] or summary["skipped_reports"] or summary["repaired"]:
        print(f"skipped and repaired rows, with ids: {output / SKIPPED_ROWS_FILE}, {output / REPAIRED_ROWS_FILE}")
    if summary["holdout"]:
        rows, files = summary["holdout"]["rows"], summary["holdout"]["patient_files"]
        print("patient-level splits (rows): " + ", ".join(f"{name}={count}" for name, count in rows.items())
              + "; held-out patients: " + ", ".join(str(output / name) for name in files.values()))
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
