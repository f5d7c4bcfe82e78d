"""ranking (cross-encoders): one relevance score per (query, passage) pair.

``score`` is ``sigmoid(logit)`` by default, as sentence-transformers' ``CrossEncoder`` and
TEI's ``/rerank`` do for one-label models; ``raw_scores=True`` returns the logit. With two
or more labels the score is the softmax probability of the last label.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from .base import Encoded, TaskParams, result_scores
from .text_classification import sigmoid, softmax

OUTPUT = "logits"


class Handler:
    """Logits [batch, 1 or num_labels] → float scores per pair."""

    name = "ranking"
    output = OUTPUT
    accepts_pairs = True
    requires_pairs = True
    reference_class = "AutoModelForSequenceClassification"
    optimum_task = "text-classification"
    pipeline_task = "text-classification"
    pipeline_kwargs: dict = {"function_to_apply": "none"}
    ort_model_class = "ORTModelForSequenceClassification"

    @staticmethod
    def agreement(reference: list, candidate: list) -> dict:
        """``max_abs_score_diff`` of the pair scores."""
        sa, sb = result_scores(reference), result_scores(candidate)
        return {"n": len(reference), "max_abs_score_diff": max(abs(x - y) for x, y in zip(sa, sb))}

    def __init__(self, model_dir: str | Path, config: dict):
        self.config = config

    def scores(self, output: np.ndarray, raw: bool = False) -> np.ndarray:
        """float32 [batch] scores: logits when ``raw`` (one-label models), else probabilities."""
        if output.shape[-1] == 1:
            logits = output[:, 0].astype(np.float32)
            return logits if raw else sigmoid(logits)
        return softmax(output)[:, -1]

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list[float]:
        """One float score per (query, passage) pair, in input order (see :meth:`scores`)."""
        raw = bool((params or {}).get("raw_scores", False))
        return [float(s) for s in self.scores(output, raw)]

    class Params(TaskParams):
        """``raw_scores``, plus the truncation options."""

        field_help: ClassVar[dict[str, str]] = {**TaskParams.field_help,
                                                "raw_scores": "`raw_scores` must be true or false."}
        raw_scores: bool = Field(False, description="true: the logit instead of sigmoid(logit) (one-label models).")

    capability = "rerank"
    root_wraps_single = False

    def info(self, dim: int | None = None) -> dict:
        """``{"reranker": {"id2label": {"0": label, ...}}}``."""
        return {"reranker": {"id2label": {str(k): v for k, v in (self.config.get("id2label") or {}).items()}}}
