"""Top-1 accuracy as an ``evaluate`` metric module shipped with hf_mixssl.

``evaluate.load("accuracy")`` fetches its script from the Hub; this copy is loaded by path
(``hf_mixssl.evaluation.load_metric("accuracy")``) so evaluation works offline.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy = (number of predictions equal to the reference) / (number of predictions)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): ground-truth class indices.
Returns:
    accuracy (`float`): fraction of correct predictions, in [0, 1].
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("accuracy needs at least one prediction")
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(predictions)}
