"""Stage 5: measure an ONNX candidate against the original PyTorch model on an eval set.

A report is data; whether it passes is decided against the tolerance here, and what to do
about a failure is the pipeline's policy. Relative loss = (reference − optimised) /
reference (DESIGN.md §5). With labelled data the metric is the task metric of each model
against the labels; without labels it is agreement with the reference model (reference = 1).

Gated checks per task (tolerance τ, default 0.01):
- feature-extraction: mean cosine to the fp32 embedding ≥ 1 − τ and min cosine ≥ 1 − 2τ.
- text-classification: relative loss of accuracy (labelled) or label agreement ≤ τ; with labels
  also label agreement with the reference ≥ 1 − 2τ (accuracy alone lets flips cancel out:
  two examples flipped in opposite directions cost no accuracy). The 2τ mirrors min cosine;
  at τ = 0.005 it is issue 3's bar (accuracy loss ≤ 0.5 %, agreement ≥ 99 %).
- token-classification: relative loss of entity F1 (labelled) or token-label agreement ≤ τ.
- ranking: relative loss of MRR (labelled, or against the reference's top passage) ≤ τ; with labels
  also top-1 agreement with the reference (the same passage ranked first) ≥ 1 − 2τ, for the
  same reason as label agreement: MRR alone let a candidate that moved the top passage of half
  the queries pass when the moves did not change the relevant passage's rank. Without labels
  the MRR check already implies it (each query whose top passage changed costs at least 1/2 of
  its reciprocal rank, so MRR ≥ 1 − τ needs top-1 agreement ≥ 1 − 2τ).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import metrics
from .errors import EvalDataError
from .evaldata import EvalSet
from .tasks import Encoded, TextTokenizer, make_handler

BATCH_SIZE = 16


def resolution_note(task: str, n: int, tolerance: float) -> str | None:
    """A warning when the eval set is too small for the gate to resolve ``tolerance``, else None.

    For every task but feature-extraction (whose cosine checks are continuous) one changed
    prediction moves the metric by about 1/n; when 1/n > τ a single flip already exceeds the
    tolerance and a pass or fail says little (seen: n = 3 ranking queries passed with MRR 1.0).
    ``n``: examples (ranking: queries).
    """
    if task == "feature-extraction" or tolerance <= 0 or n * tolerance >= 1:
        return None
    need = int(np.ceil(1 / tolerance))
    return (f"the eval set has {n} example{'s' if n != 1 else ''}: one changed prediction moves the metric by "
            f"about {100 / max(n, 1):.2g} %, more than the tolerance {tolerance * 100:g} %, so the gate is mostly "
            f"noise; use at least {need} examples (a larger --eval-data; --eval-limit keeps fewer) or a larger "
            f"--tolerance.")


@dataclass(frozen=True)
class Check:
    """One gated bound. ``loss`` is its loss-equivalent: the check passes iff ``loss`` ≤ τ."""

    name: str
    value: float
    threshold: float
    passed: bool
    loss: float = 0.0


@dataclass(frozen=True)
class ValidationReport:
    """Reference vs optimised on one eval set.

    Attributes:
        metric: the headline metric (``accuracy``, ``entity_f1``, ``mrr``, ``mean_cosine``,
            ``label_agreement``, ``token_agreement``).
        reference, optimised: its value for the PyTorch model and the candidate.
        relative_loss: (reference − optimised) / reference.
        checks: every gated check; ``passed`` is all of them.
        details: secondary numbers (min cosine, agreement, macro-F1 ...).
    """

    dataset: str
    task: str
    n: int
    metric: str
    reference: float
    optimised: float
    relative_loss: float
    tolerance: float
    passed: bool
    checks: tuple[Check, ...] = ()
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def gate_loss(self) -> float:
        """Largest loss-equivalent over the checks: passed ⇔ gate_loss ≤ tolerance. The tuner minimises it."""
        return max((c.loss for c in self.checks), default=0.0)

    @property
    def divergence(self) -> float:
        """How far the candidate's outputs are from the reference model's, whatever the labels say:
        1 − mean cosine (embeddings), else ``logit_nmse`` (Σ(c − r)² / Σr² of the logits; falls back to
        1 − label/token/top-1 agreement). Lower is more faithful. Unlike ``relative_loss`` it cannot be
        negative by luck, and unlike flip counts it ranks candidates the same way on different eval
        sets (measured: BBC classifier logit NMSE 6.9e-3 / 4.0e-3 / 2.4e-3 for α none / 0.6 / 0.7 on
        the validation split, 7.2e-3 / 4.1e-3 / 2.4e-3 on the test split)."""
        if self.task == "feature-extraction":
            return 1.0 - float(self.details.get("mean_cosine", 1.0))
        if "logit_nmse" in self.details:
            return float(self.details["logit_nmse"])
        key = {"text-classification": "label_agreement", "token-classification": "token_agreement",
               "ranking": "top1_agreement"}.get(self.task)
        return 1.0 - float(self.details.get(key, 1.0))

    def failure(self) -> str:
        """One sentence naming each failed check and the gap, or '' when passed."""
        bad = [c for c in self.checks if not c.passed]
        return "; ".join(f"{c.name} {c.value:.4f} vs required {c.threshold:.4f} (gap {_gap(c.value, c.threshold)})"
                         for c in bad)


def _gap(value: float, threshold: float) -> str:
    """|value − threshold| to 4 decimals, or in scientific notation when that would print 0.0000."""
    gap = abs(value - threshold)
    return f"{gap:.4f}" if gap >= 5e-5 else f"{gap:.1e}"


@dataclass(frozen=True)
class TaskOutputs:
    """Comparable outputs of one model on an eval set.

    ``values``: feature-extraction float32 [n, dim] embeddings; text-classification float32
    [n, num_labels] logits; ranking float32 [n_pairs] scores: the logit of one-label models (the
    order is sigmoid's, but sigmoid saturates to 1.0 in float32 beyond a logit of ~17 and would
    turn the order into ties), else the last label's probability; token-classification: per
    text int [n_tokens_i] argmax label ids over real tokens. ``entities``: NER entities per text.
    """

    values: Any
    entities: list | None = None
    logits: list | None = None  # token-classification: per text float32 [n_tokens_i, num_labels]


def model_inputs(data: EvalSet) -> list:
    """What the model is run on: texts, or every (query, passage) pair of the ranking groups, in order."""
    if data.task == "ranking":
        return [(g.query, p) for g in data.groups for p in g.passages]
    return list(data.texts)


def collect(forward: Callable[[Encoded], np.ndarray], encode: Callable[[Sequence], Encoded], handler,
            data: EvalSet, batch_size: int = BATCH_SIZE) -> TaskOutputs:
    """Run ``forward`` over ``data`` in right-padded batches and reduce to :class:`TaskOutputs`."""
    items = model_inputs(data)
    if not items:
        raise EvalDataError(f"Eval set {data.name!r} is empty; give --eval-data with at least one example.")
    parts, entities = [], []
    for i in range(0, len(items), batch_size):
        enc = encode(items[i:i + batch_size])
        raw = forward(enc)
        if data.task == "feature-extraction":
            parts.append(handler.vectors(raw, enc))
        elif data.task == "text-classification":
            parts.append(raw.astype(np.float32))
        elif data.task == "ranking":
            parts.append(handler.scores(raw, raw=True))  # logits: sigmoid saturates to ties in float32
        else:
            mask = enc.attention_mask.astype(bool)
            parts.extend(raw[b][mask[b]].astype(np.float32) for b in range(raw.shape[0]))
            entities.extend(handler.postprocess(raw, enc, {}))
    if data.task == "token-classification":
        return TaskOutputs([p.argmax(-1) for p in parts], entities, parts)
    return TaskOutputs(np.concatenate(parts, axis=0))


def reference_outputs(ckpt, data: EvalSet, model_dir, threads: int | None = None) -> TaskOutputs:
    """Outputs of the original PyTorch model (tokenized by the bundle's tokenizer, so inputs are identical)."""
    import json

    from .reference import ReferenceModel

    ref = ReferenceModel(ckpt, threads)
    tok = TextTokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    handler = make_handler(ckpt.task, model_dir, config)
    return collect(ref.forward, tok.encode, handler, data)


def candidate_outputs(predictor, data: EvalSet) -> TaskOutputs:
    """Outputs of an ONNX candidate (a ``multiverse.inference.Predictor``), run as serving runs them
    (``Predictor.run_batched``: one row per run for dynamic int8), so the gate sees what users get."""
    return collect(predictor.run_batched, predictor.encode, predictor.handler, data)


def _check(name: str, value: float, threshold: float, loss: float, higher_is_better: bool = True) -> Check:
    # A bound on a metric is exact (fp32 ONNX is not bit-identical to PyTorch, so a cosine bound
    # of 1 is not met); a bound on a relative loss allows float rounding of (r - o) / r.
    ok = value >= threshold if higher_is_better else value <= threshold + 1e-12
    return Check(name, float(value), float(threshold), bool(ok), float(loss))


def score(data: EvalSet, ref: TaskOutputs, cand: TaskOutputs, config: dict, tolerance: float) -> ValidationReport:
    """Compare candidate to reference outputs on ``data`` and gate at ``tolerance``.

    ``config`` is the model's ``config.json`` (``id2label`` maps predicted ids to label names).
    Raises EvalDataError when labels cannot be matched to the model's labels.
    """
    task, details = data.task, {}
    if task == "feature-extraction":
        cos = metrics.cosine_rows(ref.values, cand.values)
        details = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
                   "retrieval_agreement@1": metrics.retrieval_agreement(ref.values, cand.values, k=1)
                   if len(cos) > 1 else 1.0}
        if data.labels is not None:
            details.update(linear_probe(ref.values, cand.values, data.labels))
        metric, r, o = "mean_cosine", 1.0, float(cos.mean())
        checks = (_check("mean_cosine", o, 1 - tolerance, 1 - o),
                  _check("min_cosine", float(cos.min()), 1 - 2 * tolerance, (1 - float(cos.min())) / 2))
    elif task == "text-classification":
        ref_ids, cand_ids = ref.values.argmax(-1), cand.values.argmax(-1)
        details["label_agreement"] = float((ref_ids == cand_ids).mean())
        details["logit_nmse"] = metrics.nmse(ref.values, cand.values)
        if data.labels is not None:
            gold = _gold_ids(data.labels, config, ref.values.shape[-1])
            r, o = metrics.accuracy(ref_ids, gold), metrics.accuracy(cand_ids, gold)
            details.update(reference_macro_f1=metrics.macro_f1(ref_ids, gold), optimised_macro_f1=metrics.macro_f1(cand_ids, gold))
            metric = "accuracy"
        else:
            metric, r, o = "label_agreement", 1.0, details["label_agreement"]
        loss = metrics.relative_loss(r, o)
        checks = (_check(f"relative loss of {metric}", loss, tolerance, loss, False),)
        if data.labels is not None:
            agree = details["label_agreement"]
            checks += (_check("label_agreement", agree, 1 - 2 * tolerance, (1 - agree) / 2),)
    elif task == "token-classification":
        agree = np.concatenate([a == b for a, b in zip(ref.values, cand.values)])
        details["token_agreement"] = float(agree.mean()) if agree.size else 1.0
        if ref.logits is not None and cand.logits is not None:
            details["logit_nmse"] = metrics.nmse(np.concatenate(ref.logits), np.concatenate(cand.logits))
        spans = lambda ents: [{(e["start"], e["end"], e["entity_group"]) for e in row} for row in ents]  # noqa: E731
        details["entity_agreement_f1"] = metrics.entity_f1(spans(cand.entities), spans(ref.entities))["f1"]
        if data.labels is not None:
            gold = [{(int(s), int(e), str(t)) for s, e, t in row} for row in data.labels]
            r = metrics.entity_f1(spans(ref.entities), gold)["f1"]
            o = metrics.entity_f1(spans(cand.entities), gold)["f1"]
            metric = "entity_f1"
        else:
            metric, r, o = "token_agreement", 1.0, details["token_agreement"]
        loss = metrics.relative_loss(r, o)
        checks = (_check(f"relative loss of {metric}", loss, tolerance, loss, False),)
    elif task == "ranking":
        sizes = [len(g.passages) for g in data.groups]
        bounds = np.cumsum([0] + sizes)
        ref_groups = [ref.values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        cand_groups = [cand.values[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        details["max_abs_score_diff"] = float(np.abs(ref.values - cand.values).max())
        details["logit_nmse"] = metrics.nmse(ref.values, cand.values)
        details["top1_agreement"] = float(np.mean([np.argmax(r) == np.argmax(c) for r, c in zip(ref_groups, cand_groups)]))
        if data.labelled:
            relevant = [set(g.relevant) for g in data.groups]
            r, o = metrics.mrr(ref_groups, relevant), metrics.mrr(cand_groups, relevant)
            details["optimised_ndcg@10"] = metrics.ndcg_at_k(cand_groups, relevant, k=10)
        else:
            relevant = [{int(np.argmax(s))} for s in ref_groups]
            r, o = 1.0, metrics.mrr(cand_groups, relevant)
        metric = "mrr"
        loss = metrics.relative_loss(r, o)
        checks = (_check("relative loss of mrr", loss, tolerance, loss, False),)
        if data.labelled:
            agree = details["top1_agreement"]
            checks += (_check("top1_agreement", agree, 1 - 2 * tolerance, (1 - agree) / 2),)
    else:  # pragma: no cover - tasks are validated upstream
        raise EvalDataError(f"Unknown task {task!r}.")
    return ValidationReport(
        dataset=data.name, task=task, n=len(data), metric=metric, reference=float(r), optimised=float(o),
        relative_loss=float(metrics.relative_loss(r, o)), tolerance=tolerance,
        passed=all(c.passed for c in checks), checks=checks, details=details,
    )


def linear_probe(ref: np.ndarray, cand: np.ndarray, labels: Sequence) -> dict:
    """Downstream check for embeddings: a nearest-centroid probe (a linear classifier on unit vectors) fitted
    on the reference embeddings of the even-indexed examples, scored on the odd-indexed ones with the
    reference and with the candidate embeddings.

    Args: ref, cand float32 [n, dim]; labels length n. Returns ``probe_reference_accuracy``,
    ``probe_optimised_accuracy`` and ``probe_accuracy_loss`` (absolute, reference − optimised).
    """
    y = np.asarray([str(label) for label in labels])
    classes = sorted(set(y[0::2]))
    unit = lambda x: x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)  # noqa: E731
    centroids = unit(np.stack([unit(ref[0::2][y[0::2] == c]).mean(0) for c in classes]))
    predict = lambda x: np.asarray(classes)[(unit(x) @ centroids.T).argmax(1)]  # noqa: E731
    gold = y[1::2]
    r = float((predict(ref[1::2]) == gold).mean()) if len(gold) else 0.0
    o = float((predict(cand[1::2]) == gold).mean()) if len(gold) else 0.0
    return {"probe_reference_accuracy": r, "probe_optimised_accuracy": o, "probe_accuracy_loss": r - o}


def _gold_ids(labels: Sequence, config: dict, num_labels: int) -> np.ndarray:
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


def validate(ckpt, predictor, data: EvalSet, tolerance: float = 0.01, reference: TaskOutputs | None = None,
             threads: int | None = None) -> ValidationReport:
    """Stage 5: :func:`score` of ``predictor`` (an ONNX candidate) against the PyTorch ``ckpt`` on ``data``.

    Pass ``reference`` (from :func:`reference_outputs`) to reuse it across candidates.
    """
    if reference is None:
        reference = reference_outputs(ckpt, data, predictor.model_dir, threads)
    return score(data, reference, candidate_outputs(predictor, data), predictor.config, tolerance)
