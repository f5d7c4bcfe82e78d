"""text-classification: softmax (or sigmoid for multi-label) over logits, labels from ``id2label``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import BeforeValidator, Field

from .base import Encoded, TaskParams, result_scores, top_result

OUTPUT = "logits"


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float [..., n] (max-subtracted, float32)."""
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _json_integer(value):
    """Let an integral JSON number such as 2.0 through to int validation (JSON Schema counts it as an integer);
    refuse booleans and strings, which lax int validation would convert."""
    if isinstance(value, (bool, str)):
        raise ValueError("not an integer")
    return value


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
        """``[[{"label", "score"}, ...], ...]``: per input, the ``top_k`` best labels (default 1; None: all),
        best first. ``score`` is the probability (:meth:`probabilities`), or as ``function_to_apply`` says
        (``"softmax"``, ``"sigmoid"``, ``"none"``: the logit, as transformers' pipeline); ``raw_scores``
        (TEI's option) is ``"none"``."""
        params = params or {}
        function = "none" if params.get("raw_scores") else params.get("function_to_apply")
        probs = {"none": output.astype(np.float32), "sigmoid": sigmoid(output), "softmax": softmax(output)}[function] \
            if function else self.probabilities(output)
        labels = id2label(self.config, probs.shape[-1])
        top_k = params.get("top_k", 1)
        k = probs.shape[-1] if top_k is None else max(1, min(int(top_k), probs.shape[-1]))
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            out.append([{"label": labels[i], "score": float(row[i])} for i in order])
        return out

    class Params(TaskParams):
        """``top_k``, ``raw_scores`` and ``function_to_apply``, plus the truncation options."""

        field_help: ClassVar[dict[str, str]] = {
            **TaskParams.field_help, "top_k": "`top_k` must be an integer ≥ 1, or null for all labels.",
            "raw_scores": "`raw_scores` must be true or false.",
            "function_to_apply": "`function_to_apply` must be \"softmax\", \"sigmoid\" or \"none\" (logits)."}
        top_k: Annotated[int, Field(ge=1, strict=False), BeforeValidator(_json_integer)] | None = Field(
            1, description="How many labels per input, best first (default 1); null: all labels.")
        raw_scores: bool = Field(False, description="true: scores are the logits, without softmax or sigmoid (TEI).")
        function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
            None, description="What turns logits into scores (transformers' pipeline, the Hugging Face Inference "
                              "API): default sigmoid for multi-label and one-label models, else softmax; \"none\" "
                              "as `raw_scores`.")

    capability = "classify"
    root_wraps_single = True

    def info(self, dim: int | None = None) -> dict:
        """``{"classifier": {"id2label": {"0": label, ...}, "label2id": {label: 0, ...}}}``."""
        labels = {str(k): v for k, v in (self.config.get("id2label") or {}).items()}
        return {"classifier": {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}}
