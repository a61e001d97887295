"""ROC AUC (binary, multi-label, one-vs-rest multi-class) as an `evaluate` module of convirt-hf."""

import datasets
import evaluate

from convirt_hf.evaluation.metrics import CONVIRT_CITATION, multiclass_roc_auc, multilabel_roc_auc, roc_auc

_DESCRIPTION = """\
Exact area under the ROC curve: the probability that a random positive example scores above a random negative one,
ties counting one half (the Mann-Whitney U statistic with mid-ranks). Constant scores give 0.5; a label or class with
only one class present has no AUC and is reported as None, and means are taken over the labels where it is defined.

Configurations:
- "binary": one 0/1 reference and one score per example.
- "multilabel": a row of 0/1 references and a row of scores per example (one column per label); AUC per label and
  their mean, as in the ConVIRT CheXpert evaluation.
- "multiclass": an integer class reference and a row of class scores (e.g. probabilities) per example; one-vs-rest
  AUC per class and their macro mean.
- "default": any of the above, inferred from the first example (scalar/scalar, row/scalar, row/row).
"""

_KWARGS_DESCRIPTION = """
Args:
    prediction_scores: per example a score (binary) or a row of scores (multi-label: one per label; multi-class: one
        per class), higher meaning more positive.
    references: per example a 0/1 label (binary), a row of 0/1 labels (multi-label) or a class index (multi-class).
    label_names (optional): names of the label columns (multi-label) or classes (multi-class); default: indices.

Returns:
    roc_auc: the AUC (binary) or the mean AUC over the labels/classes where it is defined; None if none is.
    per_label (multi-label): {name: AUC or None}.
    per_class (multi-class): {name: AUC or None}.

Examples:
    >>> metric = load_metric("roc_auc")
    >>> metric.compute(references=[0, 0, 1, 1], prediction_scores=[0.1, 0.4, 0.4, 0.8])
    {'roc_auc': 0.875}
"""

_BINARY = datasets.Features({"prediction_scores": datasets.Value("float64"), "references": datasets.Value("float64")})
_MULTICLASS = datasets.Features(
    {"prediction_scores": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("float64")}
)
_MULTILABEL = datasets.Features(
    {
        "prediction_scores": datasets.Sequence(datasets.Value("float64")),
        "references": datasets.Sequence(datasets.Value("float64")),
    }
)
# References are floats, not ints, so that a non-binary label such as 0.5 reaches the checks instead of being
# truncated to 0 by the integer encoding.
_FEATURES = {"binary": _BINARY, "multiclass": _MULTICLASS, "multilabel": _MULTILABEL}


class ConvirtRocAuc(evaluate.Metric):
    def _info(self):
        if self.config_name == "default":
            features = [_BINARY, _MULTICLASS, _MULTILABEL]
        elif self.config_name in _FEATURES:
            features = _FEATURES[self.config_name]
        else:
            choices = ", ".join(repr(name) for name in ("default", *_FEATURES))
            raise ValueError(f"unknown roc_auc configuration {self.config_name!r}; use one of {choices}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CONVIRT_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
            reference_urls=["https://en.wikipedia.org/wiki/Receiver_operating_characteristic#Area_under_the_curve"],
        )

    def _compute(self, prediction_scores, references, label_names=None):
        task = self.config_name
        if task == "default":
            scores_are_rows = len(prediction_scores) > 0 and isinstance(prediction_scores[0], (list, tuple))
            references_are_rows = len(references) > 0 and isinstance(references[0], (list, tuple))
            task = ("multilabel" if references_are_rows else "multiclass") if scores_are_rows else "binary"
        if task == "binary":
            if label_names is not None:
                raise ValueError("label_names applies to multi-label or multi-class inputs, not binary ones")
            return {"roc_auc": roc_auc(references, prediction_scores)}
        if task == "multilabel":
            result = multilabel_roc_auc(references, prediction_scores, label_names=label_names)
            return {"roc_auc": result["mean"], "per_label": result["per_label"]}
        result = multiclass_roc_auc(references, prediction_scores, class_names=label_names)
        return {"roc_auc": result["mean"], "per_class": result["per_class"]}
