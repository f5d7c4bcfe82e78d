"""Stage 5: measure an ONNX candidate against the original PyTorch model on an eval set.

A report is data; whether it passes is decided against the tolerance here, and what to do
about a failure is the pipeline's policy. Relative loss = (reference − optimised) /
reference (DESIGN.md §5). With labelled data the metric is the task metric of each model
against the labels; without labels it is agreement with the reference model (reference = 1).

The metric and gated checks of each task are its task module's ``Handler.gate``
(``multiverse/tasks/<task>.py``, documented there); this module runs the models, hands their
outputs to the task's gate and is the one place that decides pass/fail: all checks pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np

from . import metrics
from .errors import EvalDataError
from .tasks import Encoded, TextTokenizer, get_task, make_handler
from .tasks.evaluation import Check, EvalSet, TaskOutputs

__all__ = ["BATCH_SIZE", "Check", "TaskOutputs", "ValidationReport", "by_length", "candidate_outputs", "collect",
           "grouped_rows", "length_runs", "model_inputs", "reference_outputs", "resolution_note", "score", "stack_rows",
           "validate"]

BATCH_SIZE = 16
#: The reference's model runs (``collect(grouped=True)``): at most this many rows and padded tokens (rows × longest
#: row; the serving default ``inference.DEFAULT_MAX_RUN_TOKENS``), within windows of ``WINDOW_ROWS`` examples (what
#: is held in memory at once: per-token outputs of up to 256 examples).
RUN_ROWS = 64
RUN_TOKENS = 4096
WINDOW_ROWS = 256


def resolution_note(task: str, n: int, tolerance: float, step: float | None = None) -> str | None:
    """A warning when the eval set is too small for the gate to resolve ``tolerance``, else None.

    For every task whose gated metric is not continuous (``Task.continuous_metric``: cosines are) one
    changed prediction moves the metric by about 1/n; when 1/n > τ a single flip already exceeds the
    tolerance and a pass or fail says little (seen: n = 3 ranking queries passed with MRR 1.0).
    ``step``: the measured relative change of the gated metric from one changed prediction when a report has it
    (``details["metric_step"]``; entity F1: 1 / the reference's true positives), used instead of 1/n.
    A task whose gate measures the step (``Task.reports_metric_step``: NER, whose labels are required) gets no note
    from ``n`` alone: texts are not its unit. ``n``: examples (ranking: queries). Raises UsageError for an unknown
    task.
    """
    handler = get_task(task)
    if handler.continuous_metric or tolerance <= 0:
        return None
    if step is None and handler.reports_metric_step:
        return None
    if step is not None:
        if step <= tolerance:
            return None
        if step >= 1:  # the reference finds at most one gold entity: relative entity F1 loss is meaningless
            return ("the reference model finds at most one correct entity on this eval set, so entity F1 cannot gate "
                    "it; use a labelled eval set on which the reference finds at least "
                    f"{int(np.ceil(1 / tolerance))} correct entities.")
        digits = 1 - int(np.floor(np.log10(step)))  # the tolerance to suggest: step rounded up to 2 significant digits
        return (f"one changed entity moves entity F1 by about {step * 100:.2g} % on this eval set (the reference model "
                f"finds {1 / step:.0f} gold entities correctly), more than the tolerance {tolerance * 100:g} %, so the "
                f"gate is mostly noise and passing candidates are ranked by logit NMSE to the reference, then speed; "
                f"use an eval set on which the reference finds at least {int(np.ceil(1 / tolerance))} correct "
                f"entities, or --tolerance {np.ceil(step * 10 ** digits) / 10 ** digits:g} or more.")
    if n * tolerance >= 1:
        return None
    need = int(np.ceil(1 / tolerance))
    return (f"the eval set has {n} example{'s' if n != 1 else ''}: one changed prediction moves the metric by "
            f"about {100 / max(n, 1):.2g} %, more than the tolerance {tolerance * 100:g} %, so the gate is mostly "
            f"noise; use at least {need} examples (a larger --eval-data; --eval-limit keeps fewer) or a larger "
            f"--tolerance.")


@dataclass(frozen=True)
class ValidationReport:
    """Reference vs optimised on one eval set.

    Attributes:
        metric: the headline metric (``accuracy``, ``entity_f1``, ``mrr``, ``mean_cosine``,
            ``label_agreement``, ``token_agreement``).
        reference, optimised: its value for the PyTorch model and the candidate.
        relative_loss: (reference − optimised) / reference.
        checks: every gated check; ``passed`` is all of them.
        details: secondary numbers (min cosine, agreement, macro-F1 ...) and, as strings, what a check means
            (``multiverse validate`` prints those below its table).
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
    def resolvable(self) -> bool:
        """Whether one changed prediction moves the gated metric by at most the tolerance: False when the task's
        gate measured a coarser ``details["metric_step"]`` (entity F1 of a model that finds few entities). Its gate
        loss then says nothing at the scale of the tolerance, and the tuner does not call a pass narrow or safe by it
        (``choice.passed_with_margin``). At τ = 0 every loss fails and nothing is narrow: True."""
        return self.tolerance <= 0 or float(self.details.get("metric_step", 0.0)) <= self.tolerance

    @property
    def divergence(self) -> float:
        """How far the candidate's outputs are from the reference model's, whatever the labels say:
        ``logit_nmse`` (Σ(c − r)² / Σr² of the logits) when the task's gate reports it, else 1 − the task's
        ``fidelity_metric`` (mean cosine for embeddings, label/token/top-1 agreement). Lower is more
        faithful. Unlike ``relative_loss`` it cannot be negative by luck, and unlike flip counts it
        ranks candidates the same way on different eval sets (measured: BBC classifier logit NMSE 6.9e-3 / 4.0e-3 / 2.4e-3 for α none / 0.6 / 0.7 on
        the validation split, 7.2e-3 / 4.1e-3 / 2.4e-3 on the test split)."""
        if "logit_nmse" in self.details:
            return float(self.details["logit_nmse"])
        return 1.0 - float(self.details.get(get_task(self.task).fidelity_metric, 1.0))

    def failure(self) -> str:
        """One sentence naming each failed check and the gap, or '' when passed."""
        bad = [c for c in self.checks if not c.passed]
        return "; ".join(f"{c.name} {c.value:.4f} vs required {c.threshold:.4f} (gap {_gap(c.value, c.threshold)})"
                         for c in bad)


def _gap(value: float, threshold: float) -> str:
    """|value − threshold| to 4 decimals, or in scientific notation when that would print 0.0000."""
    gap = abs(value - threshold)
    return f"{gap:.4f}" if gap >= 5e-5 else f"{gap:.1e}"


def model_inputs(data: EvalSet) -> list:
    """What the model is run on: texts, or every (query, passage) pair of the ranking groups, in order."""
    return data.inputs()


def by_length(data: EvalSet) -> EvalSet:
    """``data`` with its texts (and labels) sorted by length in characters, for the reference and the candidates:
    validation runs right-padded batches of 16; the built-in texts padded to 47,888 tokens in file order against
    12,272 sorted (8,037 real). Only where every gated number is a mean, a min or a count over examples: ranking
    groups and labelled embeddings (whose linear probe splits even/odd positions) keep their order."""
    if data.groups or (get_task(data.task).sentence_embeddings and data.labels is not None):
        return data
    order = sorted(range(len(data.texts)), key=lambda i: len(data.texts[i]))
    labels = None if data.labels is None else tuple(data.labels[i] for i in order)
    return replace(data, texts=tuple(data.texts[i] for i in order), labels=labels)


def collect(forward: Callable[[Encoded], np.ndarray], encode: Callable[[Sequence], Encoded], handler,
            data: EvalSet, batch_size: int = BATCH_SIZE, *, grouped: bool = False) -> TaskOutputs:
    """Run ``forward`` over ``data`` in right-padded batches of ``batch_size`` and reduce them to the task's
    :class:`TaskOutputs` (``handler.collect``, the task object of ``data.task``).

    ``grouped``: ``forward`` runs on the examples grouped by token count instead (:func:`length_runs`, within
    windows of ``WINDOW_ROWS`` examples; ``encode`` must return :class:`Encoded`) and ``handler`` still sees the
    batches of ``batch_size`` in order. For the fp32 PyTorch reference, whose rows do not depend on the rows run
    beside them (to float rounding): a batch of 16 that mixes a 512-token text with short ones pads them all to
    512. Measured on the 270 built-in texts (8,037 real tokens): 19,232 padded tokens in batches of 16 in order of
    character length, 12,630 grouped; the PyTorch reference of a DistilBERT-base shape took 17.3 instead of 28.0
    CPU seconds (load 13), largest difference in its logits 3.6e-7. Candidates are not grouped: a static int8
    graph's outputs move with the rows beside it by more than rounding (OpenVINO static int8, same shape: up to
    5e-3 in the logits), so the gate sees the batches it always saw.

    Raises EvalDataError when ``data`` is empty.
    """
    items = model_inputs(data)
    if not items:
        raise EvalDataError(f"Eval set {data.name!r} is empty; give --eval-data with at least one example.")

    def batches():
        if not grouped:
            for i in range(0, len(items), batch_size):
                enc = encode(items[i:i + batch_size])
                yield forward(enc), enc
            return
        for start in range(0, len(items), WINDOW_ROWS):
            window = items[start:start + WINDOW_ROWS]
            encs = [encode(window[i:i + batch_size]) for i in range(0, len(window), batch_size)]
            rows = _run_grouped(forward, encode, window, encs)
            for k, enc in enumerate(encs):
                yield stack_rows(rows[k * batch_size:(k + 1) * batch_size], enc.attention_mask.shape[1]), enc

    return handler.collect(batches())


def length_runs(lengths: Sequence[int], max_rows: int = RUN_ROWS, max_tokens: int = RUN_TOKENS) -> list[list[int]]:
    """Indices of ``lengths`` (real tokens per example) grouped into model runs: in order of length (ties in
    order), each run at most ``max_rows`` rows and ``max_tokens`` padded tokens (rows × its longest row; a longer
    row runs alone). Returns ``[[index, ...], ...]`` covering every index once."""
    runs: list[list[int]] = []
    run: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if run and (len(run) >= max_rows or (len(run) + 1) * int(lengths[i]) > max_tokens):
            runs.append(run)
            run = []
        run.append(i)
    if run:
        runs.append(run)
    return runs


def _run_grouped(forward, encode, items: Sequence, encs: Sequence[Encoded]) -> list[np.ndarray]:
    """:func:`grouped_rows` of ``items``, whose lengths are read from ``encs`` (their batches)."""
    lengths = np.concatenate([e.attention_mask.sum(axis=1) for e in encs]).tolist()
    return grouped_rows(forward, encode, items, lengths)


def grouped_rows(forward: Callable[[Encoded], np.ndarray], encode: Callable[[Sequence], Encoded], items: Sequence,
                 lengths: Sequence[int]) -> list[np.ndarray]:
    """``forward``'s output row for each of ``items`` (``lengths``: their real tokens), the items run in the groups
    of :func:`length_runs` (each group tokenized by ``encode``). Rows in order of ``items``: [num_labels] or, for
    per-token outputs, [its real tokens, ...]."""
    rows: list = [None] * len(items)
    for run in length_runs(lengths):
        out = forward(encode([items[i] for i in run]))
        for j, i in enumerate(run):
            rows[i] = out[j] if out.ndim < 3 else np.ascontiguousarray(out[j, :int(lengths[i])])
    return rows


def stack_rows(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Rows as one batch's output: [batch, ...]; per-token rows [n_i, ...] zero-padded to [batch, width, ...]."""
    if rows[0].ndim < 2:
        return np.stack(rows)
    out = np.zeros((len(rows), width, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for b, row in enumerate(rows):
        out[b, :row.shape[0]] = row
    return out


def reference_outputs(ckpt, data: EvalSet, model_dir, threads: int | None = None) -> TaskOutputs:
    """Outputs of the original PyTorch model (tokenized by the bundle's tokenizer, so inputs are identical)."""
    import json

    from .reference import ReferenceModel

    ref = ReferenceModel(ckpt, threads)
    tok = TextTokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    handler = make_handler(ckpt.task, model_dir, config)
    return collect(ref.forward, tok.encode, handler, data, grouped=True)


def candidate_outputs(predictor, data: EvalSet) -> TaskOutputs:
    """Outputs of an ONNX candidate (a ``multiverse.inference.Predictor``), run as serving runs them
    (``Predictor.run_batched``: one row per run for dynamic int8), so the gate sees what users get."""
    return collect(predictor.run_batched, predictor.encode, predictor.handler, data)


def score(data: EvalSet, ref: TaskOutputs, cand: TaskOutputs, config: dict, tolerance: float) -> ValidationReport:
    """Compare candidate to reference outputs on ``data`` with the task's gate (``Task.gate``) at ``tolerance``;
    the report passes iff every check does.

    ``config`` is the model's ``config.json`` (``id2label`` maps predicted ids to label names).
    Raises EvalDataError when labels cannot be matched to the model's labels, UsageError for an unknown task.
    """
    gated = get_task(data.task).gate(data, ref, cand, config, tolerance)
    r, o = float(gated.reference), float(gated.optimised)
    return ValidationReport(
        dataset=data.name, task=data.task, n=len(data), metric=gated.metric, reference=r, optimised=o,
        relative_loss=float(metrics.relative_loss(r, o)), tolerance=tolerance,
        passed=all(c.passed for c in gated.checks), checks=tuple(gated.checks), details=gated.details,
    )


def validate(ckpt, predictor, data: EvalSet, tolerance: float = 0.01, reference: TaskOutputs | None = None,
             threads: int | None = None) -> ValidationReport:
    """Stage 5: :func:`score` of ``predictor`` (an ONNX candidate) against the PyTorch ``ckpt`` on ``data``.

    Pass ``reference`` (from :func:`reference_outputs`) to reuse it across candidates.
    """
    if reference is None:
        reference = reference_outputs(ckpt, data, predictor.model_dir, threads)
    return score(data, reference, candidate_outputs(predictor, data), predictor.config, tolerance)
