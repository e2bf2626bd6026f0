"""Top-k accuracy as an ``evaluate`` metric module shipped with hf_mixssl (loaded by path, offline).

A prediction is a ranked list of class indices (best first); it is correct at ``k`` when the reference is
among its first ``k`` entries. ``k=1`` is top-1 accuracy.
"""

import datasets
import evaluate

_DESCRIPTION = "Top-k accuracy = fraction of samples whose reference is among the first k ranked predictions."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `int`): class indices ranked best first (at least k per sample).
    references (`list` of `int`): ground-truth class indices.
    k (`int`, defaults to 5): how many ranked predictions count.
Returns:
    top_k_accuracy (`float`): in [0, 1].
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=5):
        if len(predictions) == 0:
            raise ValueError("top_k_accuracy needs at least one prediction")
        if k < 1 or any(len(p) < k for p in predictions):
            raise ValueError(f"every prediction needs at least k={k} ranked classes")
        correct = sum(int(r in list(p)[:k]) for p, r in zip(predictions, references))
        return {"top_k_accuracy": correct / len(predictions)}
