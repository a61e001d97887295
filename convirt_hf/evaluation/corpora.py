"""Where evaluation data comes from: a saved dataset folder, or the built-in synthetic corpus (shared with pretraining).

The evaluation scripts find the same cached synthetic corpus as `training/pretrain.py` when given the same
`--cache_dir`, `--synthetic_seed` and `--synthetic_pretrain_size`, so a model is evaluated on the classification and
retrieval splits of the corpus it was pretrained on, never on its pretraining pairs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from convirt_hf.data.holdout import warn_if_patients_shared

logger = logging.getLogger(__name__)

__all__ = ["SYNTHETIC_CLASSIFICATION_SPLITS", "check_classification_splits", "classification_splits", "corpus_folder",
           "saved_splits"]

# The synthetic corpus's labelled splits, and what convirt_hf.data.preprocess names them.
SYNTHETIC_CLASSIFICATION_SPLITS = {"train": "cls_train", "validation": "cls_val", "test": "cls_test"}
PREPROCESSED_CLASSIFICATION_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


def corpus_folder(dataset: str | None, cache_dir: str = "~/.cache/convirt_hf", synthetic_seed: int = 0,
                  synthetic_pretrain_size: int = 3000) -> Path:
    """The dataset folder (`datasets.save_to_disk`), or the synthetic corpus's, generated once if absent."""
    if dataset is not None:
        folder = Path(dataset).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"--dataset {dataset!r} does not exist")
        return folder
    from convirt_hf.data.synthetic import SyntheticCorpusConfig, ensure_synthetic_corpus

    config = SyntheticCorpusConfig(seed=synthetic_seed, num_pretrain=synthetic_pretrain_size)
    return ensure_synthetic_corpus(Path(cache_dir).expanduser(), config)


def classification_splits(folder: Path, names: dict[str, str | None] | None = None,
                          required: Sequence[str] = ("train", "validation", "test")) -> dict:
    """
    `{"train": Dataset, "validation": Dataset, "test": Dataset}` from a saved `DatasetDict`.

    `names` maps the roles to the folder's split names; by default the synthetic corpus's (`cls_train`, `cls_val`,
    `cls_test`) when present, else `train`, `validation`, `test`. Raises `ValueError` listing the folder's splits when
    one is missing.
    """
    from datasets import load_from_disk

    corpus = load_from_disk(str(folder))
    if not hasattr(corpus, "keys"):
        raise ValueError(f"{folder} holds a single split; the evaluation needs {list(required)} splits")
    defaults = (SYNTHETIC_CLASSIFICATION_SPLITS if SYNTHETIC_CLASSIFICATION_SPLITS["train"] in corpus
                else PREPROCESSED_CLASSIFICATION_SPLITS)
    chosen = {role: (names or {}).get(role) or defaults[role] for role in required}
    missing = {role: split for role, split in chosen.items() if split not in corpus}
    if missing:
        raise ValueError(f"{folder} has no split {missing} (splits: {list(corpus)}); name them with "
                         + ", ".join(f"--{role}_split" for role in missing))
    splits = {role: corpus[split] for role, split in chosen.items()}
    warn_if_patients_shared({role: list(records["patient_id"]) if "patient_id" in records.column_names else []
                             for role, records in splits.items()})
    return splits


def saved_splits(folder: str | Path) -> list[str] | None:
    """
    The split names of a folder written by `DatasetDict.save_to_disk`, read from its `dataset_dict.json` without
    loading any data; None when the folder holds no such index (a single `Dataset`, or no dataset at all).
    """
    index = Path(folder).expanduser() / "dataset_dict.json"
    try:
        splits = json.loads(index.read_text())["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(split) for split in splits] if isinstance(splits, list) else None


def check_classification_splits(dataset: str | None, names: dict[str, str | None] | None = None,
                                required: Sequence[str] = ("train", "validation", "test")) -> None:
    """
    Fails, naming the argument, when `classification_splits` would: `--dataset` is no saved `DatasetDict`, or a
    `--<role>_split` (given, or the default) is not one of its splits. Reads only the split index, so that a script
    refuses before generating the synthetic corpus (`dataset` None, whose splits are known) or loading anything.
    """
    from convirt_hf.data.synthetic import SPLITS

    available: list[str] | None
    if dataset is None:
        available, where = list(SPLITS), "the synthetic corpus"
    else:
        folder = Path(dataset).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"--dataset {dataset}: no such folder")
        available, where = saved_splits(folder), str(dataset)
        if available is None:
            raise ValueError(f"--dataset {dataset} is not a saved DatasetDict (no dataset_dict.json, which "
                             f"DatasetDict.save_to_disk writes); the evaluation needs {list(required)} splits")
    defaults = (SYNTHETIC_CLASSIFICATION_SPLITS if SYNTHETIC_CLASSIFICATION_SPLITS["train"] in available
                else PREPROCESSED_CLASSIFICATION_SPLITS)
    for role in required:
        given = (names or {}).get(role)
        split = given or defaults[role]
        if split in available:
            continue
        if given:
            raise ValueError(f"--{role}_split {given!r} is not a split of {where} (splits: {available})")
        raise ValueError(f"{where} has no {role} split {split!r} (splits: {available}); name it with --{role}_split")
