"""Generating the corpus: every row a pure function of (config, split, row), written once and cached by config.

:func:`generate_row` draws one row; :func:`generate_synthetic_corpus` writes a whole corpus (in parallel, with forked
workers, identically whatever their number); :func:`ensure_synthetic_corpus` reuses a corpus cached under a hash of
its configuration; :func:`corpus_fingerprint` hashes a corpus's content, to tell two corpora apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import encode_png as encode_png_image
from ..records import make_record
from ..reports import prepare_report
from .anatomy import Anatomy
from .config import RETRIEVAL_SPLITS, SPLITS, SYNTHETIC_FEATURES, SyntheticCorpusConfig, primary_category
from .render import render_radiograph
from .vocabulary import DEVICES, TEXT_QUERIES, sample_findings
from .writing import write_report

logger = logging.getLogger(__package__)  # the name of the module before the split, which users filter on


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit grayscale image (mode "L")."""
    # level 1: twice as fast as the default for about 15% more bytes on these noisy films
    return encode_png_image(Image.fromarray(array, mode="L"), compress_level=1)


def generate_row(config: SyntheticCorpusConfig, split: str, index: int) -> dict:
    """
    Row `index` of `split`: the shared record shape (`convirt_hf.data.records`) plus ``category``, the scheduled
    primary category (`SYNTHETIC_COLUMNS`). ``labels`` has the primary category first, then a second finding if the
    row has one; retrieval rows never have one.

    A pure function of (config, split, index): the patient's anatomy comes from a generator seeded with
    (seed, split, patient) and everything else from one seeded with (seed, split, index).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    split_code = SPLITS.index(split)
    retrieval = split in RETRIEVAL_SPLITS
    patient = index if retrieval else index // config.studies_per_patient
    patient_rng = np.random.default_rng([config.seed, split_code, 0, patient])
    rng = np.random.default_rng([config.seed, split_code, 1, index])
    primary = primary_category(config, split, index)
    findings = sample_findings(primary, rng, 0.0 if retrieval else config.second_finding_probability,
                               config.category_weights)
    devices: tuple[str, ...] = ()
    if rng.random() < config.device_probability:
        devices = (DEVICES[int(rng.integers(len(DEVICES)))],) if rng.random() < 0.7 else DEVICES
    anatomy = Anatomy.sample(patient_rng, rng)
    image = render_radiograph(findings, rng, config.image_size, anatomy=anatomy, devices=devices)
    report = write_report(findings, rng, devices=devices, view=anatomy.view)
    # every sentence stays in the sampling pool: the short ones ("Cardiomegaly.", "No pneumothorax.") carry the most
    text, sentences = prepare_report(report, min_sentence_tokens=1)
    # the primary finding first, then the second one (if any): labels[0] is the row's class, as `category` says
    labels = [finding.name for finding in findings] or ["no finding"]
    record = make_record(
        id=f"synthetic-{config.seed}-{split}-{index:06d}",
        image={"bytes": encode_png(image), "path": None},
        text=text,
        sentences=sentences,
        labels=labels,
        patient_id=f"synthetic-{config.seed}-{split}-patient-{patient:06d}",
        study_id=f"synthetic-{config.seed}-{split}-study-{index:06d}",
        view=anatomy.view,
    )
    record["category"] = primary
    return record


def _generate_rows(config: SyntheticCorpusConfig, split: str, start: int, stop: int) -> list[dict]:
    return [generate_row(config, split, index) for index in range(start, stop)]


def _rows(config: SyntheticCorpusConfig, split: str, count: int, num_workers: int) -> Iterator[dict]:
    """Rows of a split in order; with workers, chunks are drawn in parallel and yielded in order."""
    if count:
        primary_category(config, split, 0)  # builds the schedule before forking, so the workers inherit it
    if num_workers <= 1 or count < 64:
        for index in range(count):
            yield generate_row(config, split, index)
        return
    chunk = 32
    starts = iter(range(0, count, chunk))
    # forked workers start in milliseconds (spawned ones would import torch and transformers again); they only run
    # numpy and PIL. At most two chunks per worker are in flight, so memory stays bounded whatever the corpus size.
    with ProcessPoolExecutor(max_workers=num_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: deque[Future[list[dict]]] = deque()

        def submit() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append(pool.submit(_generate_rows, config, split, start, min(start + chunk, count)))

        for _ in range(2 * num_workers):
            submit()
        while pending:
            rows = pending.popleft().result()
            submit()
            yield from rows


def _auto_workers(config: SyntheticCorpusConfig) -> int:
    if not sys.platform.startswith("linux"):  # fork is only safe (and the default) on Linux
        return 1
    total = sum(config.split_sizes().values())
    return 1 if total < 500 else max(1, min(os.cpu_count() or 1, 8))


def generate_synthetic_corpus(
    output_dir: str | os.PathLike,
    config: SyntheticCorpusConfig | None = None,
    *,
    num_workers: int | None = None,
) -> Path:
    """
    Generates the corpus and writes it to `output_dir`.

    Args:
        output_dir: the folder to write; it must not exist or be empty.
        config: what to generate (default: `SyntheticCorpusConfig()`).
        num_workers: processes drawing images; default: one per CPU core for corpora of 500 rows or more. The
            content does not depend on it.

    Returns:
        `Path` of `output_dir`, holding a `datasets.DatasetDict` (``save_to_disk`` layout, loadable with
        `load_synthetic_corpus` or `datasets.load_from_disk`) with the splits of `SPLITS` that have rows, columns
        `SYNTHETIC_COLUMNS` (the shared record columns and ``category``), images as PNG bytes (8-bit grayscale), plus
        ``text_queries.json`` (category -> five sentences) and ``corpus_config.json`` (the config; written last, so
        its presence marks a complete corpus).
    """
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    config = config or SyntheticCorpusConfig()
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty")
    workers = _auto_workers(config) if num_workers is None else max(1, int(num_workers))
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        workers = 1
    started = time.perf_counter()
    sizes = {split: count for split, count in config.split_sizes().items() if count > 0}
    # datasets' bars would all read "Generating train split"; one log line per split says more
    bars = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        # a private datasets cache: generation neither reads nor fills the user's HF cache
        with tempfile.TemporaryDirectory(prefix="convirt-synthetic-") as cache_dir:
            splits = {}
            for split, count in sizes.items():
                logger.info("synthetic corpus: drawing %d %s rows (%d px, %d process(es))", count, split,
                            config.image_size, workers)
                splits[split] = Dataset.from_generator(
                    _rows, gen_kwargs={"config": config, "split": split, "count": count, "num_workers": workers},
                    features=SYNTHETIC_FEATURES, cache_dir=cache_dir, writer_batch_size=256,
                )
            DatasetDict(splits).save_to_disk(str(output_dir))
    finally:
        if bars:
            enable_progress_bar()
    (output_dir / "text_queries.json").write_text(json.dumps(TEXT_QUERIES, indent=2) + "\n")
    (output_dir / "corpus_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    logger.info("synthetic corpus (%s) written to %s in %.1f s with %d process(es)",
                ", ".join(f"{split}={count}" for split, count in sizes.items()), output_dir,
                time.perf_counter() - started, workers)
    return output_dir


def load_synthetic_corpus(path: str | os.PathLike):
    """
    Loads a corpus written by `generate_synthetic_corpus`.

    Returns:
        `datasets.DatasetDict` with the corpus's splits (images decode to PIL images in mode "L").
    """
    from datasets import load_from_disk

    return load_from_disk(str(path))


def _is_complete(folder: Path, config: SyntheticCorpusConfig) -> bool:
    try:
        saved = json.loads((folder / "corpus_config.json").read_text())
    except (OSError, ValueError):
        return False
    return saved == json.loads(json.dumps(config.to_dict())) and (folder / "dataset_dict.json").is_file()


def ensure_synthetic_corpus(
    cache_dir: str | os.PathLike,
    config: SyntheticCorpusConfig | None = None,
    *,
    num_workers: int | None = None,
) -> Path:
    """
    The corpus for `config` under `cache_dir`, generated only when it is absent or was saved with another config.

    The folder is named after a hash of the config (and the corpus format version). Generation writes into a
    temporary folder beside it and renames it into place at the end, so an interrupted run never leaves a folder that
    looks like a corpus.

    Args:
        cache_dir: the cache folder (created if needed).
        config: the corpus wanted (default: `SyntheticCorpusConfig()`).
        num_workers: as for `generate_synthetic_corpus`.

    Returns:
        `Path` of the corpus folder.
    """
    config = config or SyntheticCorpusConfig()
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"synthetic-{config.digest()}"
    if _is_complete(final, config):
        logger.info("using the cached synthetic corpus %s", final)
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".incomplete-{final.name}-", dir=cache_dir))
    try:
        generate_synthetic_corpus(staging / "corpus", config, num_workers=num_workers)
        if not _is_complete(final, config):  # else another process finished the same corpus first
            if final.exists():  # a stale or broken folder under this name: move it aside, then swap
                os.replace(final, staging / "stale")
            try:
                os.replace(staging / "corpus", final)
            except OSError:
                if not _is_complete(final, config):  # not a concurrent twin that won the race
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def corpus_fingerprint(dataset_dict) -> str:
    """
    A sha256 over a corpus's content: for every split in order, every row's image bytes and its id, text, sentences,
    labels, patient, study and view, in order.

    Args:
        dataset_dict: a `datasets.DatasetDict` (or a mapping of split name to `datasets.Dataset`).

    Returns:
        `str`: the hex digest.
    """
    digest = hashlib.sha256()
    for split in dataset_dict:
        digest.update(f"split:{split}\n".encode())
        table = dataset_dict[split].with_format("arrow")
        for batch in table.iter(batch_size=256):
            images = batch.column("image").to_pylist()
            others = {name: batch.column(name).to_pylist() for name in batch.column_names if name != "image"}
            for row, image in enumerate(images):
                data = image["bytes"] if image and image.get("bytes") else (image or {}).get("path", "").encode()
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
                fields_ = {name: values[row] for name, values in sorted(others.items())}
                digest.update(json.dumps(fields_, sort_keys=True).encode())
    return digest.hexdigest()


__all__ = [
    "corpus_fingerprint",
    "encode_png",
    "ensure_synthetic_corpus",
    "generate_row",
    "generate_synthetic_corpus",
    "load_synthetic_corpus",
]
