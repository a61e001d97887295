"""What a synthetic corpus holds: its splits, its configuration (the cache key) and each row's scheduled category.

The primary category of every row is fixed by the configuration alone (:func:`primary_category`): exact counts per
category, interleaved so that every prefix of a split is close to the requested mix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache

import numpy as np
from datasets import Features, Value

from ..records import RECORD_COLUMNS, RECORD_FEATURES
from .vocabulary import CATEGORIES

SPLITS = ("pretrain", "validation", "cls_train", "cls_val", "cls_test", "retrieval_candidates", "retrieval_queries")
RETRIEVAL_SPLITS = ("retrieval_candidates", "retrieval_queries")
# The corpus's rows: the shared record columns (`convirt_hf.data.records`) plus ``category``, the row's primary
# category: the class a classification or retrieval task should use. ``labels`` lists every finding present, the
# primary one first; with a second finding (combinations) it has two names, while ``category`` stays the one that the
# configured counts are exact for. Readers of the shared record shape ignore the extra column.
SYNTHETIC_COLUMNS = (*RECORD_COLUMNS, "category")
SYNTHETIC_FEATURES = Features({**RECORD_FEATURES, "category": Value("string")})
# Bump whenever drawing or report writing changes what a config produces: it is part of the cache key.
CORPUS_FORMAT_VERSION = 5


def _default_weights() -> dict[str, float]:
    return {category: 1.0 for category in CATEGORIES}


@dataclass
class SyntheticCorpusConfig:
    """
    What the synthetic corpus holds. Everything here is part of the cache key (see `ensure_synthetic_corpus`).

    Args:
        seed: the corpus seed; the same seed gives byte-identical images and texts.
        image_size: height and width of the stored images (the preprocessing step's 256 by default; training
            shrinks them further, e.g. to 64 pixels for the CPU demo).
        num_pretrain, num_validation: image-report pairs for pretraining and its validation loss.
        num_cls_train, num_cls_val, num_cls_test: labelled images for the classification tasks (linear probe,
            fine-tuning); reports are included too. 2000 training images make the paper's 1% label fraction 20
            images, a little more than two per class of the 8-class task.
        retrieval_candidates_per_category: candidate images per category in the retrieval set (the paper: 200),
            each with exactly one category.
        retrieval_queries_per_category: query images per category (the paper: 10), each with exactly one category.
        second_finding_probability: chance that a row of the non-retrieval splits has a second finding.
        device_probability: chance that an image shows support devices (ECG leads, a central line), which its report
            mentions: content that is unrelated to the labels.
        category_weights: relative frequency of each category as the primary finding of the non-retrieval splits;
            categories left out weigh 1. The counts are exact (largest remainder), not sampled.
        studies_per_patient: consecutive rows of the non-retrieval splits share a patient (same anatomy, new study).
    """

    seed: int = 0
    image_size: int = 256
    num_pretrain: int = 3000
    num_validation: int = 300
    num_cls_train: int = 2000
    num_cls_val: int = 400
    num_cls_test: int = 800
    retrieval_candidates_per_category: int = 50
    retrieval_queries_per_category: int = 10
    second_finding_probability: float = 0.25
    device_probability: float = 0.15
    category_weights: dict[str, float] = field(default_factory=_default_weights)
    studies_per_patient: int = 2

    def __post_init__(self):
        if self.image_size < 16:
            raise ValueError(f"SyntheticCorpusConfig.image_size must be >= 16, got {self.image_size}")
        for name in ("num_pretrain", "num_validation", "num_cls_train", "num_cls_val", "num_cls_test",
                     "retrieval_candidates_per_category", "retrieval_queries_per_category"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be an integer >= 0, got {value!r}")
        if self.num_pretrain == 0:
            raise ValueError("SyntheticCorpusConfig.num_pretrain must be > 0")
        for name in ("second_finding_probability", "device_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SyntheticCorpusConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.studies_per_patient < 1:
            raise ValueError(f"SyntheticCorpusConfig.studies_per_patient must be >= 1, got {self.studies_per_patient}")
        unknown = set(self.category_weights) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"SyntheticCorpusConfig.category_weights has unknown categories {sorted(unknown)}; "
                             f"expected names from {CATEGORIES}")
        weights = {category: float(self.category_weights.get(category, 1.0)) for category in CATEGORIES}
        if any(not math.isfinite(w) or w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(
                f"SyntheticCorpusConfig.category_weights must be finite, >= 0 and not all 0, got {weights}"
            )
        self.category_weights = weights

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, in `SPLITS` order."""
        return {
            "pretrain": self.num_pretrain,
            "validation": self.num_validation,
            "cls_train": self.num_cls_train,
            "cls_val": self.num_cls_val,
            "cls_test": self.num_cls_test,
            "retrieval_candidates": self.retrieval_candidates_per_category * len(CATEGORIES),
            "retrieval_queries": self.retrieval_queries_per_category * len(CATEGORIES),
        }

    def to_dict(self) -> dict:
        """The config with the corpus format version: what `corpus_config.json` holds and the cache key hashes."""
        return {**asdict(self), "format": CORPUS_FORMAT_VERSION}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, values: dict) -> SyntheticCorpusConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@lru_cache(maxsize=32)
def _schedule(weights: tuple[float, ...], count: int) -> np.ndarray:
    """
    Index into `CATEGORIES` of each row's primary category: exact counts proportional to `weights` (largest
    remainder), interleaved so that every prefix of a split is close to the requested mix. Built once per (weights,
    count), so looking up a row is O(1) however large the split (a million rows: 0.05 s, once).
    """
    weights_ = np.asarray(weights, dtype=np.float64)
    exact = weights_ / weights_.sum() * count
    quotas = np.floor(exact).astype(np.int64)
    for index in np.argsort(-(exact - quotas), kind="stable")[: count - quotas.sum()]:
        quotas[index] += 1
    # category c takes the slots (j + 0.5) / quota_c, j < quota_c; rows follow the slots in order, ties by category
    slots = np.concatenate([(np.arange(quota) + 0.5) / quota for quota in quotas if quota] or [np.zeros(0)])
    owners = np.repeat(np.arange(len(quotas), dtype=np.int8), quotas)
    schedule = owners[np.lexsort((owners, slots))]
    schedule.flags.writeable = False  # shared by every caller through the cache
    return schedule


def primary_category(config: SyntheticCorpusConfig, split: str, index: int) -> str:
    """The primary category of row `index` of `split` (the row's `category` column)."""
    count = config.split_sizes()[split]
    if not 0 <= index < count:
        raise IndexError(f"row {index} is out of range for the {count} rows of {split!r}")
    if split in RETRIEVAL_SPLITS:  # each category in turn
        return CATEGORIES[index % len(CATEGORIES)]
    weights = tuple(config.category_weights[category] for category in CATEGORIES)
    return CATEGORIES[int(_schedule(weights, count)[index])]


def primary_categories(config: SyntheticCorpusConfig, split: str) -> list[str]:
    """The primary category of every row of `split` (retrieval splits: each category in turn)."""
    count = config.split_sizes()[split]
    if split in RETRIEVAL_SPLITS:
        return [CATEGORIES[index % len(CATEGORIES)] for index in range(count)]
    weights = tuple(config.category_weights[category] for category in CATEGORIES)
    return [CATEGORIES[index] for index in _schedule(weights, count).tolist()]


__all__ = [
    "CORPUS_FORMAT_VERSION",
    "RETRIEVAL_SPLITS",
    "SPLITS",
    "SYNTHETIC_COLUMNS",
    "SYNTHETIC_FEATURES",
    "SyntheticCorpusConfig",
    "primary_categories",
    "primary_category",
]
