"""Classification/retrieval metrics and their `evaluate` modules, against values worked out by hand.

AUC by hand: AUC = (sum over positive/negative pairs of [pos > neg] + 1/2 [pos == neg]) / (n_pos * n_neg).
"""

from __future__ import annotations

import numpy as np
import pytest

from convirt_hf.evaluation import retrieval
from convirt_hf.evaluation.metrics import (
    accuracy,
    available_metrics,
    load_metric,
    multiclass_roc_auc,
    multilabel_roc_auc,
    precision_at_k,
    predictions_from_scores,
    roc_auc,
)


@pytest.fixture(scope="module")
def roc_auc_metric():
    return load_metric("roc_auc")


@pytest.fixture(scope="module")
def accuracy_metric():
    return load_metric("accuracy")


@pytest.fixture(scope="module")
def precision_metric():
    return load_metric("precision_at_k")


# ------------------------------------------------------------------------------------------------------ binary AUC


def test_auc_with_a_tie_by_hand():
    # positives 0.4, 0.8; negatives 0.1, 0.4.
    # 0.4 vs 0.1 -> 1, 0.4 vs 0.4 -> 1/2, 0.8 vs 0.1 -> 1, 0.8 vs 0.4 -> 1: 3.5 / 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.4, 0.8]) == 0.875


def test_auc_three_way_tie_by_hand():
    # positives 0.9, 0.5, 0.5; negatives 0.5, 0.2.
    # 0.9: 1 + 1; each 0.5: 1/2 (vs 0.5) + 1 (vs 0.2) -> (2 + 1.5 + 1.5) / 6 = 5/6
    # (mid-ranks: 0.2 -> 1, the three 0.5 -> 3, 0.9 -> 5; U = (5 + 3 + 3) - 3*4/2 = 5)
    assert roc_auc([1, 1, 0, 0, 1], [0.9, 0.5, 0.5, 0.2, 0.5]) == pytest.approx(5 / 6)


def test_auc_perfect_inverted_constant():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    # every pair ties: 4 pairs * 1/2 / 4
    assert roc_auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5


def test_auc_bool_labels_and_integer_scores():
    # positive 1 vs negative 2 -> 0, positive 3 vs negative 2 -> 1: 1 / 2
    assert roc_auc(np.array([False, True, True]), np.array([2, 1, 3])) == 0.5


def test_auc_one_class_is_none():
    assert roc_auc([1, 1, 1], [0.1, 0.5, 0.9]) is None
    assert roc_auc([0, 0], [0.1, 0.5]) is None


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([0, 1, 1], [0.1, 0.2], "shape mismatch"),
        ([0, 2, 1], [0.1, 0.2, 0.3], "binary"),
        ([0, 0.5, 1], [0.1, 0.2, 0.3], "binary"),
        (["a", "b"], [0.1, 0.2], "binary"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "finite"),
        ([0, 1, 1], [0.1, float("inf"), 0.3], "finite"),
        ([], [], "empty"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_auc_bad_input(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_auc(labels, scores)


def test_auc_matches_scikit_learn_on_random_data_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for size in (2, 7, 50, 400):
        for _ in range(5):
            labels = rng.integers(0, 2, size)
            if labels.min() == labels.max():
                labels[0] = 1 - labels[0]
            scores = rng.integers(0, 6, size) / 5.0  # few distinct values: many ties
            assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


# -------------------------------------------------------------------------------------------- multi-label / -class


MULTILABEL_LABELS = [[0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 1, 0]]
MULTILABEL_SCORES = [[0.1, 0.3, 0.9], [0.4, 0.2, 0.1], [0.4, 0.5, 0.2], [0.8, 0.1, 0.3]]
# column "a": labels 0,0,1,1 scores 0.1,0.4,0.4,0.8 -> 0.875 (the tie case above)
# column "b": all positive -> undefined
# column "c": the positive 0.9 beats 0.1, 0.2, 0.3 -> 1.0
# mean over the defined labels: (0.875 + 1.0) / 2 = 0.9375


def test_multilabel_auc_by_hand_skips_an_undefined_label():
    result = multilabel_roc_auc(MULTILABEL_LABELS, MULTILABEL_SCORES, label_names=["a", "b", "c"])
    assert result == {"per_label": {"a": 0.875, "b": None, "c": 1.0}, "mean": 0.9375}
    # default names are the column indices
    assert list(multilabel_roc_auc(MULTILABEL_LABELS, MULTILABEL_SCORES)["per_label"]) == [0, 1, 2]


def test_multilabel_auc_all_undefined_and_bad_input():
    all_undefined = multilabel_roc_auc([[1, 0], [1, 0]], [[0.2, 0.3], [0.4, 0.5]])
    assert all_undefined == {"per_label": {0: None, 1: None}, "mean": None}
    with pytest.raises(ValueError, match="2-D"):
        multilabel_roc_auc([0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape mismatch"):
        multilabel_roc_auc([[0, 1], [1, 0]], [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="label names"):
        multilabel_roc_auc([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], label_names=["only-one"])
    with pytest.raises(ValueError, match="rectangular"):
        multilabel_roc_auc([[0, 1], [1]], [[0.1, 0.2], [0.3, 0.4]])


MULTICLASS_LABELS = [0, 1, 2, 2]
MULTICLASS_SCORES = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]]
# class 0 vs rest: positive 0.6 vs 0.2, 0.1, 0.2 -> 3/3 = 1.0
# class 1 vs rest: positive 0.5 vs 0.3 (1), 0.2 (1), 0.6 (0) -> 2/3
# class 2 vs rest: positives 0.7, 0.2 vs negatives 0.1, 0.3 -> (1 + 1 + 1 + 0) / 4 = 0.75
# macro mean: (1 + 2/3 + 3/4) / 3 = 29/36


def test_one_vs_rest_multiclass_auc_by_hand():
    result = multiclass_roc_auc(MULTICLASS_LABELS, MULTICLASS_SCORES, class_names=["x", "y", "z"])
    assert result["per_class"] == pytest.approx({"x": 1.0, "y": 2 / 3, "z": 0.75})
    assert result["mean"] == pytest.approx(29 / 36)


def test_one_vs_rest_absent_class_is_none():
    # class 2 never occurs; class 0: 0.6 > 0.2 -> 1.0; class 1: 0.5 > 0.3 -> 1.0
    result = multiclass_roc_auc([0, 1], [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    assert result == {"per_class": {0: 1.0, 1: 1.0, 2: None}, "mean": 1.0}


def test_one_vs_rest_bad_input():
    with pytest.raises(ValueError, match="range"):
        multiclass_roc_auc([0, 3], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="integer"):
        multiclass_roc_auc([0, 0.5], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="2-D"):
        multiclass_roc_auc([0, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="shape mismatch"):
        multiclass_roc_auc([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]])


def test_multilabel_and_multiclass_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (60, 4))
    scores = rng.integers(0, 4, (60, 4)) / 3.0
    assert multilabel_roc_auc(labels, scores)["mean"] == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores, average="macro"), abs=1e-12
    )
    classes = np.arange(60) % 3
    probabilities = rng.dirichlet(np.ones(3), 60).round(1) + 1e-3  # rounded: ties within each column
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert multiclass_roc_auc(classes, probabilities)["mean"] == pytest.approx(
        sklearn_metrics.roc_auc_score(classes, probabilities, multi_class="ovr", average="macro"), abs=1e-12
    )


# -------------------------------------------------------------------------------------------------------- accuracy


def test_accuracy_and_hard_predictions_by_hand():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5  # positions 0 and 2 agree
    assert accuracy(["a", "b", "c"], ["a", "b", "b"]) == pytest.approx(2 / 3)
    # argmax of rows (a tie goes to the first class); 0.5 threshold is inclusive
    assert predictions_from_scores([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]).tolist() == [1, 0, 0]
    assert predictions_from_scores([0.49, 0.5, 0.9]).tolist() == [0, 1, 1]
    assert predictions_from_scores([[0.49], [0.5]]).tolist() == [0, 1]
    assert predictions_from_scores([0.2, 0.4], threshold=0.3).tolist() == [0, 1]
    with pytest.raises(ValueError, match="shape mismatch"):
        accuracy([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="1-D"):
        accuracy([1, 0], [[0.2, 0.8], [0.6, 0.4]])


# -------------------------------------------------------------------------------------------- the evaluate modules


def test_available_metrics_and_unknown_name():
    assert available_metrics() == ["accuracy", "precision_at_k", "roc_auc"]
    with pytest.raises(ValueError, match="unknown metric 'auroc'.*accuracy, precision_at_k, roc_auc"):
        load_metric("auroc")


def test_roc_auc_module(roc_auc_metric):
    assert "Mann-Whitney" in roc_auc_metric.description and "2010.00747" in roc_auc_metric.citation
    assert roc_auc_metric.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.4, 0.8]) == {"roc_auc": 0.875}
    assert roc_auc_metric.compute(references=[1, 1], prediction_scores=[0.1, 0.4]) == {"roc_auc": None}
    # the default configuration infers multi-label (rows/rows) and multi-class (rows/scalars) from the inputs
    multilabel = roc_auc_metric.compute(
        references=np.array(MULTILABEL_LABELS),
        prediction_scores=np.array(MULTILABEL_SCORES),
        label_names=["a", "b", "c"],
    )
    assert multilabel == {"roc_auc": 0.9375, "per_label": {"a": 0.875, "b": None, "c": 1.0}}
    multiclass = roc_auc_metric.compute(references=MULTICLASS_LABELS, prediction_scores=MULTICLASS_SCORES)
    assert multiclass["roc_auc"] == pytest.approx(29 / 36)
    assert multiclass["per_class"] == pytest.approx({0: 1.0, 1: 2 / 3, 2: 0.75})
    # labels are encoded as floats, so a non-binary one reaches the check instead of being truncated to 0
    with pytest.raises(ValueError, match="binary"):
        roc_auc_metric.compute(references=[0, 0.5, 1], prediction_scores=[0.1, 0.2, 0.3])


def test_roc_auc_module_configurations():
    multilabel = load_metric("roc_auc", "multilabel")
    result = multilabel.compute(references=MULTILABEL_LABELS, prediction_scores=MULTILABEL_SCORES)
    assert result == {"roc_auc": 0.9375, "per_label": {0: 0.875, 1: None, 2: 1.0}}
    with pytest.raises(ValueError):  # scalars do not fit the multi-label features
        multilabel.compute(references=[0, 1], prediction_scores=[0.1, 0.2])
    multiclass = load_metric("roc_auc", "multiclass")
    result = multiclass.compute(references=[0, 1], prediction_scores=[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    assert result == {"roc_auc": 1.0, "per_class": {0: 1.0, 1: 1.0, 2: None}}
    assert load_metric("roc_auc", "binary").compute(references=[0, 1], prediction_scores=[0.3, 0.3]) == {"roc_auc": 0.5}
    with pytest.raises(ValueError, match="unknown roc_auc configuration"):
        load_metric("roc_auc", "micro")


def test_accuracy_module(accuracy_metric):
    assert accuracy_metric.compute(predictions=[1, 0, 1, 1], references=[1, 1, 1, 0]) == {"accuracy": 0.5}
    # argmax rows [1, 0, 0] vs [1, 1, 0]
    rows = [[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]]
    assert accuracy_metric.compute(predictions=rows, references=[1, 1, 0]) == pytest.approx({"accuracy": 2 / 3})
    # thresholded [1, 0, 1] vs [1, 1, 1]
    scores = [0.7, 0.2, 0.5]
    assert accuracy_metric.compute(predictions=scores, references=[1, 1, 1], threshold=0.5) == pytest.approx(
        {"accuracy": 2 / 3}
    )
    assert accuracy_metric.compute(predictions=["x", "y"], references=["x", "x"]) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="threshold"):
        accuracy_metric.compute(predictions=scores, references=[1, 1, 1])
    with pytest.raises(ValueError, match="[Mm]ismatch"):
        accuracy_metric.compute(predictions=[1, 0], references=[1, 0, 1])
    # evaluate's own default, arrow cache files under HF_HOME with file locks, works too
    on_disk = load_metric("accuracy", keep_in_memory=False)
    assert on_disk.compute(predictions=[[0.1, 0.9]], references=[1]) == {"accuracy": 1.0}


# Candidates a, a, b, b, b.
PRECISION_CANDIDATES = ["a", "a", "b", "b", "b"]
PRECISION_QUERIES = ["a", "b", "b"]
PRECISION_ROWS = [
    # a: 0.9 is an a; then three tied at 0.5 (one a, two b).
    #   P@1 = 1; P@2 = (1 + 1 place * 1/3) / 2 = 2/3; P@3: category a has only 2 candidates -> None
    [0.9, 0.5, 0.5, 0.5, 0.1],
    # b: 0.8 is a b; then four tied at 0.2 (a, a, b, b), half relevant.
    #   P@1 = 1; P@2 = (1 + 1 * 2/4) / 2 = 3/4; P@3 = (1 + 2 * 2/4) / 3 = 2/3
    [0.2, 0.2, 0.8, 0.2, 0.2],
    # b: ranks a (0.9), b (0.4), b (0.3), b (0.2), a (0.1): P@1 = 0; P@2 = 1/2; P@3 = 2/3
    [0.1, 0.9, 0.3, 0.2, 0.4],
]
# per category b: P@1 (1 + 0)/2 = 1/2, P@2 (3/4 + 1/2)/2 = 5/8, P@3 2/3; mean over the three queries:
# P@1 (1 + 1 + 0)/3 = 2/3, P@2 (2/3 + 3/4 + 1/2)/3 = 23/36, P@3 None (a's query has none).
# k = 6 exceeds the 5 candidates: None everywhere.


def test_precision_at_k_module_by_hand(precision_metric):
    result = precision_metric.compute(
        predictions=PRECISION_ROWS, references=PRECISION_QUERIES, candidate_labels=PRECISION_CANDIDATES, ks=[1, 2, 3, 6]
    )
    assert result["per_category"]["a"] == pytest.approx({1: 1.0, 2: 2 / 3, 3: None, 6: None})
    assert result["per_category"]["b"] == pytest.approx({1: 0.5, 2: 5 / 8, 3: 2 / 3, 6: None})
    assert result["mean"] == pytest.approx({1: 2 / 3, 2: 23 / 36, 3: None, 6: None})
    assert result["precision@1"] == pytest.approx(2 / 3) and result["precision@6"] is None
    assert result["num_queries"] == {"a": 1, "b": 2} and result["num_candidates"] == {"a": 2, "b": 3}
    # the module is the retrieval function, not a second implementation
    assert precision_at_k is retrieval.precision_at_k
    direct = precision_at_k(np.array(PRECISION_ROWS), PRECISION_QUERIES, PRECISION_CANDIDATES, ks=[1, 2, 3, 6])
    assert {k: result[k] for k in direct} == direct


def test_precision_at_k_module_integer_labels_and_bad_input(precision_metric):
    # one query of class 1 over candidates 1, 0, 1 with a constant row: the base rate 2/3 at every k
    result = precision_metric.compute(
        predictions=np.full((1, 3), 0.5), references=[1], candidate_labels=[1, 0, 1], ks=[1, 2, 3]
    )
    assert result["per_category"][1] == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: None})
    with pytest.raises(ValueError, match="candidate_labels"):
        precision_metric.compute(predictions=[[0.1, 0.2]], references=["a"])
    with pytest.raises(ValueError, match="lengths"):
        precision_metric.compute(predictions=[[0.1, 0.2], [0.3]], references=["a", "b"], candidate_labels=["a", "b"])
    with pytest.raises(ValueError, match="3 candidate_labels"):
        precision_metric.compute(predictions=[[0.1, 0.2]], references=["a"], candidate_labels=["a", "b", "a"], ks=[1])
    # the default ks (5, 10, 50, 100) are all beyond 2 candidates
    default = precision_metric.compute(predictions=[[0.1, 0.2]], references=["a"], candidate_labels=["a", "b"])
    assert default["mean"] == {5: None, 10: None, 50: None, 100: None}
