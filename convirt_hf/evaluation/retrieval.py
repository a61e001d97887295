"""Zero-shot retrieval as in the paper: rank candidate images by cosine similarity to a query, score Precision@k.

Image-to-image: query images against candidate images. Text-to-image: query sentences (several per category) against
the same candidates. A candidate is relevant when its category equals the query's.

Ties: when several candidates share the score at the k-th place, Precision@k counts the relevant fraction of that tied
group for the places left, which is the expected precision under a random order of ties. It does not depend on the
order candidates are stored in, and a constant similarity gives exactly the base rate.

k larger than a category's number of candidates cannot reach precision 1 for that category, so it is reported as not
applicable (``None``), as is k larger than the candidate set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_KS = (5, 10, 50, 100)


def precision_at_k_single(scores: np.ndarray, relevant: np.ndarray, k: int) -> float:
    """Tie-aware Precision@k of one query: `scores` and boolean `relevant` over all candidates."""
    if not 0 < k <= scores.shape[0]:
        raise ValueError(f"k must be between 1 and the number of candidates ({scores.shape[0]}), got {k}")
    kth_score = np.partition(scores, scores.shape[0] - k)[scores.shape[0] - k]
    above = scores > kth_score
    tied = scores == kth_score
    places_left = k - int(above.sum())
    relevant_in_ties = float(relevant[tied].sum()) * places_left / float(tied.sum())
    return (float(relevant[above].sum()) + relevant_in_ties) / k


def precision_at_k(
    similarity: torch.Tensor | np.ndarray,
    query_labels: Sequence[str],
    candidate_labels: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict:
    """
    Precision@k of every query, per category and on average.

    Args:
        similarity: `(num_queries, num_candidates)` scores, higher is more similar (e.g. cosine similarity).
        query_labels: the category of each query.
        candidate_labels: the category of each candidate.
        ks: cut-offs.

    Returns:
        `{"per_category": {category: {k: value or None}}, "mean": {k: value or None}, "num_queries": {...},
        "num_candidates": {...}}`. `mean` averages over queries (over categories when each has the same number of
        queries); a k is `None` where it exceeds the category's candidate count.
    """
    scores = (similarity.detach().float().cpu().numpy() if isinstance(similarity, torch.Tensor)
              else np.asarray(similarity, dtype=np.float64))
    query_labels = list(query_labels)
    candidates = np.asarray(list(candidate_labels), dtype=object)
    if scores.shape != (len(query_labels), len(candidates)):
        raise ValueError(
            f"similarity has shape {scores.shape}, expected ({len(query_labels)} queries, "
            f"{len(candidates)} candidates)"
        )
    categories = sorted(set(query_labels))
    candidate_counts = {category: int((candidates == category).sum()) for category in categories}
    per_query: dict[int, list[float | None]] = {k: [] for k in ks}
    for row, label in enumerate(query_labels):
        relevant = candidates == label
        for k in ks:
            applicable = k <= candidate_counts[label] and k <= len(candidates)
            per_query[k].append(precision_at_k_single(scores[row], relevant, k) if applicable else None)

    def mean_or_none(values):
        return None if not values or any(v is None for v in values) else float(np.mean(values))

    per_category = {
        category: {
            k: mean_or_none([v for v, label in zip(per_query[k], query_labels) if label == category]) for k in ks
        }
        for category in categories
    }
    return {
        "per_category": per_category,
        "mean": {k: mean_or_none(per_query[k]) for k in ks},
        "num_queries": {category: query_labels.count(category) for category in categories},
        "num_candidates": candidate_counts,
    }


def format_precision_table(results: dict[str, dict], ks: Sequence[int] = DEFAULT_KS) -> str:
    """A markdown table of mean Precision@k for several retrieval directions (`{"image->image": result, ...}`)."""
    header = "| retrieval | " + " | ".join(f"P@{k}" for k in ks) + " |"
    lines = [header, "|" + "---|" * (len(ks) + 1)]
    for name, result in results.items():
        cells = ["n/a" if result["mean"][k] is None else f"{100 * result['mean'][k]:.1f}" for k in ks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
