"""Classification tasks for transfer evaluation, and the paper's label-fraction subsets.

A task says which labels of the shared record shape (the ``labels`` column: names of the findings present) it
predicts and how:

- ``"binary"``: one class, positive when its name is among the row's labels (RSNA Pneumonia, MURA);
- ``"multiclass"``: exactly one of the classes per row (COVIDx); rows with none or several are left out, counted and
  logged;
- ``"multilabel"``: every class is an independent binary label (CheXpert's five).

Label fractions (1%, 10%, 100% of the training labels, as in the paper) come from one seeded, stratified order of
the training rows: a fraction is a prefix of that order, so the subsets are nested (the 1% subset lies inside the
10% one) and each is stratified by class (by label combination for multi-label tasks).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["ClassificationTask", "TASK_KINDS", "fraction_subsets", "parse_task", "stratified_order", "synthetic_tasks"]

TASK_KINDS = ("binary", "multiclass", "multilabel")


@dataclass
class ClassificationTask:
    """
    A classification task over the `labels` column of record datasets.

    Args:
        name (`str`): the task's name in results (e.g. `"pneumonia"`).
        kind (`str`): `"binary"`, `"multiclass"` or `"multilabel"`.
        classes (`list[str]`): label names (lower-case, as in the records); one name for a binary task.
        patient_level (`bool`, defaults to `False`): also score the mean probability per patient (`patient_id`),
            as the paper does for MURA.
        column (`str`, defaults to `"labels"`): the record column the classes are read from: a list of names per
            row (`labels`), or one name per row (e.g. the synthetic corpus's `category`).
    """

    name: str
    kind: str
    classes: list[str] = field(default_factory=list)
    patient_level: bool = False
    column: str = "labels"

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        self.classes = [name.lower() for name in self.classes]
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task {self.name!r}: classes must be distinct names, got {self.classes}")
        if self.kind == "binary" and len(self.classes) != 1:
            raise ValueError(f"task {self.name!r}: a binary task has one (positive) class, got {self.classes}")
        if self.kind == "multiclass" and len(self.classes) < 2:
            raise ValueError(f"task {self.name!r}: a multi-class task needs at least 2 classes, got {self.classes}")

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def targets(self, labels: Sequence[Sequence[str]], split: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """
        Targets for rows with these `labels` lists, and the boolean mask of rows the task can use.

        Returns `(targets, keep)`: `targets` has one entry per kept row: float 0/1 for a binary task, the class
        index for a multi-class task, a `(rows, classes)` float 0/1 matrix for a multi-label task.
        """
        rows = [{row} if isinstance(row, str) else set(row or ()) for row in labels]
        present = np.array([[name in row for name in self.classes] for row in rows], dtype=bool)
        present = present.reshape(len(labels), len(self.classes))
        if self.kind == "binary":
            return present[:, 0].astype(np.float32), np.ones(len(labels), dtype=bool)
        if self.kind == "multilabel":
            return present.astype(np.float32), np.ones(len(labels), dtype=bool)
        keep = present.sum(axis=1) == 1
        if not keep.all():
            logger.warning("task %s, %s: %d of %d rows have none or several of the classes %s and are left out",
                           self.name, split, int((~keep).sum()), len(labels), self.classes)
        return present[keep].argmax(axis=1), keep

    def strata(self, targets: np.ndarray) -> list:
        """The stratum of each row: its class, or its label combination for a multi-label task."""
        if self.kind == "multilabel":
            return [tuple(np.flatnonzero(row)) for row in targets]
        return [int(value) for value in targets]


def synthetic_tasks() -> dict[str, ClassificationTask]:
    """
    The synthetic corpus's tasks, one per task type of the paper's transfer table:

    - `findings`: the 7 findings as a multi-label task, mean AUC (like CheXpert's 5 labels);
    - `category`: the 8 retrieval categories as a multi-class task, accuracy (like COVIDx), read from the
      `category` column (a row's primary finding, also when it has a second one);
    - `pneumonia`: binary, AUC (like RSNA Pneumonia);
    - `fracture`: binary, AUC (a bone finding, like MURA; MURA is scored per patient, but the synthetic corpus has
      no per-patient labels: a patient's studies show different findings).
    """
    from convirt_hf.data.synthetic import CATEGORIES, FINDINGS

    return {
        "findings": ClassificationTask("findings", "multilabel", list(FINDINGS)),
        "category": ClassificationTask("category", "multiclass", list(CATEGORIES), column="category"),
        "pneumonia": ClassificationTask("pneumonia", "binary", ["pneumonia"]),
        "fracture": ClassificationTask("fracture", "binary", ["fracture"]),
    }


def parse_task(spec: str) -> ClassificationTask:
    """
    A task from a preset name of the synthetic corpus (`findings`, `category`, `pneumonia`, `fracture`) or a spec
    `[name=]kind:class[,class...][@patient]`, e.g. `binary:pneumonia`, `chexpert=multilabel:atelectasis,
    cardiomegaly,consolidation,edema,pleural effusion`, `mura=binary:abnormal@patient`.
    """
    presets = synthetic_tasks()
    if spec in presets:
        return presets[spec]
    name, _, rest = spec.rpartition("=") if "=" in spec.split(":")[0] else ("", "", spec)
    patient = rest.endswith("@patient")
    rest = rest.removesuffix("@patient")
    kind, separator, classes = rest.partition(":")
    if not separator or kind not in TASK_KINDS:
        raise ValueError(f"task {spec!r}: expected a preset ({', '.join(presets)}) or '[name=]kind:class,...' "
                         f"with kind one of {TASK_KINDS}")
    names = [item.strip() for item in classes.split(",") if item.strip()]
    return ClassificationTask(name or (names[0] if kind == "binary" and names else kind), kind, names, patient)


def stratified_order(strata: Sequence, seed: int, lead_with_each_stratum: bool = True) -> np.ndarray:
    """
    A seeded order of the rows whose every prefix is (close to) stratified.

    Row `r`-th (in a random order) of a stratum of size `n` gets the key `(r + u) / n`, `u` one uniform draw per
    stratum: sorting by key interleaves the strata in proportion to their sizes at every prefix length
    (systematic sampling). With `lead_with_each_stratum`, the first row of every stratum comes first, so any
    prefix at least as long as the number of strata holds every class (a classifier needs both classes of a binary
    task even at 1% of the labels).
    """
    rng = np.random.default_rng(seed)
    strata = list(strata)
    groups: dict = {}
    for index, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(index)
    keys = np.empty(len(strata), dtype=np.float64)
    leaders = []
    for stratum in sorted(groups, key=repr):  # a fixed group order: draws do not depend on dict order
        members = np.asarray(groups[stratum])
        members = members[rng.permutation(len(members))]
        offset = rng.random()
        keys[members] = (np.arange(len(members)) + offset) / len(members)
        leaders.append(members[0])
    order = np.argsort(keys, kind="stable")
    if lead_with_each_stratum:
        leading = np.asarray(sorted(leaders, key=lambda index: keys[index]), dtype=np.int64)
        order = np.concatenate([leading, order[~np.isin(order, leading)]])
    return order


def fraction_subsets(
    strata: Sequence, fractions: Sequence[float], seed: int, lead_with_each_stratum: bool = True
) -> dict[float, np.ndarray]:
    """
    Nested, stratified subsets of the rows: `ceil(fraction * N)` rows each (at least one per stratum when
    `lead_with_each_stratum`), all prefixes of one [`stratified_order`].
    """
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"label fractions must be in (0, 1], got {fraction!r}")
    order = stratified_order(strata, seed, lead_with_each_stratum)
    count = len(order)
    minimum = len(set(strata)) if lead_with_each_stratum else 1
    return {
        fraction: np.sort(order[: min(count, max(minimum, math.ceil(fraction * count - 1e-9)))])
        for fraction in fractions
    }
