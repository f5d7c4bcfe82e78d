"""ranking (cross-encoders): one relevance score per (query, passage) pair.

``score`` is ``sigmoid(logit)`` by default, as sentence-transformers' ``CrossEncoder`` and
TEI's ``/rerank`` do for one-label models; ``raw_scores=True`` returns the logit. With two
or more labels the score is the softmax probability of the last label.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Iterable

import numpy as np
from pydantic import Field

from .. import metrics
from ..errors import EvalDataError
from .base import Encoded, TaskParams, result_scores
from .evaluation import EvalSet, RankingGroup, TaskOutputs, TaskScore, bound, need_column, need_labels, row_value
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

    sentence_embeddings = False
    continuous_metric = False
    reports_metric_step = False
    fidelity_metric = "top1_agreement"
    eval_labels = "relevance"
    eval_columns: dict = {"text": "query", "text_pair": "passage", "label": "label"}
    word_columns = None

    def collect(self, batches: Iterable[tuple[np.ndarray, Encoded]]) -> TaskOutputs:
        """``values``: float32 [n_pairs] scores, logits for one-label models (sigmoid saturates to ties in float32)."""
        return TaskOutputs(np.concatenate([self.scores(raw, raw=True) for raw, _ in batches], axis=0))

    @staticmethod
    def gate(data: EvalSet, reference: TaskOutputs, candidate: TaskOutputs, config: dict,
             tolerance: float) -> TaskScore:
        """Relative loss of MRR (labelled, or against the reference's top passage) ≤ τ; with labels also
        top-1 agreement with the reference (the same passage ranked first) ≥ 1 − 2τ, for the same reason
        as label agreement: MRR alone let a candidate that moved the top passage of half the queries pass
        when the moves did not change the relevant passage's rank. Without labels the MRR check already
        implies it (each query whose top passage changed costs at least 1/2 of its reciprocal rank, so
        MRR ≥ 1 − τ needs top-1 agreement ≥ 1 − 2τ). Details: ``top1_agreement``, ``logit_nmse``,
        ``max_abs_score_diff`` and with labels the candidate's nDCG@10."""
        bounds = np.cumsum([0] + [len(g.passages) for g in data.groups])
        ref_groups = [reference.values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        cand_groups = [candidate.values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        details = {"max_abs_score_diff": float(np.abs(reference.values - candidate.values).max()),
                   "logit_nmse": metrics.nmse(reference.values, candidate.values),
                   "top1_agreement": float(np.mean([np.argmax(r) == np.argmax(c)
                                                    for r, c in zip(ref_groups, cand_groups)]))}
        if data.labelled:
            relevant = [set(g.relevant) for g in data.groups]
            r, o = metrics.mrr(ref_groups, relevant), metrics.mrr(cand_groups, relevant)
            details["optimised_ndcg@10"] = metrics.ndcg_at_k(cand_groups, relevant, k=10)
        else:
            relevant = [{int(np.argmax(s))} for s in ref_groups]
            r, o = 1.0, metrics.mrr(cand_groups, relevant)
        loss = metrics.relative_loss(r, o)
        checks = (bound("relative loss of mrr", loss, tolerance, loss, False),)
        if data.labelled:
            agree = details["top1_agreement"]
            checks += (bound("top1_agreement", agree, 1 - 2 * tolerance, (1 - agree) / 2),)
        return TaskScore("mrr", r, o, checks, details)

    @classmethod
    def eval_set(cls, name: str, rows: list[tuple[str, dict]], found: str) -> EvalSet:
        """Columns ``query``, ``passage`` and ``label`` 1 (relevant) or 0, grouped by query in first-seen order;
        every query needs a relevant passage."""
        need_column(name, rows, "query", found, "input", "--text-column")
        need_column(name, rows, "passage", found, "passage", "--text-pair-column")
        need_labels(name, cls.name, rows, found)
        grouped: dict[str, tuple[list, set]] = {}
        for n, row in rows:
            passages, relevant = grouped.setdefault(row_value(name, n, row, "query", str), ([], set()))
            if str(row.get("label")) not in ("0", "1", "True", "False"):
                raise EvalDataError(f"{name} {n}: 'label' must be 1 (relevant) or 0 (not relevant).")
            if str(row["label"]) in ("1", "True"):
                relevant.add(len(passages))
            passages.append(row_value(name, n, row, "passage", str))
        missing = [q for q, (_, rel) in grouped.items() if not rel]
        if missing:
            raise EvalDataError(f"{name}: query {missing[0]!r} has no passage with label 1; "
                                "give every query at least one relevant passage.")
        groups = tuple(RankingGroup(q, tuple(p), frozenset(r)) for q, (p, r) in grouped.items())
        return EvalSet(name, cls.name, groups=groups)

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
    http_defaults: ClassVar[dict] = {}

    def info(self, dim: int | None = None) -> dict:
        """``{"reranker": {"id2label": {"0": label, ...}}}``."""
        return {"reranker": {"id2label": {str(k): v for k, v in (self.config.get("id2label") or {}).items()}}}
