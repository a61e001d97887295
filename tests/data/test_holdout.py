"""Patient-level holdout splits: the assignment function on patient ids, and `preprocess --holdout` end to end."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt_hf.data.holdout import check_holdout, parse_holdout, patient_holdout
from convirt_hf.data.preprocess import SUMMARY_FILE, main, preprocess_corpus

FINDINGS = ["The heart is enlarged.", "The lungs are clear.", "There is a small left pleural effusion.",
            "No pneumothorax is seen.", "Mild pulmonary edema is present."]


def patient_rows(patients: int, seed: int = 0, without_id: int = 0) -> list[str | None]:
    """One patient id per row: `patients` patients with 2-4 images each, then `without_id` rows without a patient."""
    rng = np.random.default_rng(seed)
    rows = [f"p{index:04d}" for index in range(patients) for _ in range(int(rng.integers(2, 5)))]
    return rows + [None] * without_id


def rows_by_split(ids: list[str | None], splits: list[str]) -> dict[str, set]:
    by_split: dict[str, set] = {}
    for patient, split in zip(ids, splits):
        by_split.setdefault(split, set()).add(patient)
    return by_split


# The promised balance: a holdout split's interval of rows is cut at most half a patient off at each of its two ends,
# so it is within one patient's rows (here at most 4) of its requested share of the rows.
TOLERANCE = 4


@pytest.mark.parametrize("fractions", [{"validation": 0.1}, {"validation": 0.1, "test": 0.1},
                                       {"validation": 0.15, "test": 0.25, "probe": 0.05}])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_holdout_keeps_patients_whole_and_sizes_near_the_request(fractions, seed):
    ids = patient_rows(500, seed=seed, without_id=30)
    splits = patient_holdout(ids, fractions, seed=seed)
    assert len(splits) == len(ids)
    assert set(splits) == {"train", *fractions}
    by_split = rows_by_split(ids, splits)
    named = {name: patients - {None} for name, patients in by_split.items()}
    for first, first_patients in named.items():
        for second, second_patients in named.items():
            if first != second:
                assert not first_patients & second_patients, (first, second)  # zero patients shared
    counts = Counter(splits)
    for name, fraction in fractions.items():
        assert abs(counts[name] - fraction * len(ids)) <= TOLERANCE, (name, counts[name], fraction * len(ids))
    assert counts["train"] == len(ids) - sum(counts[name] for name in fractions)


def test_holdout_is_deterministic_for_a_seed_and_differs_for_another():
    ids = patient_rows(300, seed=3, without_id=10)
    fractions = {"validation": 0.1, "test": 0.1}
    first = patient_holdout(ids, fractions, seed=11)
    assert patient_holdout(list(ids), dict(fractions), seed=11) == first
    other = patient_holdout(ids, fractions, seed=12)
    assert other != first
    assert rows_by_split(ids, other)["validation"] != rows_by_split(ids, first)["validation"]


def test_a_patient_goes_to_the_same_split_whatever_the_row_order():
    ids = patient_rows(200, seed=5)
    splits = dict(zip(ids, patient_holdout(ids, {"validation": 0.2}, seed=4)))
    shuffled = list(np.random.default_rng(0).permutation(np.array(ids, dtype=object)))
    assert dict(zip(shuffled, patient_holdout(shuffled, {"validation": 0.2}, seed=4))) == splits


def test_rows_without_a_patient_id_are_each_their_own_group():
    ids = [None] * 200 + [""] * 100  # an empty id is no id either
    splits = patient_holdout(ids, {"validation": 0.25}, seed=0)
    assert Counter(splits) == {"train": 225, "validation": 75}  # one-row groups: exactly the requested share
    assert patient_holdout([], {"validation": 0.1}, seed=0) == []


def test_a_holdout_too_small_for_one_patient_is_empty_and_said_so(caplog):
    with caplog.at_level("WARNING"):
        splits = patient_holdout(["a"] * 4 + ["b"] * 4, {"validation": 0.1}, seed=0)
    assert splits == ["train"] * 8
    assert any("validation" in record.getMessage() and "no rows" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["validation=0"], "--holdout validation=0: the fraction must be in (0, 1)"),
        (["validation=1"], "must be in (0, 1)"),
        (["validation=-0.1"], "must be in (0, 1)"),
        (["validation=nan"], "must be in (0, 1)"),
        (["validation=ten"], "--holdout validation=ten: expected NAME=FRACTION"),
        (["validation"], "--holdout 'validation': expected NAME=FRACTION"),
        (["=0.1"], "expected NAME=FRACTION"),
        (["train=0.1"], "--holdout train=0.1: 'train' is the rest"),
        (["validation=0.1", "validation=0.2"], "--holdout names the split 'validation' twice"),
        (["validation=0.6", "test=0.5"], "--holdout fractions sum to 1.1"),
        (["val/one=0.1"], "--holdout 'val/one': a split name is letters, digits and _"),
    ],
)
def test_holdout_arguments_are_checked_naming_the_flag(items, message):
    with pytest.raises(ValueError) as raised:
        parse_holdout(items)
    assert message in str(raised.value)


def test_the_function_checks_its_fractions_too():
    assert parse_holdout(["validation=0.1", "test=0.2"]) == {"validation": 0.1, "test": 0.2}
    assert check_holdout({"validation": 0.5}) == {"validation": 0.5}
    with pytest.raises(ValueError, match="holdout"):
        patient_holdout(["a"], {"validation": 1.5}, seed=0)
    with pytest.raises(ValueError, match="holdout"):
        patient_holdout(["a"], {}, seed=0)


# --- through preprocessing ------------------------------------------------------------------------------------------


def patient_corpus(root: Path, patients: int = 40) -> tuple[Path, dict[str, str]]:
    """A manifest with 2-4 tiny images per patient (and 3 rows without one); returns it and {row id: patient}."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows, patient_of = [], {}
    ids = patient_rows(patients, seed=1, without_id=3)
    for index, patient in enumerate(ids):
        row_id = f"img{index:04d}"
        Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8)).save(root / "images" / f"{row_id}.png")
        report = f"FINDINGS: {FINDINGS[index % 5]} {FINDINGS[(index + 2) % 5]}\nIMPRESSION: {FINDINGS[index % 5]}"
        rows.append({"id": row_id, "image": f"images/{row_id}.png", "text": report, "patient": patient or "",
                     "split": "train" if index % 2 else "test"})
        patient_of[row_id] = patient
    manifest = root / "pairs.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, patient_of


def test_preprocess_writes_patient_level_holdout_splits(tmp_path, capsys):
    from datasets import DatasetDict, load_from_disk

    manifest, patient_of = patient_corpus(tmp_path / "raw")
    output = tmp_path / "out"
    assert main(["--source", str(manifest), "--output", str(output), "--id-column", "id", "--patient-column",
                 "patient", "--holdout", "validation=0.2", "test=0.1", "--seed", "5", "--size", "8", "-q"]) == 0
    corpus = load_from_disk(str(output))
    assert isinstance(corpus, DatasetDict) and list(corpus) == ["train", "validation", "test"]
    total = sum(len(split) for split in corpus.values())
    assert total == len(patient_of)
    patients = {name: set(split["patient_id"]) - {None} for name, split in corpus.items()}
    assert not patients["train"] & patients["validation"] and not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    assert abs(len(corpus["validation"]) - 0.2 * total) <= TOLERANCE
    assert abs(len(corpus["test"]) - 0.1 * total) <= TOLERANCE
    # the held-out patients, one per line, beside the data
    for name in ("validation", "test"):
        listed = (output / f"{name}_patients.txt").read_text().splitlines()
        assert listed == sorted(patients[name])
    assert not (output / "train_patients.txt").exists()
    # the same assignment as the function gives on the kept rows' patient ids
    ids = [patient_of[row_id] for row_id in sorted(patient_of)]
    expected = patient_holdout(ids, {"validation": 0.2, "test": 0.1}, seed=5)
    got = {row_id: name for name, split in corpus.items() for row_id in split["id"]}
    assert [got[row_id] for row_id in sorted(patient_of)] == expected
    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["rows"] == {name: len(split) for name, split in corpus.items()}
    assert summary["holdout"]["seed"] == 5 and summary["holdout"]["fractions"] == {"validation": 0.2, "test": 0.1}
    assert summary["holdout"]["patients"] == {name: len(patients[name]) for name in ("validation", "test")}
    assert summary["holdout"]["rows_without_patient_id"] == 3
    assert "validation_patients.txt" in capsys.readouterr().out


def test_holdout_with_official_splits_is_refused_before_any_work(tmp_path, capsys):
    manifest, _ = patient_corpus(tmp_path / "raw", patients=3)
    output = tmp_path / "out"
    code = main(["--source", str(manifest), "--output", str(output), "--split", "train", "--holdout",
                 "validation=0.1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "--holdout" in err and "--split" in err
    assert not output.exists()
    with pytest.raises(ValueError, match="holdout=.*split="):
        preprocess_corpus(manifest, output, split=["train"], holdout={"validation": 0.1})
    assert main(["--source", str(manifest), "--output", str(output), "--seed", "3", "-q"]) == 2
    assert "--seed only applies with --holdout" in capsys.readouterr().err


def test_openi_has_no_official_splits_but_can_be_held_out(tmp_path, capsys):
    from datasets import load_from_disk

    from helpers import openi_tree

    root = openi_tree(tmp_path)
    assert main(["--source", str(root), "--output", str(tmp_path / "x"), "--split", "train", "-q"]) == 2
    assert "--holdout" in capsys.readouterr().err  # the refusal says what to do instead
    assert main(["--source", str(root), "--output", str(tmp_path / "out"), "--holdout", "validation=0.3",
                 "--size", "8", "-q"]) == 0
    corpus = load_from_disk(str(tmp_path / "out"))
    assert set(corpus) == {"train", "validation"}
    assert not set(corpus["train"]["patient_id"]) & set(corpus["validation"]["patient_id"])
    assert sum(len(split) for split in corpus.values()) == 4


def test_evaluation_splits_are_checked_for_shared_patients(tmp_path, caplog):
    """The linear probe, fine-tuning and zero-shot read given splits: patients on two sides are named in a warning;
    splits made by `patient_holdout` from a corpus of 2-4 images per patient pass silently."""
    from datasets import Dataset, DatasetDict

    from convirt_hf.evaluation.corpora import classification_splits

    ids = patient_rows(60, seed=1)
    splits = patient_holdout(ids, {"validation": 0.15, "test": 0.15}, seed=0)
    clean = DatasetDict({name: Dataset.from_dict({"patient_id": [pid for pid, split in zip(ids, splits)
                                                                  if split == name]})
                         for name in ("train", "validation", "test")})
    clean.save_to_disk(str(tmp_path / "clean"))
    with caplog.at_level("WARNING", logger="convirt_hf.data.holdout"):
        loaded = classification_splits(tmp_path / "clean")
    assert sum(len(split) for split in loaded.values()) == len(ids) and not caplog.records

    leaked = DatasetDict({"train": clean["train"],
                          "validation": clean["validation"],
                          "test": Dataset.from_dict({"patient_id": list(clean["test"]["patient_id"])
                                                     + list(clean["train"]["patient_id"][:5])})})
    shared = len(set(clean["train"]["patient_id"][:5]))
    leaked.save_to_disk(str(tmp_path / "leaked"))
    with caplog.at_level("WARNING", logger="convirt_hf.data.holdout"):
        classification_splits(tmp_path / "leaked")
    assert [record.getMessage().split(" patients")[0] for record in caplog.records] == [str(shared)]
    assert "both train/test" in caplog.text and "--holdout" in caplog.text
