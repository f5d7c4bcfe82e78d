"""text-classification: softmax (or sigmoid for multi-label) over logits, labels from ``id2label``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Encoded, result_scores, top_result

OUTPUT = "logits"


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float [..., n] (max-subtracted, float32)."""
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def id2label(config: dict, n: int) -> list[str]:
    """Labels in class-id order from ``config.json`` (``LABEL_i`` when missing)."""
    mapping = {int(k): v for k, v in (config.get("id2label") or {}).items()}
    return [mapping.get(i, f"LABEL_{i}") for i in range(n)]


class Handler:
    """Logits [batch, num_labels] → ``[{"label", "score"}, ...]`` per input, best first."""

    name = "text-classification"
    output = OUTPUT
    accepts_pairs = True  # NLI-style sentence-pair classifiers
    requires_pairs = False
    reference_class = "AutoModelForSequenceClassification"
    optimum_task = "text-classification"
    pipeline_task = "text-classification"
    pipeline_kwargs: dict = {}
    ort_model_class = "ORTModelForSequenceClassification"

    @staticmethod
    def agreement(reference: list, candidate: list) -> dict:
        """``label_agreement`` (fraction of equal top-1 labels) and ``max_abs_score_diff`` of the top-1 scores."""
        a, b = [top_result(r)["label"] for r in reference], [top_result(r)["label"] for r in candidate]
        sa, sb = result_scores(reference), result_scores(candidate)
        return {"n": len(reference), "label_agreement": sum(x == y for x, y in zip(a, b)) / len(reference),
                "max_abs_score_diff": max(abs(x - y) for x, y in zip(sa, sb))}

    def __init__(self, model_dir: str | Path, config: dict):
        self.config = config
        self.multi_label = config.get("problem_type") == "multi_label_classification"

    def probabilities(self, output: np.ndarray) -> np.ndarray:
        """float32 [batch, num_labels] class probabilities."""
        return sigmoid(output) if self.multi_label or output.shape[-1] == 1 else softmax(output)

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list:
        params = params or {}
        probs = self.probabilities(output)
        labels = id2label(self.config, probs.shape[-1])
        top_k = params.get("top_k", 1)
        k = probs.shape[-1] if top_k is None else max(1, min(int(top_k), probs.shape[-1]))
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": labels[i], "score": float(row[i])} for i in order])
        return out
