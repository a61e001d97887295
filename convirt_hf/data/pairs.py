"""Training views of image-report pairs whose randomness depends only on (seed, epoch, row).

Every random choice for a row (the image augmentation and the sampled report sentence) comes from a generator
seeded by ``(seed, epoch, row)``. The view of an example is then the same whichever worker process draws it, after a
resume mid-epoch, and on any number of processes: a resumed run sees exactly the batches an uninterrupted run would.

The sampler passes the epoch to the workers inside the index (``epoch * num_rows + row``), which keeps working
with persistent workers, where an attribute set on the dataset in the main process would never reach them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

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
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = range(self.num_rows)
        offset = self.epoch * self.num_rows
        return (offset + row for row in order)

    def __len__(self) -> int:
        return self.num_rows


class PairViews(Dataset):
    """
    Yields ``{"pixel_values", "sentence", "id"}`` for a record dataset (the shared record shape).

    Args:
        records: a `datasets.Dataset` with the shared record columns (``image`` decoded to PIL).
        image_transform: called as ``image_transform(image, generator=torch.Generator)``.
        seed: the run's seed.
        text_mode: ``"sentence"`` samples one sentence uniformly (the paper); ``"report"`` (or ``"whole"``) uses the
            whole text.
    """

    def __init__(self, records, image_transform: Callable, seed: int = 0, text_mode: str = "sentence"):
        check_text_mode(text_mode)
        self.records = records
        self.image_transform = image_transform
        self.seed = seed
        self.text_mode = text_mode
        self.num_rows = len(records)

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, tagged_index: int) -> dict:
        epoch, row = divmod(int(tagged_index), self.num_rows)
        rng = np.random.default_rng([self.seed, epoch, row])
        record = self.records[row]
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        pixel_values = self.image_transform(record["image"], generator=generator)
        sentence = pair_text(record.get("sentences"), record["text"], self.text_mode, rng)
        return {"pixel_values": pixel_values, "sentence": sentence, "id": record["id"]}
