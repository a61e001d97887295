"""The linear-probe protocol: a linear classifier on frozen image features, at several label fractions and seeds.

Features are extracted once per split (see [`extract_features`]); each (fraction, seed) then fits a logistic
regression head on the fraction's rows. The head is fitted to convergence by L-BFGS on standardised features with an
L2 penalty chosen on the validation split from a small grid. This departs from the paper's Adam recipe (lr 1e-4,
batch 64, plateau halving) on purpose: with 1% of the labels an epoch is a single step, and a full-batch convex fit
is deterministic, needs no learning-rate tuning and takes milliseconds; the paper's optimiser recipe is what
``training/finetune.py`` follows, where the encoder is trained too.

`head="tversky"` swaps the logistic regression for a Tversky projection layer (Doumbouya et al., 2025): the class
logits are the features' Tversky similarities to learned class prototypes over a learned feature bank. That head is
not convex, so it is fitted by a fixed number of full-batch AdamW steps from a seeded initialisation (still
deterministic), with the same validation choice of penalty, here AdamW's decoupled weight decay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F

from ..modeling.modeling_convirt import TverskyProjection
from .scoring import headline_metric, primary_metric, score_predictions
from .tasks import ClassificationTask, fraction_subsets

logger = logging.getLogger(__name__)

__all__ = ["HEADS", "LinearHead", "TverskyHead", "fit_linear_head", "fit_tversky_head", "probe_inputs",
           "run_linear_probe", "summarise_runs"]

DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class _ProbabilityHead:
    """Class probabilities from a head's `logits` and task `kind`."""

    kind: str
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """Class probabilities: sigmoid per output for binary/multi-label tasks, softmax for multi-class."""
        with torch.no_grad():
            logits = self.logits(features.float())
            tensor = logits.softmax(dim=-1) if self.kind == "multiclass" else logits.sigmoid()
        probabilities = tensor.numpy()
        return probabilities[:, 0] if self.kind == "binary" else probabilities


@dataclass
class LinearHead(_ProbabilityHead):
    """A fitted head: standardisation statistics, weights and the penalty it was fitted with."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor  # (num_features, num_outputs)
    bias: torch.Tensor
    kind: str
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight + self.bias


@dataclass
class TverskyHead(_ProbabilityHead):
    """
    A fitted Tversky head: standardisation statistics and a [`TverskyProjection`] whose prototypes are the classes,
    as in the paper's classifiers. A multi-class task has one prototype per class and its logits are the
    similarities. A binary or multi-label output is a two-class problem of its own, with a "present" and an "absent"
    prototype: its logit is S(x, present) - S(x, absent), the log-odds of that pair's softmax. A single prototype and
    a bias would not do: lowering one similarity is easiest by emptying the prototype's features, a state the
    feature indicators then give no gradient out of.
    """

    mean: torch.Tensor
    std: torch.Tensor
    projection: TverskyProjection
    kind: str
    weight_decay: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return _tversky_logits(self.projection, (features - self.mean) / self.std, self.kind)


def _tversky_logits(projection: TverskyProjection, inputs: torch.Tensor, kind: str) -> torch.Tensor:
    similarities = projection(inputs)
    if kind == "multiclass":
        return similarities
    present, absent = similarities.chunk(2, dim=-1)  # prototypes [present_1..present_n, absent_1..absent_n]
    return present - absent


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


def fit_tversky_head(
    features: torch.Tensor, targets: np.ndarray, kind: str, num_outputs: int, weight_decay: float,
    num_features: int = 32, steps: int = 300, learning_rate: float = 1e-2, seed: int = 0,
    intersection: str = "product", difference: str = "substractmatch", similarity: str = "contrast",
    alpha: float = 0.5, beta: float = 0.5, theta: float = 1.0, start: TverskyHead | None = None,
) -> TverskyHead:
    """
    Fits a [`TverskyHead`] (class prototypes over a `num_features` feature bank) on standardised features by `steps`
    full-batch AdamW steps with decoupled `weight_decay` on the features and prototypes.

    Deterministic for given inputs and `seed` (the initialisation draws from its own generator, not the global one).
    `start` is accepted for symmetry with [`fit_linear_head`] and ignored: on a non-convex loss a warm start would
    make each penalty's fit depend on the order of the grid.
    """
    del start
    features = features.float()
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp(min=1e-6)
    inputs = (features - mean) / std
    target_tensor = torch.as_tensor(np.asarray(targets))
    num_prototypes = num_outputs if kind == "multiclass" else 2 * num_outputs
    projection = TverskyProjection(inputs.shape[1], num_prototypes, num_features=num_features, alpha=alpha,
                                   beta=beta, theta=theta, intersection=intersection, difference=difference,
                                   similarity=similarity)
    projection.reset_parameters(generator=torch.Generator().manual_seed(seed))
    # the penalty is on the features and prototypes; the scalars alpha, beta, theta are weights, not shrunk
    optimizer = torch.optim.AdamW(
        [{"params": [projection.features, projection.prototypes], "weight_decay": weight_decay},
         {"params": [projection.alpha, projection.beta, projection.theta], "weight_decay": 0.0}],
        lr=learning_rate,
    )
    for _ in range(steps):
        optimizer.zero_grad()
        _data_loss(_tversky_logits(projection, inputs, kind), target_tensor, kind).backward()
        optimizer.step()
    projection.requires_grad_(False)
    return TverskyHead(mean, std, projection.eval(), kind, weight_decay)


# The probe's head kinds: a fitter with fit_linear_head's signature (plus keyword options) for each.
HEADS = {"linear": fit_linear_head, "tversky": fit_tversky_head}


def _select_head(task, train_x, train_y, val_x, val_y, weight_decays, head="linear", head_options=None,
                 ) -> tuple[_ProbabilityHead, float | None]:
    """The head whose validation score is best (ties: the stronger penalty); validation loss when it is undefined."""
    fit = HEADS[head]
    best, best_key, fitted = None, None, None
    for weight_decay in sorted(weight_decays, reverse=True):  # strong to weak: each fit starts from the last
        fitted = fit(train_x, train_y, task.kind, task.num_outputs, weight_decay, start=fitted, **(head_options or {}))
        score = primary_metric(task, score_predictions(task, val_y, fitted.probabilities(val_x)))
        with torch.no_grad():
            loss = _data_loss(fitted.logits(val_x.float()), torch.as_tensor(np.asarray(val_y)), task.kind).item()
        key = (score if score is not None else -math.inf, -loss)
        if best_key is None or key > best_key:
            best, best_key = fitted, key
    # a head was kept unless `weight_decays` is empty (best_key[0] then fails, as it always did)
    return cast(_ProbabilityHead, best), (None if best_key[0] == -math.inf else best_key[0])


def run_linear_probe(
    task: ClassificationTask,
    splits: dict[str, tuple[torch.Tensor, Sequence[Sequence[str]], Sequence[str | None] | None]],
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    model_name: str = "model",
    data_name: str = "data",
    head: str = "linear",
    head_options: dict | None = None,
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
        head (`str`, defaults to `"linear"`): the head trained on the frozen features, one of `HEADS`: `"linear"`
            (logistic regression fitted by L-BFGS: this project's probe protocol; the paper trains a linear layer
            with Adam) or `"tversky"` (a Tversky projection layer, see
            [`fit_tversky_head`]). Recorded in every result as `"head"`.
        head_options (`dict`, *optional*): keyword arguments of the head's fitter, e.g. `{"num_features": 64,
            "steps": 500}` for `"tversky"`; the Tversky head's initialisation is seeded with each run's seed.

    Returns:
        One result per (fraction, seed, metric): `{"model", "data", "task", "task_kind", "protocol":
        "linear_probe", "head", "fraction", "seed", "num_train", "metric", "value", "weight_decay"}`. Metrics on the
        test split are named as in [`score_predictions`] (e.g. `"auc"`, `"auc/cardiomegaly"`, `"accuracy"`,
        `"patient_auc"`).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {tuple(HEADS)}, got {head!r}")
    if head_options and head == "linear":
        raise ValueError(f"head_options {sorted(head_options)} given for the linear head, which takes none")
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
            options = {"seed": seed, **(head_options or {})} if head == "tversky" else None
            fitted, _ = _select_head(task, train_x[rows], train_y[subsets[fraction]], val_x, val_y, weight_decays,
                                     head, options)
            metrics = score_predictions(task, test_y, fitted.probabilities(test_x),
                                        patient_ids=test_patients if task.patient_level else None)
            for metric, value in metrics.items():
                results.append({
                    "model": model_name, "data": data_name, "task": task.name, "task_kind": task.kind,
                    "protocol": "linear_probe", "head": head, "fraction": fraction, "seed": seed,
                    "num_train": len(rows), "metric": metric, "value": value,
                    "headline": metric == headline_metric(task), "weight_decay": fitted.weight_decay,
                })
            logger.info("%s %s (%s head) %g%% seed %d (%d rows): %s", model_name, task.name, head, 100 * fraction,
                        seed, len(rows),
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
    """
    Mean and (population) standard deviation over seeds of each (model, data, task, protocol, fraction, metric), and
    head where the rows name one (linear-probe rows do): a linear and a Tversky probe of one model stay apart.
    """
    groups: dict[tuple, list[float]] = {}
    headline: dict[tuple, bool] = {}
    for row in results:
        key = (row["model"], row["data"], row["task"], row.get("protocol"), row.get("head"), row["fraction"],
               row["metric"])
        headline[key] = bool(row.get("headline"))
        if row["value"] is not None:
            groups.setdefault(key, []).append(float(row["value"]))
    summary = []
    for (model, data, task, protocol, head, fraction, metric), values in groups.items():
        entry = {"model": model, "data": data, "task": task, "protocol": protocol, "fraction": fraction,
                 "metric": metric, "headline": headline[(model, data, task, protocol, head, fraction, metric)],
                 "mean": float(np.mean(values)), "std": float(np.std(values)), "runs": len(values)}
        if head is not None:  # other protocols' rows have no head and keep their shape
            entry["head"] = head
        summary.append(entry)
    return summary
