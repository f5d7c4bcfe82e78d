"""Task metrics for the accuracy gate (DESIGN.md §5). Pure numpy: no torch, no sklearn at run time.

Every function returns a Python ``float`` (or a dict of floats, or a float64 array) and raises
``ValueError`` on inputs of mismatched length or shape: a metric fed the wrong shapes is a bug
in the caller, not bad user data.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence

import numpy as np


def _check_pairs(pred: Sequence, gold: Sequence) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"pred has {len(pred)} items but gold has {len(gold)}.")
    if len(gold) == 0:
        raise ValueError("Cannot score an empty set of predictions.")


def accuracy(pred: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Fraction of positions where ``pred[i] == gold[i]``.

    Args:
        pred, gold: equal-length, non-empty sequences of labels (str, int, any hashable).
    """
    _check_pairs(pred, gold)
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def macro_f1(pred: Sequence[Hashable], gold: Sequence[Hashable]) -> float:
    """Unweighted mean of per-class F1 over the union of classes in ``gold`` and ``pred``.

    Same definition as ``sklearn.metrics.f1_score(gold, pred, average="macro")`` (labels
    = ``unique_labels(gold, pred)``; a class with no true and no predicted positives cannot
    occur; a class only predicted, or only gold, scores F1 = 0). Per class,
    F1 = 2·TP / (2·TP + FP + FN).
    """
    _check_pairs(pred, gold)
    scores = []
    for c in set(gold) | set(pred):
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def entity_f1(pred_spans: Sequence[Iterable[tuple]], gold_spans: Sequence[Iterable[tuple]]) -> dict[str, float]:
    """Micro-averaged entity precision, recall and F1 over exact ``(start, end, type)`` matches.

    The CoNLL-2003 ``conlleval`` / ``seqeval`` definition: an entity counts as correct only
    if its boundaries and type both match a gold entity; counts are summed over all texts
    before dividing. Each of the three values is 0.0 when its denominator is 0.

    Args:
        pred_spans, gold_spans: one iterable of ``(start, end, type)`` tuples per text
            (character offsets, end exclusive); equal number of texts.
    Returns:
        ``{"precision": float, "recall": float, "f1": float}``.
    """
    _check_pairs(pred_spans, gold_spans)
    tp = n_pred = n_gold = 0
    for p, g in zip(pred_spans, gold_spans):
        p, g = {tuple(s) for s in p}, {tuple(s) for s in g}
        tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _orders(scores: Sequence[Sequence[float]], relevant: Sequence[Iterable[int]]):
    """Per group: (passage indices best-first, set of relevant indices)."""
    _check_pairs(scores, relevant)
    for s, r in zip(scores, relevant):
        s, r = np.asarray(s, dtype=np.float64).reshape(-1), set(r)
        if not r or not all(0 <= i < len(s) for i in r):
            raise ValueError(f"Each group needs relevant indices within 0..{len(s) - 1}, got {sorted(r)}.")
        yield np.argsort(-s, kind="stable"), r


def mrr(scores: Sequence[Sequence[float]], relevant: Sequence[Iterable[int]]) -> float:
    """Mean reciprocal rank of the first relevant passage (binary relevance).

    Definition as in MS MARCO / TREC (Voorhees 1999): mean over groups of 1 / rank, with
    rank 1-based. Passages are ordered by descending score; ties keep the input order
    (stable sort).

    Args:
        scores: one 1-D float array [n_passages] per group (any length per group).
        relevant: per group, a non-empty set of indices into that group's passages.
    """
    ranks = [1 + next(pos for pos, i in enumerate(order) if i in rel) for order, rel in _orders(scores, relevant)]
    return float(np.mean([1.0 / r for r in ranks]))


def ndcg_at_k(scores: Sequence[Sequence[float]], relevant: Sequence[Iterable[int]], k: int = 10) -> float:
    """Mean NDCG@k with binary relevance (Järvelin & Kekäläinen 2002; gain 1, discount log2(rank + 1)).

    Per group, DCG@k = Σ_{rank ≤ k, relevant} 1 / log2(rank + 1) over the descending-score
    order (ties keep input order), and IDCG@k is the DCG of the ideal order, i.e.
    Σ_{rank ≤ min(k, |relevant|)} 1 / log2(rank + 1). Same as ``sklearn.metrics.ndcg_score``
    with 0/1 gains when there are no tied scores.

    Args: as :func:`mrr`, plus ``k`` ≥ 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    values = []
    for order, rel in _orders(scores, relevant):
        dcg = sum(1.0 / math.log2(rank + 2) for rank, i in enumerate(order[:k]) if i in rel)
        idcg = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(rel))))
        values.append(dcg / idcg)
    return float(np.mean(values))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity: float64 [n], ``cos(a[i], b[i])``; 0.0 where either row is all zeros.

    Args:
        a, b: float arrays of the same shape [n, d].
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"cosine_rows needs two [n, d] arrays of the same shape, got {a.shape} and {b.shape}.")
    return np.sum(_unit_rows(a) * _unit_rows(b), axis=1)


def _top_k_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """int [n, k]: indices of each row's k most cosine-similar other rows, best first (ties: lower index)."""
    u = _unit_rows(x)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def retrieval_agreement(ref: np.ndarray, cand: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose k nearest neighbours (cosine, self excluded) are the same in ``cand`` as in ``ref``.

    A row agrees when the *set* of its top-k neighbour indices is equal in both embedding
    matrices (order within the top k is ignored). With k = 1 this is the "same nearest
    neighbour" rate used to check that quantised embeddings still retrieve the same documents.

    Args:
        ref, cand: float arrays [n, d] (the fp32 reference and the optimised embeddings of
            the same n texts; d may differ between them); 1 ≤ k < n.
    """
    ref, cand = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
    if ref.ndim != 2 or cand.ndim != 2 or len(ref) != len(cand):
        raise ValueError(f"retrieval_agreement needs two [n, d] arrays with equal n, got {ref.shape} and {cand.shape}.")
    if not 1 <= k < len(ref):
        raise ValueError(f"k must be between 1 and n - 1 = {len(ref) - 1}, got {k}.")
    a, b = np.sort(_top_k_neighbours(ref, k), axis=1), np.sort(_top_k_neighbours(cand, k), axis=1)
    return float(np.mean(np.all(a == b, axis=1)))


def relative_loss(reference: float, optimised: float) -> float:
    """(reference − optimised) / reference, the gate's loss for a higher-is-better metric (DESIGN.md §5).

    Positive means the optimised model is worse (0.01 = 1 % loss); negative means it is better.
    When ``reference`` is 0 the loss is 0.0 if ``optimised`` is also 0, else −inf for an
    improvement (optimised > 0) and +inf for a drop below zero.
    """
    reference, optimised = float(reference), float(optimised)
    if reference == 0:
        return 0.0 if optimised == 0 else math.copysign(math.inf, -optimised)
    return (reference - optimised) / reference


def nmse(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Normalised mean squared error Σ(c − r)² / Σr² of two same-shape float arrays (0 = identical).

    Used as a continuous measure of how far an optimised model's logits are from the reference
    model's: unlike label or rank flips it is stable between eval sets of a few hundred examples.
    """
    r, c = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if r.shape != c.shape:
        raise ValueError(f"nmse needs equal shapes, got {r.shape} and {c.shape}")
    den = float((r ** 2).sum())
    return float(((c - r) ** 2).sum()) / den if den else float(((c - r) ** 2).sum())
