"""Training views of image-report pairs whose randomness depends only on (seed, epoch, row).

Every random choice for a row (the image augmentation and the sampled report sentence) comes from a generator
seeded by ``(seed, epoch, row)``. The view of an example is then the same whichever worker process draws it, after a
resume mid-epoch, and on any number of processes: a resumed run sees exactly the batches an uninterrupted run would.

The sampler passes the epoch to the workers inside the index (``epoch * num_rows + row``), which keeps working
with persistent workers, where an attribute set on the dataset in the main process would never reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .gpu_augment import DecodedView
from .reports import sample_sentence

# "report" is what the training script calls the whole-text mode; "whole" is the report module's name for it.
TEXT_MODES = ("sentence", "report", "whole")


def check_text_mode(text_mode: str) -> None:
    if text_mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")


def pair_text(sentences, text: str | None, text_mode: str, rng: np.random.Generator) -> str:
    """The text view t_u of one row: a uniformly sampled sentence, or the whole text (also when no sentence is left)."""
    if text_mode == "sentence" and sentences:
        return sample_sentence(sentences, rng)
    return text or ""


class EpochShuffleSampler(Sampler[int]):
    """
    A seeded permutation per epoch, yielding epoch-tagged indices (``epoch * num_rows + row``).

    The epoch is chosen with :meth:`use_epoch`, deliberately not named ``set_epoch``: accelerate's prepared loaders
    call ``sampler.set_epoch(<their own pass count>)`` at every pass, and a loader made to resume mid-epoch counts
    from 0, which would replay the wrong epoch. The training loop, which checkpoints the epoch, owns it.
    """

    def __init__(self, num_rows: int, seed: int = 0, shuffle: bool = True):
        self.num_rows = num_rows
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order: Sequence[int] = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = range(self.num_rows)
        offset = self.epoch * self.num_rows
        return (offset + row for row in order)

    def __len__(self) -> int:
        return self.num_rows


class DecodedImageCache:
    """
    Decoded images kept in memory by row, up to `max_bytes` of pixels: a corpus that fits is decoded once per run
    instead of once per epoch (decoding a 256 px PNG costs about as much as a small model's step spends on it).
    Rows beyond the budget are decoded at every use. Each data-loader worker process holds its own cache.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used_bytes = 0
        self.images: dict[int, object] = {}

    def get(self, row: int):
        return self.images.get(row)

    def put(self, row: int, image) -> None:
        size = image.width * image.height * len(image.getbands()) if hasattr(image, "getbands") else None
        if size is not None and self.used_bytes + size <= self.max_bytes:
            self.images[row] = image
            self.used_bytes += size


class PairViews(Dataset):
    """
    Yields ``{"pixel_values", "sentence", "id"}`` for a record dataset (the shared record shape).

    Args:
        records: a `datasets.Dataset` with the shared record columns (``image`` decoded to PIL).
        image_transform: called as ``image_transform(image, generator=torch.Generator)``.
        seed: the run's seed.
        text_mode: ``"sentence"`` samples one sentence uniformly (the paper); ``"report"`` (or ``"whole"``) uses the
            whole text.
        image_cache_bytes: keep up to this many bytes of decoded images in memory (`DecodedImageCache`); 0 decodes
            every image at every use. The views are the same either way.
    """

    def __init__(self, records, image_transform: Callable, seed: int = 0, text_mode: str = "sentence",
                 image_cache_bytes: int = 0):
        check_text_mode(text_mode)
        self.records = records
        self.image_transform = image_transform
        self.seed = seed
        self.text_mode = text_mode
        self.num_rows = len(records)
        self.image_cache = self.text_records = None
        if image_cache_bytes > 0:  # needs a datasets.Dataset
            self.image_cache = DecodedImageCache(image_cache_bytes)
            # the text columns alone: reading them skips decoding the image, for rows whose image is cached
            self.text_records = records.select_columns(
                [name for name in ("sentences", "text", "id") if name in records.column_names])

    def __len__(self) -> int:
        return self.num_rows

    def _record(self, row: int) -> tuple[dict, object]:
        image = self.image_cache.get(row) if self.image_cache is not None else None
        if image is not None:
            return self.text_records[row], image
        record = self.records[row]
        if self.image_cache is not None:
            self.image_cache.put(row, record["image"])
        return record, record["image"]

    def __getitem__(self, tagged_index: int) -> dict:
        epoch, row = divmod(int(tagged_index), self.num_rows)
        rng = np.random.default_rng([self.seed, epoch, row])
        record, image = self._record(row)
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        view = self.image_transform(image, generator=generator)
        sentence = pair_text(record.get("sentences"), record["text"], self.text_mode, rng)
        if isinstance(view, DecodedView):  # decoded here, augmented on the training device with these parameters
            return {"pixel_values": view.image, "augmentation": view.params, "sentence": sentence, "id": record["id"]}
        return {"pixel_values": view, "sentence": sentence, "id": record["id"]}
