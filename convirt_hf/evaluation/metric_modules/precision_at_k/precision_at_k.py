"""Retrieval Precision@k (tie-aware, per category) as an `evaluate` module of convirt-hf."""

import datasets
import evaluate

from convirt_hf.evaluation.metrics import CONVIRT_CITATION, DEFAULT_KS, precision_at_k

_DESCRIPTION = """\
Precision@k of content-based retrieval as in ConVIRT: each query ranks all candidates by its similarity scores and a
candidate is relevant when its category equals the query's. When candidates tie at the k-th place the relevant share
of the tied group fills the places left (the expected precision under a random order of ties). A k larger than the
candidate set or than the query's category is reported as None (not applicable).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per query, its row of similarity scores over all candidates (a row of the similarity matrix),
        higher meaning more similar.
    references: per query, its category (string or integer).
    candidate_labels: the category of each candidate, in the order of the score rows.
    ks (optional): the cut-offs, default (5, 10, 50, 100).

Returns:
    precision@<k>: mean Precision@k over the queries, for each k (None where not applicable).
    mean: {k: mean Precision@k}.
    per_category: {category: {k: mean Precision@k over that category's queries, or None}}.
    num_queries, num_candidates: {category: count}.

Examples:
    >>> metric = load_metric("precision_at_k")
    >>> metric.compute(predictions=[[0.9, 0.1, 0.5]], references=["a"], candidate_labels=["a", "b", "a"], ks=[1])
    {'precision@1': 1.0, 'per_category': {'a': {1: 1.0}}, 'mean': {1: 1.0}, 'num_queries': {'a': 1},
     'num_candidates': {'a': 2}}
"""

_FEATURES = [
    datasets.Features(
        {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("string")}
    ),
    datasets.Features(
        {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
    ),
]


class ConvirtPrecisionAtK(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CONVIRT_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=["https://arxiv.org/abs/2010.00747"],
        )

    def _compute(self, predictions, references, candidate_labels=None, ks=DEFAULT_KS):
        if candidate_labels is None:
            raise ValueError("precision_at_k needs candidate_labels: the category of each candidate")
        ks = [ks] if isinstance(ks, int) else [int(k) for k in ks]
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        lengths = {len(row) for row in predictions}
        if len(lengths) > 1:
            raise ValueError(f"every query needs one score per candidate; got rows of lengths {sorted(lengths)}")
        candidate_labels = list(candidate_labels)
        if predictions and len(predictions[0]) != len(candidate_labels):
            raise ValueError(
                f"score rows have {len(predictions[0])} entries but there are {len(candidate_labels)} candidate_labels"
            )
        result = precision_at_k(predictions, references, candidate_labels, ks=ks)
        return {**{f"precision@{k}": result["mean"][k] for k in ks}, **result}
