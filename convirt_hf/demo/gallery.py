"""The demo's image gallery: where its images come from, and their embeddings, computed once and cached on disk.

A gallery is a folder of images (searched recursively) or a split of a corpus saved with `datasets.save_to_disk`
(the synthetic corpus, or a `convirt_hf.data.preprocess` output). The server names it (`--gallery`); the browser
never does. Unreadable files are counted and skipped, and the page lists them.

The embeddings are cached as one safetensors file per (model, gallery) pair, named by a digest of the model's
weights and settings and a digest of the gallery's content (file names and bytes), so a restart with the same model
and images reads them back instead of running the image encoder again, and any change to either is a new file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .inputs import DEFAULT_MAX_MEGAPIXELS, IMAGE_SUFFIXES, InputError, read_image, thumbnail

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "retrieval_candidates"
DEFAULT_CORPUS_CACHE = "~/.cache/convirt_hf"
DEFAULT_CACHE_DIR = "~/.cache/convirt_hf/demo"
CACHE_FORMAT = "1"


# ------------------------------------------------------------------------------------------------------- sources


class FolderGallery:
    """The image files under a folder (by suffix, recursively, hidden files left out), in sorted order."""

    kind = "folder"

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).expanduser().resolve()
        files = sorted(path for path in self.folder.rglob("*") if path.is_file()
                       and not any(part.startswith(".") for part in path.relative_to(self.folder).parts))
        self.paths = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
        self.ignored = len(files) - len(self.paths)
        self.names = [path.relative_to(self.folder).as_posix() for path in self.paths]
        self.captions = list(self.names)

    @property
    def description(self) -> str:
        return f"the image folder {self.folder}"

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, index: int) -> Path:
        return self.paths[index]

    def digest(self) -> str:
        digest = hashlib.sha256(b"folder\n")
        for name, path in zip(self.names, self.paths):
            digest.update(f"{name}\n{path.stat().st_size}\n".encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


class DatasetGallery:
    """One split of a saved corpus: its `image` column, named by `id` and captioned by `category` when present."""

    kind = "corpus"

    def __init__(self, folder: str | os.PathLike, split: str = DEFAULT_SPLIT):
        from datasets import Dataset, Image, load_from_disk

        self.folder, self.split = Path(folder).expanduser().resolve(), split
        loaded = load_from_disk(str(self.folder))
        if not isinstance(loaded, Dataset):
            if split not in loaded:
                raise ValueError(f"{self.folder} has no split {split!r} (splits: {list(loaded)})")
            loaded = loaded[split]
        if "image" not in loaded.column_names:
            raise ValueError(f"{self.folder} ({split}) has no 'image' column (columns: {loaded.column_names})")
        # undecoded: the bytes are hashed and decoded by `read_image`, which counts a bad row instead of failing
        self.dataset = loaded.cast_column("image", Image(decode=False))
        self.ignored = 0
        columns = self.dataset.column_names
        self.names = ([str(value) for value in self.dataset["id"]] if "id" in columns
                      else [f"{split}-{index:06d}" for index in range(len(self.dataset))])
        categories = self.dataset["category"] if "category" in columns else None
        self.captions = [str(category) for category in categories] if categories else list(self.names)

    @property
    def description(self) -> str:
        return f"the {self.split} split of {self.folder}"

    def __len__(self) -> int:
        return len(self.dataset)

    def raw(self, index: int) -> bytes | Path:
        image = self.dataset[index]["image"] or {}
        if image.get("bytes"):
            return image["bytes"]
        return Path(image.get("path") or "")

    def digest(self) -> str:
        digest = hashlib.sha256(f"corpus\n{self.split}\n".encode())
        table = self.dataset.select_columns(["image"]).with_format("arrow")
        names = iter(self.names)
        for batch in table.iter(batch_size=256):
            for image in batch.column("image").to_pylist():
                data = (image or {}).get("bytes") or str((image or {}).get("path")).encode()
                digest.update(f"{next(names)}\n{len(data)}\n".encode())
                digest.update(data)
        return digest.hexdigest()


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `DatasetDict.save_to_disk` or `Dataset.save_to_disk`."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def open_gallery(location: str | os.PathLike, split: str | None = None):
    """A [`FolderGallery`] or a [`DatasetGallery`] (split `split`, default retrieval_candidates) for `location`."""
    folder = Path(location).expanduser()
    if is_saved_dataset(folder):
        return DatasetGallery(folder, split or DEFAULT_SPLIT)
    return FolderGallery(folder)


def render_synthetic_gallery(folder: str | os.PathLike, per_category: int | None = None, config=None) -> Path:
    """
    Writes the synthetic corpus's retrieval candidates (the first `per_category` of each category; all by default)
    as PNG files named `<category>-<index>.png` into `folder`, unless they are there already. The images are the
    corpus's own (a row is a pure function of the corpus config), without generating the rest of the corpus.
    """
    from convirt_hf.data.synthetic import CATEGORIES, SyntheticCorpusConfig, generate_row, primary_category

    config = config or SyntheticCorpusConfig()
    folder = Path(folder).expanduser()
    wanted = per_category if per_category is not None else config.retrieval_candidates_per_category
    done = folder / ".complete"
    if done.is_file() and done.read_text() == f"{config.digest()} {wanted}\n":
        return folder
    counts = dict.fromkeys(CATEGORIES, 0)
    folder.mkdir(parents=True, exist_ok=True)
    total = config.retrieval_candidates_per_category * len(CATEGORIES)
    for index in range(total):
        category = primary_category(config, "retrieval_candidates", index)
        if counts[category] >= wanted:
            continue
        counts[category] += 1
        row = generate_row(config, "retrieval_candidates", index)
        _write_atomic(folder / f"{category.replace(' ', '-')}-{index:04d}.png", row["image"]["bytes"])
    done.write_text(f"{config.digest()} {wanted}\n")
    logger.info("rendered %d synthetic retrieval images into %s", sum(counts.values()), folder)
    return folder


def default_gallery(corpus_cache: str | os.PathLike = DEFAULT_CORPUS_CACHE,
                    cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR):
    """
    The synthetic corpus's retrieval set: the cached corpus's split when `make pretrain` (or any script) has
    generated it, else the same images rendered once into `cache_dir`.
    """
    from convirt_hf.data.synthetic import SyntheticCorpusConfig

    config = SyntheticCorpusConfig()
    corpus = Path(corpus_cache).expanduser() / f"synthetic-{config.digest()}"
    if (corpus / "corpus_config.json").is_file() and (corpus / "dataset_dict.json").is_file():
        return DatasetGallery(corpus, DEFAULT_SPLIT)
    logger.info("the synthetic corpus is not cached in %s: rendering its %d retrieval images once", corpus_cache,
                config.retrieval_candidates_per_category * 8)
    return FolderGallery(render_synthetic_gallery(Path(cache_dir).expanduser() / f"synthetic-retrieval-"
                                                  f"{config.digest()}"))


def _write_atomic(path: Path, data: bytes) -> None:
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------------- index


@dataclass
class GalleryIndex:
    """The embedded images of a gallery: row i of `embeddings` is image `positions[i]` of `source`."""

    source: FolderGallery | DatasetGallery
    positions: list[int]
    embeddings: torch.Tensor
    skipped: list[tuple[str, str]]
    cache_path: Path
    from_cache: bool
    seconds: float
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def names(self) -> list[str]:
        return [self.source.names[position] for position in self.positions]

    def caption(self, row: int) -> str:
        return self.source.captions[self.positions[row]]

    def top_k(self, query: torch.Tensor, k: int) -> list[tuple[int, float]]:
        """`(row, cosine similarity)` of the `k` most similar images to an L2-normalised `query`, best first."""
        scores = self.embeddings @ query.reshape(-1).float()
        values, rows = torch.topk(scores, min(k, len(self)))
        return list(zip(rows.tolist(), values.tolist()))

    def picture(self, row: int, size: int = 256):
        """A thumbnail of row `row`'s image for the page."""
        return thumbnail(read_image(self.source.raw(self.positions[row]), self.max_megapixels), size)

    def status(self) -> str:
        """One Markdown paragraph for the page: what the gallery holds and what was skipped."""
        text = f"**Gallery**: {len(self)} images from {self.source.description}"
        text += " (embeddings read from the cache)." if self.from_cache else f" (indexed in {self.seconds:.1f} s)."
        if self.skipped:
            shown = "; ".join(f"`{name}`: {reason.rstrip('.')}" for name, reason in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            text += f" **{len(self.skipped)} unreadable file(s) skipped**: {shown}{more}."
        if getattr(self.source, "ignored", 0):
            text += f" {self.source.ignored} file(s) that are not images were ignored."
        return text


def cache_path_for(cache_dir: str | os.PathLike, model_digest: str, gallery_digest: str) -> Path:
    return Path(cache_dir).expanduser() / f"gallery-{model_digest[:16]}-{gallery_digest[:16]}.safetensors"


def _embed(demo_model, source, batch_size: int, max_megapixels: float, progress: bool):
    """Embeddings of every readable image of `source`, and the unreadable ones with the reason."""
    from tqdm.auto import tqdm

    from convirt_hf.evaluation.zero_shot import embed_images

    positions: list[int] = []
    chunks: list[torch.Tensor] = []
    skipped: list[tuple[str, str]] = []
    batch: list = []  # PIL images
    batch_positions: list[int] = []

    def flush():
        if batch:
            chunks.append(embed_images(demo_model.model, demo_model.processor, batch, demo_model.device,
                                       batch_size=len(batch)))
            positions.extend(batch_positions)
            batch.clear()
            batch_positions.clear()

    with tqdm(total=len(source), desc="indexing the gallery", unit="img", disable=not progress) as bar:
        for position in range(len(source)):
            try:
                batch.append(read_image(source.raw(position), max_megapixels))
                batch_positions.append(position)
            except InputError as error:
                skipped.append((source.names[position], str(error)))
                logger.warning("gallery: skipping %s: %s", source.names[position], error)
            if len(batch) >= batch_size:
                flush()
            bar.update(1)
        flush()
    embeddings = torch.cat(chunks) if chunks else torch.empty(0, demo_model.model.config.projection_dim)
    return positions, embeddings, skipped


def _read_cache(path: Path, size: int) -> tuple[list[int], torch.Tensor, list] | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            embeddings = handle.get_tensor("embeddings")
        positions = json.loads(metadata["positions"])
        skipped = [tuple(item) for item in json.loads(metadata["skipped"])]
    except Exception as error:  # a damaged or foreign file is recomputed, never trusted
        logger.warning("ignoring the unreadable gallery cache %s (%s)", path, error)
        return None
    if metadata.get("format") != CACHE_FORMAT or len(positions) != embeddings.shape[0] or (
            positions and not 0 <= min(positions) <= max(positions) < size):
        logger.warning("ignoring the gallery cache %s: it does not match the gallery", path)
        return None
    return positions, embeddings, skipped


def _write_cache(path: Path, positions, embeddings, skipped, demo_model, source) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": CACHE_FORMAT, "positions": json.dumps(positions), "skipped": json.dumps(skipped),
                "model": demo_model.spec, "gallery": source.description}
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        save_file({"embeddings": embeddings.contiguous()}, partial, metadata=metadata)
        os.replace(partial, path)  # a crash mid-write never leaves a half file under the final name
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def build_gallery_index(demo_model, source, cache_dir: str | os.PathLike = DEFAULT_CACHE_DIR, batch_size: int = 32,
                        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, progress: bool = True) -> GalleryIndex:
    """
    The gallery's embeddings: read from the cache file for this model and gallery content when there is one, else
    computed (with a progress bar) and written there.

    Args:
        demo_model ([`DemoModel`]): the loaded model (its `digest` keys the cache).
        source ([`FolderGallery`] or [`DatasetGallery`]): the images.
        cache_dir: the cache folder (created when a file is written).
        batch_size (`int`): images per forward pass.
        max_megapixels (`float`): larger images are skipped, as the page refuses them.
        progress (`bool`): show the progress bar.

    Raises:
        `ValueError`: the gallery has no readable image.
    """
    started = time.perf_counter()
    path = cache_path_for(cache_dir, demo_model.digest, source.digest())
    cached = _read_cache(path, len(source)) if path.is_file() else None
    if cached is not None:
        positions, embeddings, skipped = cached
    else:
        positions, embeddings, skipped = _embed(demo_model, source, batch_size, max_megapixels, progress)
        if positions:
            _write_cache(path, positions, embeddings, skipped, demo_model, source)
    if not positions:
        raise ValueError(f"the gallery ({source.description}) has no readable image ({len(skipped)} unreadable)")
    seconds = time.perf_counter() - started
    if cached is None:
        logger.info("indexed %d gallery images in %.1f s (%.1f images/s); %d skipped; cache %s", len(positions),
                    seconds, len(source) / max(seconds, 1e-9), len(skipped), path)
    return GalleryIndex(source, positions, embeddings.float(), skipped, path, cached is not None, seconds,
                        max_megapixels)
