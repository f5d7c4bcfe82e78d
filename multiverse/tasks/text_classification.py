"""text-classification: softmax (or sigmoid for multi-label) over logits, labels from ``id2label``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Iterable, Literal, Sequence

import numpy as np
from pydantic import BeforeValidator, Field

from .. import metrics
from ..errors import EvalDataError
from .base import Encoded, TaskParams, result_scores, top_result
from .evaluation import EvalSet, TaskOutputs, TaskScore, bound, need_column, need_labels, row_value

OUTPUT = "logits"
EXPECTED_AGREEMENT_NOTE = ("expected_label_agreement is the agreement expected on new inputs: every eval example's "
                           "logit margin tried with every eval example's logit error (n² pairs), where label_agreement "
                           "counts only the eval set's own flips")


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


def gold_ids(labels: Sequence, config: dict, num_labels: int) -> np.ndarray:
    """int [n] class ids of eval ``labels`` (class ids, or label names from ``config.json`` ``id2label``).

    Raises EvalDataError for a label that is neither, naming the model's labels.
    """
    names = {str(v): int(k) for k, v in (config.get("id2label") or {}).items()}
    out = []
    for label in labels:
        if isinstance(label, (int, np.integer)) and 0 <= int(label) < num_labels:
            out.append(int(label))
        elif str(label) in names:
            out.append(names[str(label)])
        else:
            raise EvalDataError(
                f"Eval label {label!r} is not one of the model's labels ({', '.join(sorted(names)) or num_labels}); "
                "use the label names from config.json id2label or class ids."
            )
    return np.asarray(out)


def class_label_set(name: str, task: str, rows: list[tuple[str, dict]], found: str, *, pairs: bool,
                    labels_required: bool) -> EvalSet:
    """The eval set of rows with ``text`` (+ ``text_pair`` when ``pairs``: the input is then a
    ``(text, text_pair)`` tuple) and a ``label`` (name or class id; optional unless ``labels_required``).
    Raises EvalDataError for a missing column or value."""
    need_column(name, rows, "text", found, "input", "--text-column")
    if labels_required:
        need_labels(name, task, rows, found)
    has_label = any(r.get("label") is not None for _, r in rows)
    texts, labels = [], []
    for n, row in rows:
        text = row_value(name, n, row, "text", str)
        pair = row.get("text_pair") if pairs else None
        pair = row_value(name, n, row, "text_pair", str) if pair not in (None, "") else None
        texts.append((text, pair) if pair else text)
        if has_label:
            label = row.get("label")
            if not isinstance(label, (str, int)) or isinstance(label, bool) or label == "":
                raise EvalDataError(f"{name} {n}: 'label' must be a label name or class id; "
                                    "fill it in or drop the row.")
            labels.append(label)
    return EvalSet(name, task, texts=tuple(texts), labels=tuple(labels) if has_label else None)


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

    @staticmethod
    def node_flip_rate(reference: np.ndarray, errors: np.ndarray) -> float:
        """How the tuner ranks nodes for the fp32 fallback (``multiverse.sensitivity``): :func:`node_flip_rate`."""
        return node_flip_rate(reference, errors)

    sentence_embeddings = False
    continuous_metric = False
    reports_metric_step = False
    fidelity_metric = "label_agreement"
    eval_labels = "classes"
    eval_columns: dict = {"text": "text", "text_pair": "text_pair", "label": "label"}
    word_columns = None

    def collect(self, batches: Iterable[tuple[np.ndarray, Encoded]]) -> TaskOutputs:
        """``values``: the logits, float32 [n, num_labels]."""
        return TaskOutputs(np.concatenate([raw.astype(np.float32) for raw, _ in batches], axis=0))

    @staticmethod
    def gate(data: EvalSet, reference: TaskOutputs, candidate: TaskOutputs, config: dict,
             tolerance: float) -> TaskScore:
        """Relative loss of accuracy (labelled) or of label agreement with the reference ≤ τ; with labels
        also label agreement with the reference ≥ 1 − 2τ (accuracy alone lets flips cancel out: two
        examples flipped in opposite directions cost no accuracy). The 2τ mirrors min cosine; at
        τ = 0.005 the bar is accuracy loss ≤ 0.5 % and agreement ≥ 99 %.

        Also ``expected_label_agreement`` ≥ the same agreement bar (1 − 2τ labelled, 1 − τ without labels):
        1 − :func:`expected_flip_rate`, the agreement expected on new inputs, estimated from every pair of an
        eval example's logit margin and another's logit error. A flip count on n examples passes a candidate
        whose true flip rate is above the bar whenever the few near-boundary inputs happen not to flip
        (measured on a weak BBC head: 213 validation texts, 0 flips; 1.9 % flips on 425 held-out texts).
        Details: ``label_agreement``, ``expected_label_agreement`` and its standard error
        ``expected_label_agreement_se``, ``logit_nmse`` and with labels the macro-F1 of both models."""
        ref_ids, cand_ids = reference.values.argmax(-1), candidate.values.argmax(-1)
        details = {"label_agreement": float((ref_ids == cand_ids).mean()),
                   "logit_nmse": metrics.nmse(reference.values, candidate.values)}
        if data.labels is not None:
            gold = gold_ids(data.labels, config, reference.values.shape[-1])
            r, o = metrics.accuracy(ref_ids, gold), metrics.accuracy(cand_ids, gold)
            details.update(reference_macro_f1=metrics.macro_f1(ref_ids, gold),
                           optimised_macro_f1=metrics.macro_f1(cand_ids, gold))
            metric = "accuracy"
        else:
            metric, r, o = "label_agreement", 1.0, details["label_agreement"]
        loss = metrics.relative_loss(r, o)
        checks = (bound(f"relative loss of {metric}", loss, tolerance, loss, False),)
        share = 2 if data.labels is not None else 1  # flips allowed: 2τ with labels (as label_agreement), else τ
        if data.labels is not None:
            agree = details["label_agreement"]
            checks += (bound("label_agreement", agree, 1 - 2 * tolerance, (1 - agree) / 2),)
        flip_rate, se = expected_flip_rate(reference.values, candidate.values)
        details.update(expected_label_agreement=1 - flip_rate, expected_label_agreement_se=se,
                       expected_label_agreement_method=EXPECTED_AGREEMENT_NOTE)
        checks += (bound("expected_label_agreement", 1 - flip_rate, 1 - share * tolerance, flip_rate / share),)
        return TaskScore(metric, r, o, checks, details)

    @classmethod
    def eval_set(cls, name: str, rows: list[tuple[str, dict]], found: str) -> EvalSet:
        """Columns ``text`` (+ optional ``text_pair``) and ``label`` (required)."""
        return class_label_set(name, cls.name, rows, found, pairs=True, labels_required=True)

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
            1, description="How many labels per input, best first; null: all labels. Default over HTTP: all labels "
                           "(as TEI's /predict); in the library (`Predictor.predict`): 1, as transformers' pipeline.")
        raw_scores: bool = Field(False, description="true: scores are the logits, without softmax or sigmoid (TEI); "
                                 "takes precedence over `function_to_apply`.")
        function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
            None, description="What turns logits into scores (transformers' pipeline, the Hugging Face Inference "
                              "API): default sigmoid for multi-label and one-label models, else softmax; \"none\" "
                              "as `raw_scores`.")

    capability = "classify"
    root_wraps_single = True
    #: TEI's ``/predict`` has no ``top_k``: it answers every label, best first (router/src/http/server.rs sorts all
    #: of them), and so does its ``POST /``; the library keeps transformers' pipeline default (the best label).
    http_defaults: ClassVar[dict] = {"top_k": None}

    def info(self, dim: int | None = None) -> dict:
        """``{"classifier": {"id2label": {"0": label, ...}, "label2id": {label: 0, ...}}}``."""
        labels = {str(k): v for k, v in (self.config.get("id2label") or {}).items()}
        return {"classifier": {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}}


def expected_flip_rate(reference: np.ndarray, candidate: np.ndarray, max_pairs: int = 4_000_000,
                       seed: int = 0) -> tuple[float, float]:
    """Expected share of top-1 labels that differ between two models on inputs like the eval set's, and its
    standard error: ``(p, se)``, both in [0, 1].

    ``reference``, ``candidate``: float [n, num_labels] logits of the same n inputs. Every reference example i
    (its logits ``r_i``, top-1 class ``t_i``) is paired with every candidate error ``e_j = c_j − r_j``; the pair
    flips when ``argmax(r_i + e_j) ≠ t_i``, i.e. when some class's error relative to ``t_i``'s exceeds i's
    logit margin over that class. ``p`` is the mean over the n × n pairs: the empirical margin distribution
    convolved with the empirical error distribution, which assumes the error does not depend on the margin (the
    diagonal i = j is the observed flip count). A count of flips on n examples moves by 1/n per example and is
    0 by luck when a few near-boundary inputs happen to be missing; the n² pairs see every near-boundary margin
    against every error. When n² > ``max_pairs`` a seeded random subset of ``max_pairs // n`` errors is used.
    ``se``: the two-sample U-statistic's standard error from its Hoeffding decomposition,
    ``sqrt(var_i(a_i) / n + var_j(b_j) / m)`` with ``a_i``, ``b_j`` the row and column means of the pair
    matrix (Hoeffding 1948; Lehmann, *Elements of Large-Sample Theory*, §6.1).
    Raises ValueError for arrays of different or non-2-D shapes, or no rows.
    """
    ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if ref.shape != cand.shape or ref.ndim != 2 or not len(ref):
        raise ValueError(f"logits must be two equal [n, num_labels] arrays with n ≥ 1, got {ref.shape} and {cand.shape}.")
    n = len(ref)
    errors = cand - ref
    m = min(n, max(1, max_pairs // n))
    if m < n:
        errors = errors[np.sort(np.random.default_rng(seed).choice(n, m, replace=False))]
    flips = pair_flips(ref, errors)
    p = float(flips.mean())
    a, b = flips.mean(1), flips.mean(0)
    se = float(np.sqrt(a.var() / n + b.var() / m))
    return p, se


def pair_flips(reference: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """bool [n, m]: whether reference example i's top-1 label changes when logit error j is added to its logits.

    ``reference``: float [n, num_labels] logits; ``errors``: float [m, num_labels] logit errors (a candidate's
    logits minus the reference's, on any inputs). Pair (i, j) flips when some class's error relative to i's top
    class exceeds i's logit margin over that class. Raises ValueError when the label counts differ."""
    ref, errors = np.asarray(reference, np.float64), np.asarray(errors, np.float64)
    if ref.ndim != 2 or errors.ndim != 2 or ref.shape[1] != errors.shape[1]:
        raise ValueError(f"need [n, num_labels] logits and [m, num_labels] errors, got {ref.shape} and {errors.shape}.")
    n, m = len(ref), len(errors)
    top = ref.argmax(-1)
    flips = np.zeros((n, m), dtype=bool)
    for t in np.unique(top):
        rows = np.flatnonzero(top == t)
        margin = ref[rows, t][:, None] - ref[rows]           # [r, C], ≥ 0, 0 at class t
        push = errors - errors[:, t][:, None]                  # [m, C]: how far error j lifts each class over t
        step = max(1, 2_000_000 // max(1, m * ref.shape[1]))
        for k in range(0, len(rows), step):
            flips[rows[k:k + step]] = (push[None, :, :] > margin[k:k + step, None, :]).any(-1)
    return flips


def node_flip_rate(reference: np.ndarray, errors: np.ndarray) -> float:
    """The per-node fp32-fallback ranking for classifiers: the share of (margin, error) pairs that flip
    (:func:`pair_flips`) when one node's logit errors ``errors`` (float [m, num_labels]: that node alone quantized,
    minus the fp32 graph, on a subset of the eval inputs) meet every eval example's reference logits
    ``reference`` (float [n, num_labels]). A node ranks by the labels it moves, not by its output MSE."""
    return float(pair_flips(reference, errors).mean())
