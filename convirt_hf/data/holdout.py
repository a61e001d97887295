"""Patient-level holdout splits: which rows are held out (validation, test, ...) and which stay in ``train``.

Images of one patient are alike, so a patient in two splits leaks between them. :func:`patient_holdout` keeps every
patient in one split. It reads nothing but the patient ids, so preprocessing (``--holdout``), the pretraining script
and the evaluation corpora all use it on a list of ids.

Assignment, for a seed:

1. rows are grouped by ``patient_id``; a row without one (``None`` or ``""``) is a group of its own;
2. the groups are ordered by a SHA-256 digest of the seed and the patient id (a digest, not Python's ``hash`` or a
   shuffle of the input order: the same seed gives every patient the same split in every process, Python version
   and row order);
3. the groups are laid end to end in that order, by their number of rows, over the interval ``[0, rows)``; the
   holdout splits take consecutive stretches of it, ``fraction x rows`` long each, in the order given, and ``train``
   the rest; a group goes to the split whose stretch holds the middle of the group.

So the fractions are fractions of **rows**, not of patients, and each holdout split is within one patient's rows
of its requested size: a stretch's end cuts at most half a patient off or adds at most half a patient (the first
split's start is exact, so it is within half a patient). A split too small for the patient at its stretch ends up
empty, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
# What `datasets` accepts as a split name (also a safe file name for "<split>_patients.txt").
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$", re.ASCII)

__all__ = ["TRAIN_SPLIT", "check_holdout", "held_out_patients", "parse_holdout", "patient_holdout",
           "warn_if_patients_shared"]


def check_holdout(fractions: Mapping[str, float], flag: str = "--holdout") -> dict[str, float]:
    """
    Validates holdout fractions and returns them as a plain dict, in their order.

    Args:
        fractions: holdout split name -> fraction of the rows, e.g. ``{"validation": 0.1, "test": 0.1}``.
        flag: how the messages name the argument (the command-line flag by default).

    Raises:
        ValueError: no split, a name that is ``train`` or not a split name, a fraction outside (0, 1), or fractions
            that sum to 1 or more (``train`` would be empty); the message names `flag`.
    """
    if not fractions:
        raise ValueError(f"{flag} needs at least one NAME=FRACTION, e.g. validation=0.1")
    checked: dict[str, float] = {}
    for name, fraction in fractions.items():
        if not isinstance(name, str) or not _SPLIT_NAME.match(name):
            raise ValueError(f"{flag} {name!r}: a split name is letters, digits and _ (parts joined by .)")
        if name == TRAIN_SPLIT:
            raise ValueError(f"{flag} {name}={fraction}: 'train' is the rest of the rows; name the held-out splits")
        try:
            value = float(fraction)
        except (TypeError, ValueError):
            value = math.nan
        if not 0.0 < value < 1.0:  # NaN fails both comparisons
            raise ValueError(f"{flag} {name}={fraction}: the fraction must be in (0, 1)")
        checked[name] = value
    total = sum(checked.values())
    if total >= 1.0:
        raise ValueError(f"{flag} fractions sum to {round(total, 6)}; they must sum to less than 1, leaving rows for "
                         "train")
    return checked


def parse_holdout(items: Sequence[str], flag: str = "--holdout") -> dict[str, float]:
    """
    Reads ``NAME=FRACTION`` items (``["validation=0.1", "test=0.1"]``) into checked fractions (:func:`check_holdout`).

    Raises:
        ValueError: an item that is not ``NAME=FRACTION``, a name given twice, or what :func:`check_holdout` refuses.
    """
    fractions: dict[str, str] = {}
    for item in items:
        name, sep, fraction = str(item).partition("=")
        name, fraction = name.strip(), fraction.strip()
        if not sep or not name or not fraction:
            raise ValueError(f"{flag} {item!r}: expected NAME=FRACTION, e.g. validation=0.1")
        try:
            float(fraction)
        except ValueError:
            raise ValueError(f"{flag} {item}: expected NAME=FRACTION with a number, e.g. validation=0.1") from None
        if name in fractions:
            raise ValueError(f"{flag} names the split {name!r} twice")
        fractions[name] = fraction
    return check_holdout(fractions, flag)


def _group_order_key(seed: int, group: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{group}".encode("utf-8", "surrogatepass")).digest()


def patient_holdout(patient_ids: Sequence[str | None], fractions: Mapping[str, float], seed: int = 0) -> list[str]:
    """
    The split of every row: patient-level holdout splits of about the requested fraction of the rows, the rest train.

    Args:
        patient_ids: one patient id per row (``None`` or ``""``: a row without one, which is a group of its own).
        fractions: holdout split name -> fraction of the rows, in the order the splits take their stretch of rows
            (see the module docstring); checked with :func:`check_holdout`.
        seed: the assignment's seed: the same ids and seed always give the same splits.

    Returns:
        `list[str]`: the split name of each row, in the order of `patient_ids` (``"train"`` or a holdout name).

    Example:

    ```python
    >>> from convirt_hf.data.holdout import patient_holdout
    >>> splits = patient_holdout(["p1", "p1", "p2", None, "p3", "p3"], {"validation": 0.3}, seed=0)
    >>> len(splits), set(splits) <= {"train", "validation"}
    (6, True)

    ```
    """
    fractions = check_holdout(fractions, flag="holdout")
    groups: dict[str, list[int]] = {}
    for index, patient in enumerate(patient_ids):
        # "\x01" cannot start a real id's group: a row without a patient never joins a patient's group
        key = f"\x00{patient}" if patient not in (None, "") else f"\x01{index}"
        groups.setdefault(key, []).append(index)
    total = len(patient_ids)
    ends, start = [], 0.0
    for name, fraction in fractions.items():
        start += fraction * total
        ends.append((start, name))
    splits = [TRAIN_SPLIT] * total
    laid = 0
    for key in sorted(groups, key=lambda group: _group_order_key(seed, group)):
        rows = groups[key]
        middle = laid + len(rows) / 2
        laid += len(rows)
        name = next((name for end, name in ends if middle < end), TRAIN_SPLIT)
        for index in rows:
            splits[index] = name
    if total:
        for name in fractions:
            if name not in splits:
                logger.warning("holdout split %r has no rows: %.3g of %d rows is less than half of the patient at its "
                               "place in the order; ask for a larger fraction", name, fractions[name], total)
    return splits


def held_out_patients(patient_ids: Sequence[str | None], splits: Sequence[str]) -> dict[str, list[str]]:
    """The sorted patient ids of each holdout split (rows without a patient id have none to list)."""
    patients: dict[str, set[str]] = {}
    for patient, split in zip(patient_ids, splits):
        if split != TRAIN_SPLIT:
            found = patients.setdefault(split, set())
            if patient not in (None, ""):
                found.add(str(patient))
    return {split: sorted(found) for split, found in patients.items()}


def warn_if_patients_shared(patient_ids_by_split: Mapping[str, Sequence[str | None]]) -> dict[str, int]:
    """
    The number of patients with rows in both splits of each pair (`"a/b" -> count`), logged as a warning where it is
    not 0: results on such splits are leaked. Splits this package makes never share a patient; this checks the ones
    it is given.
    """
    patients = {name: {str(pid) for pid in ids if pid not in (None, "")} for name, ids in patient_ids_by_split.items()}
    names = list(patients)
    shared = {f"{a}/{b}": len(patients[a] & patients[b]) for i, a in enumerate(names) for b in names[i + 1:]}
    for pair, count in shared.items():
        if count:
            logger.warning("%d patients have images in both %s: results on these splits are leaked; make patient-level "
                           "splits (python -m convirt_hf.data.preprocess ... --holdout validation=0.1)", count, pair)
    return shared
