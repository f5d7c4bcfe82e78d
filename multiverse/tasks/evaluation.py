"""What a task's accuracy gate reads and returns, shared by the task modules.

Each task module owns its gate (metric and checks, ``Task.gate``), how its model outputs are gathered
for the gate (``Task.collect``) and how rows of an eval file become its eval set (``Task.eval_set``);
they use the types here. :mod:`multiverse.validate` runs the models and decides pass/fail,
:mod:`multiverse.evaldata` finds and reads the data. Only dataclasses and the error tree: this
module is imported on the serving path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EvalDataError


@dataclass(frozen=True)
class RankingGroup:
    """One ranking query: ``passages`` to order for ``query``; ``relevant`` holds indices into ``passages``."""

    query: str
    passages: tuple[str, ...]
    relevant: frozenset[int] = frozenset()


@dataclass(frozen=True)
class EvalSet:
    """Data the gate evaluates on.

    Attributes:
        name: ``builtin``, ``bbc-news``, ``wnut16``, a Hub dataset id or the file/folder path.
        task: the task it is shaped for.
        texts: single texts, or ``(text, text_pair)`` tuples (tasks whose eval labels are not relevance).
        labels: None when unlabelled; class labels: label names (str) or class ids (int), one per
            text; spans: per text a list of ``(start, end, type)`` character spans into the text.
        groups: ranking queries (tasks whose eval labels are relevance); ``relevant`` empty when unlabelled.
    """

    name: str
    task: str
    texts: tuple = ()
    labels: tuple | None = None
    groups: tuple[RankingGroup, ...] = ()

    @property
    def labelled(self) -> bool:
        if self.groups:
            return all(g.relevant for g in self.groups)
        return self.labels is not None

    def __len__(self) -> int:
        """Examples: texts, or query groups."""
        return len(self.groups) if self.groups else len(self.texts)

    def inputs(self) -> list:
        """What the model is run on: the texts, or every (query, passage) pair of the groups, in order."""
        if self.groups:
            return [(g.query, p) for g in self.groups for p in g.passages]
        return list(self.texts)


@dataclass(frozen=True)
class TaskOutputs:
    """Comparable outputs of one model on an eval set (``Task.collect``; each task documents its ``values``).

    ``values``: feature-extraction float32 [n, dim] embeddings; text-classification float32
    [n, num_labels] logits; ranking float32 [n_pairs] scores: the logit of one-label models (the
    order is sigmoid's, but sigmoid saturates to 1.0 in float32 beyond a logit of ~17 and would
    turn the order into ties), else the last label's probability; token-classification: per
    text int [n_tokens_i] argmax label ids over real tokens. ``entities``: NER entities per text.
    """

    values: Any
    entities: list | None = None
    logits: list | None = None  # token-classification: per text float32 [n_tokens_i, num_labels]


@dataclass(frozen=True)
class Check:
    """One gated bound. ``loss`` is its loss-equivalent: the check passes iff ``loss`` ≤ τ."""

    name: str
    value: float
    threshold: float
    passed: bool
    loss: float = 0.0


def bound(name: str, value: float, threshold: float, loss: float, higher_is_better: bool = True) -> Check:
    """The :class:`Check` ``value ≥ threshold`` (or ``value ≤ threshold`` when not ``higher_is_better``).

    A bound on a metric is exact (fp32 ONNX is not bit-identical to PyTorch, so a cosine bound of 1
    is not met); a bound on a relative loss allows float rounding of (r − o) / r (1e-12).
    """
    ok = value >= threshold if higher_is_better else value <= threshold + 1e-12
    return Check(name, float(value), float(threshold), bool(ok), float(loss))


@dataclass(frozen=True)
class TaskScore:
    """A task's gate on one eval set (``Task.gate``).

    Attributes:
        metric: the headline metric's name; reference, optimised: its value for the PyTorch model
            and for the candidate.
        checks: every gated bound; the candidate passes iff all pass.
        details: secondary numbers (agreements, ``logit_nmse``, macro-F1 ...).
    """

    metric: str
    reference: float
    optimised: float
    checks: tuple[Check, ...]
    details: dict


# ---- eval-file rows, renamed to the task's ``eval_columns`` by multiverse.evaldata ------------


def need_column(name: str, rows: list[tuple[str, dict]], key: str, found: str, what: str, option: str) -> None:
    """Raise EvalDataError naming the columns ``found`` when no row has ``key`` (the ``what`` column, ``option``)."""
    if not any(key in r for _, r in rows):
        raise EvalDataError(f"{name} has no {key!r} column (found: {found}); name the {what} column "
                            f"{key!r} or pass its name with {option}.")


def need_labels(name: str, task: str, rows: list[tuple[str, dict]], found: str) -> None:
    """Raise EvalDataError when no row has a ``label`` (the gate of ``task`` needs labelled files)."""
    if not any(r.get("label") is not None for _, r in rows):
        raise EvalDataError(f"{name} is an unlabelled eval file: it has no 'label' column (found: {found}), "
                            f"which {task} needs; pass the label column's name with --label-column, add one, "
                            "or use the built-in set.")


def row_value(name: str, n: str, row: dict, key: str, kind: type):
    """``row[key]`` when it is a ``kind`` (a non-empty string for str). Raises EvalDataError naming row ``n``."""
    value = row.get(key)
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise EvalDataError(f"{name} {n}: {key!r} is missing or not a "
                            f"{'non-empty string' if kind is str else kind.__name__}; fill it in or drop the row.")
    return value
