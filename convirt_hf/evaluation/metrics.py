"""Classification and retrieval metrics of the evaluation harness: small numpy functions, and their `evaluate` modules.

These functions are the single source of truth; the `evaluate` modules under `metric_modules/` (loaded offline with
`load_metric`) only validate their inputs through `evaluate` and call them.

- `roc_auc`: exact binary ROC AUC, the probability that a random positive scores above a random negative with ties
  counting one half (the Mann-Whitney U statistic with mid-ranks). `None` when only one class is present.
- `multilabel_roc_auc`: one AUC per label column and their mean over the labels where it is defined.
- `multiclass_roc_auc`: one-vs-rest AUC per class from class probabilities, and their macro mean.
- `accuracy` and `predictions_from_scores` (argmax of class scores, or a 0.5 threshold on binary scores).
- `precision_at_k` / `precision_at_k_single`: the tie-aware retrieval Precision@k of `retrieval.py`, re-exported.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .retrieval import DEFAULT_KS, precision_at_k, precision_at_k_single

if TYPE_CHECKING:
    import evaluate

__all__ = [
    "CONVIRT_CITATION",
    "DEFAULT_KS",
    "METRIC_MODULES_PACKAGE",
    "accuracy",
    "available_metrics",
    "load_metric",
    "metric_module_path",
    "multiclass_roc_auc",
    "multilabel_roc_auc",
    "precision_at_k",
    "precision_at_k_single",
    "predictions_from_scores",
    "roc_auc",
]

METRIC_MODULES_PACKAGE = "convirt_hf.evaluation.metric_modules"

# The paper whose evaluation protocol these metrics follow; the evaluate modules cite it.
CONVIRT_CITATION = """\
@article{zhang2020contrastive,
  title   = {Contrastive Learning of Medical Visual Representations from Paired Images and Text},
  author  = {Zhang, Yuhao and Jiang, Hang and Miura, Yasuhide and Manning, Christopher D. and Langlotz, Curtis P.},
  journal = {arXiv preprint arXiv:2010.00747},
  year    = {2020}
}
"""


# ----------------------------------------------------------------------------------------------------------- checks


def _as_array(values: Any, what: str) -> np.ndarray:
    try:
        return np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{what} must be a rectangular array; rows of different lengths? ({error})") from None


def _as_binary_labels(labels: Any, what: str = "labels") -> np.ndarray:
    array = _as_array(labels, what)
    if array.dtype == bool:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} must be binary 0/1 numbers or booleans, got dtype {array.dtype}")
    if array.size and not np.isin(array, (0, 1)).all():
        bad = np.unique(array[~np.isin(array, (0, 1))])[:5].tolist()
        raise ValueError(f"{what} must be binary (0 or 1), found other values such as {bad}")
    return array.astype(np.int64)


def _as_finite_scores(scores: Any, what: str = "scores") -> np.ndarray:
    array = _as_array(scores, what)
    if array.dtype == bool:
        array = array.astype(np.float64)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} must be numbers, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite, found {int((~np.isfinite(array)).sum())} NaN or infinite value(s)")
    return array


def _check_shapes(labels: np.ndarray, scores: np.ndarray, ndim: int, names: tuple[str, str]) -> None:
    if labels.ndim != ndim or scores.ndim != ndim:
        raise ValueError(
            f"{names[0]} and {names[1]} must be {ndim}-D, got shapes {labels.shape} and {scores.shape}"
        )
    if labels.shape != scores.shape:
        raise ValueError(f"shape mismatch: {names[0]} has shape {labels.shape}, {names[1]} has shape {scores.shape}")
    if labels.shape[0] == 0:
        raise ValueError(f"{names[0]} and {names[1]} are empty")


# ------------------------------------------------------------------------------------------------------------- AUC


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    return (last_rank - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _auc_unchecked(labels: np.ndarray, scores: np.ndarray) -> float | None:
    positive = labels == 1
    n_pos = int(positive.sum())
    n_neg = labels.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(_mid_ranks(scores)[positive].sum())
    u_statistic = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u_statistic / (n_pos * n_neg)


def roc_auc(labels: Any, scores: Any) -> float | None:
    """
    Exact area under the ROC curve of binary `labels` (0/1 or bool) given `scores` (higher means more positive).

    It equals the probability that a random positive scores above a random negative, a tie counting one half
    (Mann-Whitney U with mid-ranks), so constant scores give 0.5. Returns `None` when only one class is present.

    Raises:
        ValueError: for inputs that are not 1-D of the same length, empty, non-binary labels or non-finite scores.
    """
    labels, scores = _as_binary_labels(labels), _as_finite_scores(scores)
    _check_shapes(labels, scores, 1, ("labels", "scores"))
    return _auc_unchecked(labels, scores)


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def _names(names: Sequence[Any] | None, count: int, what: str) -> list[Any]:
    if names is None:
        return list(range(count))
    names = list(names)
    if len(names) != count:
        raise ValueError(f"got {len(names)} {what} names for {count} {what}s")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} names must be unique, got {names}")
    return names


def multilabel_roc_auc(labels: Any, scores: Any, label_names: Sequence[Any] | None = None) -> dict:
    """
    ROC AUC of each label column of a multi-label task, and their mean.

    Args:
        labels: `(num_examples, num_labels)` binary 0/1 targets.
        scores: `(num_examples, num_labels)` scores, higher means more positive.
        label_names: one name per column (default: the column index).

    Returns:
        `{"per_label": {name: auc or None}, "mean": mean over the labels whose AUC is defined, or None}`; a label's
        AUC is `None` when its column holds one class only.
    """
    labels, scores = _as_binary_labels(labels), _as_finite_scores(scores)
    _check_shapes(labels, scores, 2, ("labels", "scores"))
    names = _names(label_names, labels.shape[1], "label")
    per_label = {name: _auc_unchecked(labels[:, j], scores[:, j]) for j, name in enumerate(names)}
    return {"per_label": per_label, "mean": _mean_defined(list(per_label.values()))}


def _as_class_indices(labels: Any, num_classes: int | None = None, what: str = "labels") -> np.ndarray:
    array = _as_array(labels, what)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} must be integer class indices, got dtype {array.dtype}")
    if array.size and (not np.isfinite(array).all() or (array != np.round(array)).any()):
        raise ValueError(f"{what} must be integer class indices, found non-integer values")
    array = array.astype(np.int64)
    if array.size and num_classes is not None and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{what} must be class indices in [0, {num_classes}), found values out of that range")
    return array


def multiclass_roc_auc(labels: Any, scores: Any, class_names: Sequence[Any] | None = None) -> dict:
    """
    One-vs-rest ROC AUC of a multi-class task from per-class scores (e.g. probabilities), and their macro mean.

    Args:
        labels: `(num_examples,)` integer class indices in `[0, num_classes)`.
        scores: `(num_examples, num_classes)` scores, column `c` scoring class `c`.
        class_names: one name per class (default: the class index).

    Returns:
        `{"per_class": {name: auc or None}, "mean": macro mean over the classes whose AUC is defined, or None}`; a
        class's AUC is `None` when it is absent from `labels` or is the only class present.
    """
    scores = _as_finite_scores(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (num_examples, num_classes), got shape {scores.shape}")
    labels = _as_class_indices(labels, scores.shape[1])
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D class indices, got shape {labels.shape}")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(f"shape mismatch: {labels.shape[0]} labels for {scores.shape[0]} rows of scores")
    if labels.shape[0] == 0:
        raise ValueError("labels and scores are empty")
    names = _names(class_names, scores.shape[1], "class")
    per_class = {name: _auc_unchecked((labels == c).astype(np.int64), scores[:, c]) for c, name in enumerate(names)}
    return {"per_class": per_class, "mean": _mean_defined(list(per_class.values()))}


# -------------------------------------------------------------------------------------------------------- accuracy


def predictions_from_scores(scores: Any, threshold: float = 0.5) -> np.ndarray:
    """
    Hard predictions from scores: the argmax class of `(num_examples, num_classes)` scores with at least two
    columns, or `score >= threshold` (as 0/1) for `(num_examples,)` or `(num_examples, 1)` binary scores.
    """
    scores = _as_finite_scores(scores)
    if scores.ndim == 2 and scores.shape[1] >= 2:
        return scores.argmax(axis=1)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1:
        raise ValueError(f"scores must be (num_examples,) or (num_examples, num_classes), got shape {scores.shape}")
    return (scores >= threshold).astype(np.int64)


def accuracy(labels: Any, predictions: Any) -> float:
    """Fraction of `predictions` equal to `labels` (1-D, same length, non-empty; numbers or strings)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.ndim != 1 or predictions.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-D, got shapes {labels.shape} and {predictions.shape}"
            " (use predictions_from_scores for score matrices)"
        )
    if labels.shape != predictions.shape:
        raise ValueError(f"shape mismatch: {labels.shape[0]} labels for {predictions.shape[0]} predictions")
    if labels.shape[0] == 0:
        raise ValueError("labels and predictions are empty")
    return float(np.mean(labels == predictions))


# ------------------------------------------------------------------------------------------------ evaluate modules


def _metric_modules_root():
    return importlib.resources.files(METRIC_MODULES_PACKAGE)


def available_metrics() -> list[str]:
    """Names of the packaged `evaluate` modules (folders `metric_modules/<name>/<name>.py`)."""
    root = _metric_modules_root()
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith(("_", ".")) and entry.joinpath(f"{entry.name}.py").is_file()
    )


def _metric_script(name: str):
    available = available_metrics()
    if name not in available:
        raise ValueError(f"unknown metric {name!r}; available metrics: {', '.join(available)}")
    return _metric_modules_root().joinpath(name, f"{name}.py")


def metric_module_path(name: str) -> str:
    """Local file path of the packaged `evaluate` module script `name` (e.g. `"roc_auc"`) in an unzipped install."""
    return str(_metric_script(name))


def load_metric(
    name: str, config_name: str | None = None, keep_in_memory: bool = True, **kwargs: Any
) -> evaluate.EvaluationModule:
    """
    Load one of the project's `evaluate` modules ("accuracy", "precision_at_k", "roc_auc") from its local path.

    Works offline and in a fresh `HF_HOME`: the script ships inside this package (found with `importlib.resources`)
    and `evaluate.load` is given the path of the `.py` file, which it copies into its modules cache and imports; the
    Hub is never asked. `config_name` selects a variant (for `roc_auc`: "binary", "multilabel" or "multiclass"; the
    default one infers it from the inputs); other keyword arguments go to `evaluate.load`.

    `keep_in_memory` defaults to True (evaluate's default is False): predictions stay in memory instead of arrow
    files under `HF_HOME/metrics` guarded by file locks, which after a failed `compute` make the next `compute` of the
    same instance wait a second for a lock. Pass False for evaluate's multi-process (`num_process`) gathering.

    Raises:
        ValueError: for an unknown name, listing the available ones.
    """
    import evaluate

    script = _metric_script(name)
    # as_file gives a real path even for a zipped install; evaluate has copied the script when load returns.
    with importlib.resources.as_file(script) as path:
        return evaluate.load(str(path), config_name=config_name, keep_in_memory=keep_in_memory, **kwargs)
