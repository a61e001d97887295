"""The linear-probe protocol: a linear classifier on frozen image features, at several label fractions and seeds.

Features are extracted once per split (see [`extract_features`]); each (fraction, seed) then fits a logistic
regression head on the fraction's rows. The head is fitted to convergence by L-BFGS on standardised features with an
L2 penalty chosen on the validation split from a small grid. This departs from the paper's Adam recipe (lr 1e-4,
batch 64, plateau halving) on purpose: with 1% of the labels an epoch is a single step, and a full-batch convex fit
is deterministic, needs no learning-rate tuning and takes milliseconds; the paper's optimiser recipe is what
``training/finetune.py`` follows, where the encoder is trained too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .scoring import headline_metric, primary_metric, score_predictions
from .tasks import ClassificationTask, fraction_subsets

logger = logging.getLogger(__name__)

__all__ = ["LinearHead", "fit_linear_head", "probe_inputs", "run_linear_probe", "summarise_runs"]

DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class LinearHead:
    """A fitted head: standardisation statistics, weights and the penalty it was fitted with."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (num_features, num_outputs)
    bias: torch.Tensor
    kind: str
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight + self.bias

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """Class probabilities: sigmoid per output for binary/multi-label tasks, softmax for multi-class."""
        with torch.no_grad():
            logits = self.logits(features.float())
            probabilities = logits.softmax(dim=-1) if self.kind == "multiclass" else logits.sigmoid()
        probabilities = probabilities.numpy()
        return probabilities[:, 0] if self.kind == "binary" else probabilities


def _data_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "multiclass":
        return F.cross_entropy(logits, targets.long())
    return F.binary_cross_entropy_with_logits(logits, targets.float().reshape(logits.shape))


def fit_linear_head(
    features: torch.Tensor, targets: np.ndarray, kind: str, num_outputs: int, weight_decay: float,
    max_iterations: int = 500, start: LinearHead | None = None,
) -> LinearHead:
    """
    Fits a logistic-regression head (mean data loss + `weight_decay` * ||W||^2) by full-batch L-BFGS.

    Deterministic for given inputs. Features are standardised with the training rows' statistics, so one penalty
    grid suits encoders whose features have very different scales. `start` warm-starts from another head fitted on
    the same rows (the next penalty of a grid), which converges in a fraction of the iterations; without it the
    weights start at zero.
    """
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp(min=1e-6)
    inputs = (features - mean) / std
    target_tensor = torch.as_tensor(np.asarray(targets))
    if start is not None:
        weight, bias = start.weight.clone(), start.bias.clone()
    else:
        weight, bias = torch.zeros(inputs.shape[1], num_outputs), torch.zeros(num_outputs)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = _data_loss(inputs @ weight + bias, target_tensor, kind) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearHead(mean, std, weight.detach(), bias.detach(), kind, weight_decay)


def _select_head(task, train_x, train_y, val_x, val_y, weight_decays) -> tuple[LinearHead, float | None]:
    """The head whose validation score is best (ties: the stronger penalty); validation loss when it is undefined."""
    best, best_key, head = None, None, None
    for weight_decay in sorted(weight_decays, reverse=True):  # strong to weak: each fit starts from the last
        head = fit_linear_head(train_x, train_y, task.kind, task.num_outputs, weight_decay, start=head)
        score = primary_metric(task, score_predictions(task, val_y, head.probabilities(val_x)))
        with torch.no_grad():
            loss = _data_loss(head.logits(val_x.float()), torch.as_tensor(np.asarray(val_y)), task.kind).item()
        key = (score if score is not None else -math.inf, -loss)
        if best_key is None or key > best_key:
            best, best_key = head, key
    return best, (None if best_key[0] == -math.inf else best_key[0])


def run_linear_probe(
    task: ClassificationTask,
    splits: dict[str, tuple[torch.Tensor, Sequence[Sequence[str]], Sequence[str | None] | None]],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    model_name: str = "model",
    data_name: str = "data",
) -> list[dict]:
    """
    The linear probe at every label fraction and seed.

    Args:
        task ([`ClassificationTask`]): what to predict.
        splits: `{"train": ..., "validation": ..., "test": ...}`, each `(features, labels, patient_ids)`:
            features `(N, F)`, the rows' `labels` lists, and their patient ids (or `None`).
        fractions: label fractions of the training split (nested, stratified subsets).
        seeds: one subset draw per seed (the full split at fraction 1.0 is the same for every seed).
        weight_decays: the L2 penalties tried on the validation split.
        model_name, data_name: recorded in every result.

    Returns:
        One result per (fraction, seed, metric): `{"model", "data", "task", "task_kind", "protocol":
        "linear_probe", "fraction", "seed", "num_train", "metric", "value", "weight_decay"}`. Metrics on the
        test split are named as in [`score_predictions`] (e.g. `"auc"`, `"auc/cardiomegaly"`, `"accuracy"`,
        `"patient_auc"`).
    """
    prepared = {}
    for name in ("train", "validation", "test"):
        if name not in splits:
            raise ValueError(f"the linear probe needs train, validation and test splits; {name!r} is missing")
        features, labels, patients = splits[name]
        targets, keep = task.targets(labels, split=name)
        if len(features) != len(labels):
            raise ValueError(f"{name}: {len(features)} feature rows for {len(labels)} label rows")
        keep_index = torch.as_tensor(np.flatnonzero(keep))
        kept_patients = None if patients is None else [patients[i] for i in np.flatnonzero(keep)]
        prepared[name] = (features[keep_index], targets, kept_patients)
        if len(targets) == 0:
            raise ValueError(f"{name}: no row has a label of task {task.name!r} ({task.classes})")

    train_x, train_y, _ = prepared["train"]
    val_x, val_y, _ = prepared["validation"]
    test_x, test_y, test_patients = prepared["test"]
    results = []
    for seed in seeds:
        subsets = fraction_subsets(task.strata(train_y), fractions, seed,
                                   lead_with_each_stratum=task.kind != "multilabel")
        for fraction in fractions:
            rows = torch.as_tensor(subsets[fraction])
            head, _ = _select_head(task, train_x[rows], train_y[subsets[fraction]], val_x, val_y, weight_decays)
            metrics = score_predictions(task, test_y, head.probabilities(test_x),
                                        patient_ids=test_patients if task.patient_level else None)
            for metric, value in metrics.items():
                results.append({
                    "model": model_name, "data": data_name, "task": task.name, "task_kind": task.kind,
                    "protocol": "linear_probe", "fraction": fraction, "seed": seed, "num_train": len(rows),
                    "metric": metric, "value": value, "headline": metric == headline_metric(task),
                    "weight_decay": head.weight_decay,
                })
            logger.info("%s %s %g%% seed %d (%d rows): %s", model_name, task.name, 100 * fraction, seed, len(rows),
                        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if v is not None and "/" not in k))
    return results


def probe_inputs(features: dict[str, torch.Tensor], records: dict, column: str = "labels") -> dict[str, tuple]:
    """The `splits` argument of [`run_linear_probe`] from per-split features, record datasets and the label column."""
    inputs = {}
    for name, split_features in features.items():
        columns = records[name].column_names
        if column not in columns:
            raise ValueError(f"{name}: no {column!r} column to read the task's classes from (columns: {columns})")
        patients = records[name]["patient_id"] if "patient_id" in columns else None
        inputs[name] = (split_features, records[name][column], patients)
    return inputs


def summarise_runs(results: Sequence[dict]) -> list[dict]:
    """Mean and (population) standard deviation over seeds of each (model, data, task, protocol, fraction, metric)."""
    groups: dict[tuple, list[float]] = {}
    headline: dict[tuple, bool] = {}
    for row in results:
        key = (row["model"], row["data"], row["task"], row.get("protocol"), row["fraction"], row["metric"])
        headline[key] = bool(row.get("headline"))
        if row["value"] is not None:
            groups.setdefault(key, []).append(float(row["value"]))
    return [
        {"model": model, "data": data, "task": task, "protocol": protocol, "fraction": fraction, "metric": metric,
         "headline": headline[(model, data, task, protocol, fraction, metric)],
         "mean": float(np.mean(values)), "std": float(np.std(values)), "runs": len(values)}
        for (model, data, task, protocol, fraction, metric), values in groups.items()
    ]
