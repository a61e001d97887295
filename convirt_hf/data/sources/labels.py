"""Labels of a row: binary label columns (CheXpert-style tables, manifests), columns of label names, ClassLabel ids.

A row's labels are lower-cased finding names. Binary cells read as present (``1``, ``true``, ``yes``) or not (``0``,
``-1`` uncertain, blank); anything else in a column given as binary is an error the caller counts (or, in the first
rows, a sign that the column holds names and the wrong argument was used).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .text import is_missing, to_str

_TRUE_WORDS = {"1", "1.0", "true", "t", "yes", "y", "positive", "pos", "present"}
_FALSE_WORDS = {"0", "0.0", "-1", "-1.0", "false", "f", "no", "n", "negative", "neg", "absent", "uncertain", "nan",
                "none", "null", ""}


def binary_value(value: Any) -> bool | None:
    """
    A binary label cell as True ("present": 1, 1.0, True, "1", "true", "yes", "positive") or False (0, -1 (uncertain),
    blank, "false", "no", ...); ``None`` when the cell is not a binary value at all (e.g. a label name).
    """
    if is_missing(value):
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True if value == 1 else (False if value in (0, -1) else None)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_WORDS:
            return True
        if text in _FALSE_WORDS:
            return False
    return None


def label_names(value: Any) -> list[str]:
    """A label cell holding names: a list, a JSON list, or a string separated by ``|``, ``;`` or ``,``."""
    if is_missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = [part for part in re.split(r"[\[\]'\"|;,]", text)]
        else:
            value = re.split(r"[|;,]", text)
    if not isinstance(value, (list, tuple)):
        try:
            value = list(value)
        except TypeError:
            value = [value]
    names = []
    for item in value:
        name = to_str(item)
        if name and name.lower() not in names:
            names.append(name.lower())
    return names


def positive_label_columns(row: dict, skip: Sequence[str], uncertain_is_positive: bool = False) -> tuple[str, ...]:
    """
    The lower-cased names of the columns of a CheXpert-style label row (MIMIC-CXR's chexpert/negbio tables,
    CheXpert-Plus's) whose value is positive: 1.0, and -1.0 (uncertain) too when `uncertain_is_positive`. Columns in
    `skip` (ids, paths) and blank or non-numeric cells are not labels.
    """
    positive = {1.0, -1.0} if uncertain_is_positive else {1.0}
    found = []
    for column, value in row.items():
        if column in skip or is_missing(value):
            continue
        try:
            if float(value) in positive:
                found.append(column.lower())
        except (TypeError, ValueError):
            continue
    return tuple(found)


def labels_from_row(row: dict, binary_columns: Sequence[str] = (), names_column: str | None = None
                    ) -> tuple[list[str], str | None]:
    """
    The labels of a row: the lower-cased name of each binary column that is positive, then the names in
    `names_column`. Returns ``(labels, problem)``; `problem` describes a binary column whose cell is not binary.
    """
    labels: list[str] = []
    problem = None
    for column in binary_columns:
        value = binary_value(row.get(column))
        if value is None:
            problem = (f"label column {column!r} holds {row.get(column)!r}, not a binary value (1/0, true/false, "
                       "yes/no, -1 or blank)")
        elif value and column.lower() not in labels:
            labels.append(column.lower())
    if names_column:
        labels += [name for name in label_names(row.get(names_column)) if name not in labels]
    return labels, problem


def check_binary_columns(rows: Iterator[dict], binary_columns: Sequence[str], where: str,
                         class_names: dict[str, list[str]] | None = None) -> None:
    """
    Fails early when a column given as binary holds something else in the first rows: the usual cause is a column of
    label names passed as ``label_columns`` instead of ``label_names_column``.
    """
    if not binary_columns:
        return
    for number, row in enumerate(rows, 1):
        row = decode_class_labels(row, class_names or {})
        for column in binary_columns:
            if binary_value(row.get(column)) is None:
                raise ValueError(
                    f"{where}: label_columns={column!r} must hold binary values (1/0, true/false, yes/no, -1 or "
                    f"blank), but row {number} holds {row.get(column)!r}. For a column of label names use "
                    f"label_names_column={column!r} (--label-names-column {column})."
                )


def class_label_names(features: Any, columns: Sequence[str | None]) -> dict[str, list[str]]:
    """``column -> class names`` for the columns of `features` that are ``ClassLabel`` or a list of ``ClassLabel``."""
    from datasets import ClassLabel

    found = {}
    for column in columns:
        if not column or not features or column not in features:
            continue
        feature = features[column]
        inner = getattr(feature, "feature", None)
        if isinstance(feature, ClassLabel):
            found[column] = list(feature.names)
        elif isinstance(inner, ClassLabel):
            found[column] = list(inner.names)
    return found


def _class_name(value: Any, names: list[str]) -> Any:
    if isinstance(value, (list, tuple)):
        return [name for name in (_class_name(item, names) for item in value) if name is not None]
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return names[value] if 0 <= value < len(names) else None  # -1: ClassLabel's "no label"
    return value


def decode_class_labels(row: dict, class_names: dict[str, list[str]]) -> dict:
    """`row` with the integer indices of its ``ClassLabel`` columns replaced by the class names (``int2str``)."""
    if not class_names:
        return row
    row = dict(row)
    for column, names in class_names.items():
        if column in row:
            row[column] = _class_name(row[column], names)
    return row


__all__ = [
    "binary_value",
    "check_binary_columns",
    "class_label_names",
    "decode_class_labels",
    "label_names",
    "labels_from_row",
    "positive_label_columns",
]
