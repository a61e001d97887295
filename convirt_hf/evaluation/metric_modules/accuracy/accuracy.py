"""Accuracy as an `evaluate` module of convirt-hf: from labels, class-score rows (argmax) or thresholded scores."""

import datasets
import evaluate
import numpy as np

from convirt_hf.evaluation.metrics import CONVIRT_CITATION, accuracy, predictions_from_scores

_DESCRIPTION = """\
Accuracy: the fraction of examples whose prediction equals the reference. Predictions may be class labels (numbers
or strings), rows of class scores (the argmax class is predicted), or binary scores with `threshold` (score >=
threshold predicts 1).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per example a class label (number or string), a row of class scores, or a binary score.
    references: per example the true class label (number or string, like the predictions).
    threshold (optional float): treat scalar predictions as binary scores and predict 1 where score >= threshold
        (0.5 is the usual choice); without it scalar predictions must already be integer class labels.

Returns:
    accuracy: the fraction of correct predictions.

Examples:
    >>> metric = load_metric("accuracy")
    >>> metric.compute(predictions=[[0.2, 0.8], [0.6, 0.4]], references=[1, 1])
    {'accuracy': 0.5}
"""

# Tried in order on the first example: string labels, score rows, then numbers. Numbers are floats so that a score
# passed without `threshold` is noticed instead of being truncated to an integer label by the encoding.
_FEATURES = [
    datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    datasets.Features(
        {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("float64")}
    ),
    datasets.Features({"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}),
]


class ConvirtAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CONVIRT_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=["https://en.wikipedia.org/wiki/Accuracy_and_precision"],
        )

    def _compute(self, predictions, references, threshold=None):
        are_rows = len(predictions) > 0 and isinstance(predictions[0], (list, tuple))
        are_strings = len(predictions) > 0 and isinstance(predictions[0], str)
        if are_rows:
            if threshold is not None:
                raise ValueError("threshold applies to scalar binary scores, not to rows of class scores (argmax)")
            predictions = predictions_from_scores(predictions)
        elif threshold is not None:
            if are_strings:
                raise ValueError("threshold applies to numeric scores, not to string labels")
            predictions = predictions_from_scores(predictions, threshold=float(threshold))
        elif not are_strings:
            values = np.asarray(predictions, dtype=np.float64)
            if (values != np.round(values)).any():
                raise ValueError(
                    "predictions are not class labels (found non-integer values); pass threshold=0.5 to threshold "
                    "binary scores, or rows of class scores to take the argmax"
                )
        return {"accuracy": accuracy(references, predictions)}
