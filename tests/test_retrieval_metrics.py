"""Precision@k against hand-computed values, including ties and k beyond a category's size."""

import numpy as np
import pytest
import torch

from convirt_hf.evaluation.retrieval import format_precision_table, precision_at_k, precision_at_k_single


def test_single_query_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    relevant = np.array([True, False, True, True, False])
    assert precision_at_k_single(scores, relevant, 1) == 1.0
    assert precision_at_k_single(scores, relevant, 2) == 0.5
    assert precision_at_k_single(scores, relevant, 3) == pytest.approx(2 / 3)
    assert precision_at_k_single(scores, relevant, 5) == pytest.approx(3 / 5)


def test_ties_count_the_expected_share_of_the_tied_group():
    # top-2 of [0.9, 0.5, 0.5, 0.5]: one place left for three tied candidates, one of which is relevant
    scores = np.array([0.9, 0.5, 0.5, 0.5])
    relevant = np.array([True, True, False, False])
    assert precision_at_k_single(scores, relevant, 2) == pytest.approx((1 + 1 / 3) / 2)
    # the storage order of tied candidates does not matter
    assert precision_at_k_single(scores, relevant[[0, 2, 3, 1]], 2) == pytest.approx((1 + 1 / 3) / 2)
    # constant scores give the base rate
    assert precision_at_k_single(np.zeros(8), np.array([1, 1, 0, 0, 0, 0, 0, 0], bool), 4) == pytest.approx(0.25)


def test_k_out_of_range_for_a_single_query():
    with pytest.raises(ValueError, match="number of candidates"):
        precision_at_k_single(np.zeros(3), np.ones(3, bool), 4)


def test_per_category_and_mean_with_not_applicable_k():
    candidate_labels = ["a", "a", "a", "b", "b", "c"]
    query_labels = ["a", "b"]
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.7, 0.2, 0.0],  # a: ranks a, a, b, b, a, c
            [0.1, 0.2, 0.3, 0.9, 0.0, 0.8],  # b: ranks b, c, a, a, a, b
        ]
    )
    result = precision_at_k(similarity, query_labels, candidate_labels, ks=(1, 2, 3, 4))
    assert result["per_category"]["a"][1] == 1.0
    assert result["per_category"]["a"][2] == 1.0
    assert result["per_category"]["a"][3] == pytest.approx(2 / 3)
    assert result["per_category"]["a"][4] is None  # only 3 candidates of category a
    assert result["per_category"]["b"][1] == 1.0
    assert result["per_category"]["b"][2] == 0.5
    assert result["per_category"]["b"][3] is None  # only 2 candidates of category b
    assert result["mean"][2] == pytest.approx(0.75)
    assert result["mean"][3] is None
    assert result["num_candidates"] == {"a": 3, "b": 2}
    table = format_precision_table({"image->image": result}, ks=(1, 2, 3))
    assert "| image->image | 100.0 | 75.0 | n/a |" in table


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="expected \\(2 queries, 3 candidates\\)"):
        precision_at_k(np.zeros((2, 4)), ["a", "b"], ["a", "b", "c"])
