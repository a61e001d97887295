"""Scoring a task's predictions with the project's `evaluate` modules (AUC, accuracy), per image and per patient."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache

import numpy as np

from .metrics import load_metric
from .tasks import ClassificationTask

logger = logging.getLogger(__name__)

__all__ = ["headline_metric", "patient_level", "primary_metric", "score_predictions"]


@cache
def _metric(name: str, config_name: str | None = None):
    # loading a module imports its script (about a second); computing with it takes milliseconds
    return load_metric(name, config_name=config_name)


def patient_level(
    targets: np.ndarray, probabilities: np.ndarray, patient_ids: Sequence[str | None], kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """
    One row per patient: the mean of the patient's image probabilities (the paper's MURA protocol) and the
    patient's target (positive when any image is; for a multi-class task, the class of the patient's images).
    Rows without a patient id are their own patient.
    """
    groups: dict[str, list[int]] = {}
    for row, patient in enumerate(patient_ids):
        groups.setdefault(str(patient) if patient is not None else f"\0row-{row}", []).append(row)
    rows = list(groups.values())
    mean_probabilities = np.stack([probabilities[group].mean(axis=0) for group in rows])
    if kind == "multiclass":
        mixed = sum(len(set(targets[group].tolist())) > 1 for group in rows)
        if mixed:
            logger.warning("%d patients have images of different classes; each is scored with its first image's", mixed)
        patient_targets = np.asarray([targets[group[0]] for group in rows])
    else:
        patient_targets = np.stack([targets[group].max(axis=0) for group in rows])
    return patient_targets, mean_probabilities


def _scores(task: ClassificationTask, targets: np.ndarray, probabilities: np.ndarray) -> dict[str, float | None]:
    if task.kind == "binary":
        auc = _metric("roc_auc", "binary").compute(prediction_scores=probabilities.tolist(),
                                                   references=targets.tolist())
        accuracy = _metric("accuracy").compute(predictions=probabilities.tolist(), references=targets.tolist(),
                                               threshold=0.5)
        return {"auc": auc["roc_auc"], "accuracy": accuracy["accuracy"]}
    if task.kind == "multiclass":
        auc = _metric("roc_auc", "multiclass").compute(prediction_scores=probabilities.tolist(),
                                                       references=targets.tolist(), label_names=task.classes)
        accuracy = _metric("accuracy").compute(predictions=probabilities.tolist(), references=targets.tolist())
        return {"accuracy": accuracy["accuracy"], "auc": auc["roc_auc"],
                **{f"auc/{name}": value for name, value in auc["per_class"].items()}}
    auc = _metric("roc_auc", "multilabel").compute(prediction_scores=probabilities.tolist(),
                                                   references=targets.tolist(), label_names=task.classes)
    return {"auc": auc["roc_auc"], **{f"auc/{name}": value for name, value in auc["per_label"].items()}}


def score_predictions(
    task: ClassificationTask,
    targets: np.ndarray,
    probabilities: np.ndarray,
    patient_ids: Sequence[str | None] | None = None,
) -> dict[str, float | None]:
    """
    The task's metrics for these predictions.

    - binary: `auc`, `accuracy` (threshold 0.5);
    - multi-class: `accuracy` (argmax), `auc` (one-vs-rest, macro mean) and `auc/<class>`;
    - multi-label: `auc` (mean over labels) and `auc/<label>`.

    With `patient_ids`, the same metrics per patient (mean probability over the patient's images) are added with a
    `patient_` prefix. An AUC is `None` where the targets hold one class only.
    """
    targets, probabilities = np.asarray(targets), np.asarray(probabilities, dtype=np.float64)
    metrics = _scores(task, targets, probabilities)
    if patient_ids is not None:
        patient_targets, patient_probabilities = patient_level(targets, probabilities, patient_ids, task.kind)
        metrics.update({f"patient_{name}": value
                        for name, value in _scores(task, patient_targets, patient_probabilities).items()})
    return metrics


def primary_metric(task: ClassificationTask, metrics: dict[str, float | None]) -> float | None:
    """The number a task is judged by (the paper's): accuracy for multi-class tasks, (mean) AUC otherwise."""
    return metrics.get("accuracy" if task.kind == "multiclass" else "auc")


def headline_metric(task: ClassificationTask) -> str:
    """The metric a task is reported by in the paper's tables: per-patient AUC for patient-level tasks (MURA)."""
    if task.kind == "multiclass":
        return "accuracy"
    return "patient_auc" if task.patient_level else "auc"
