"""Each metric pinned on small cases whose expected values are computed by hand in the comments."""

import math

import numpy as np
import pytest

from multiverse import metrics


def test_accuracy():
    # positions 0 and 1 match, 2 and 3 do not: 2 / 4
    assert metrics.accuracy(["a", "b", "c", "a"], ["a", "b", "b", "b"]) == 0.5
    assert metrics.accuracy([1, 2], [1, 2]) == 1.0


def test_macro_f1_over_union_of_classes():
    # gold a a b b, pred a b b c. F1 = 2TP / (2TP + FP + FN) per class:
    # a: TP1 FP0 FN1 -> 2/3;  b: TP1 FP1 FN1 -> 2/4;  c (only predicted): TP0 FP1 -> 0
    # mean = (2/3 + 1/2 + 0) / 3 = 7/18
    assert metrics.macro_f1(["a", "b", "b", "c"], ["a", "a", "b", "b"]) == pytest.approx(7 / 18)
    assert metrics.macro_f1([0, 1, 1], [0, 1, 1]) == 1.0


def test_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    gold, pred = rng.integers(0, 5, 200).tolist(), rng.integers(0, 6, 200).tolist()
    assert metrics.macro_f1(pred, gold) == pytest.approx(sklearn_metrics.f1_score(gold, pred, average="macro"))


def test_length_mismatch_and_empty_raise():
    with pytest.raises(ValueError, match="2 items"):
        metrics.accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        metrics.macro_f1([], [])


def test_entity_f1_micro_exact_match():
    gold = [[(0, 5, "PER"), (10, 15, "LOC")], [(0, 3, "ORG")]]
    pred = [[(0, 5, "PER"), (10, 15, "ORG")], [(0, 3, "ORG"), (4, 6, "LOC")]]
    # exact matches: (0,5,PER) and (0,3,ORG) -> TP 2; 4 predicted, 3 gold
    # P = 2/4, R = 2/3, F1 = 2PR/(P+R) = (2/3)/(7/6) = 4/7
    assert metrics.entity_f1(pred, gold) == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7})
    # wrong boundary is a miss, no predictions at all give zeros
    assert metrics.entity_f1([[(0, 4, "PER")]], [[(0, 5, "PER")]])["f1"] == 0.0
    assert metrics.entity_f1([[]], [[(0, 5, "PER")]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_mrr_ranks_1_2_4():
    scores = [[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.1, 0.2, 0.3, 0.4]]
    # relevant passage 0 is ranked 1st, 2nd and 4th: (1 + 1/2 + 1/4) / 3
    assert metrics.mrr(scores, [{0}, {0}, {0}]) == pytest.approx((1 + 0.5 + 0.25) / 3)
    # first relevant counts: ranks of {1, 2} in group 3 are 3 and 2 -> 1/2
    assert metrics.mrr([scores[2]], [{1, 2}]) == 0.5


def test_ties_keep_input_order():
    assert metrics.mrr([[0.5, 0.5]], [{1}]) == 0.5


def test_ndcg_at_k_binary():
    scores, relevant = [[0.9, 0.8, 0.7, 0.6]], [{1, 3}]
    # relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); ideal: ranks 1, 2: IDCG = 1 + 1/log2(3)
    dcg, idcg = 1 / math.log2(3) + 1 / math.log2(5), 1 + 1 / math.log2(3)
    assert metrics.ndcg_at_k(scores, relevant) == pytest.approx(dcg / idcg)
    assert dcg / idcg == pytest.approx(1.061607 / 1.630930, abs=1e-6)  # = 0.650921
    # k=2 cuts the rank-4 hit; IDCG@2 is unchanged
    assert metrics.ndcg_at_k(scores, relevant, k=2) == pytest.approx((1 / math.log2(3)) / idcg)
    # relevant at rank 1 only -> 1.0; averaged over groups
    assert metrics.ndcg_at_k(scores + [[1.0, 0.0]], relevant + [{0}]) == pytest.approx((dcg / idcg + 1) / 2)


def test_ndcg_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores = rng.random((20, 10))
    gains = (rng.random((20, 10)) < 0.3).astype(float)
    gains[:, 0] = 1  # every group has a relevant passage
    relevant = [set(np.flatnonzero(g)) for g in gains]
    expected = sklearn_metrics.ndcg_score(gains, scores, k=5)
    assert metrics.ndcg_at_k(list(scores), relevant, k=5) == pytest.approx(expected)


def test_ranking_needs_relevant_indices():
    with pytest.raises(ValueError, match="relevant"):
        metrics.mrr([[0.1, 0.2]], [set()])
    with pytest.raises(ValueError, match="relevant"):
        metrics.ndcg_at_k([[0.1, 0.2]], [{2}])


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    b = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [-3.0, -4.0]], dtype=np.float32)
    # orthogonal 0, parallel 1, zero row 0 (defined), opposite -1
    out = metrics.cosine_rows(a, b)
    assert out.dtype == np.float64 and out.shape == (4,)
    np.testing.assert_allclose(out, [0.0, 1.0, 0.0, -1.0], atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        metrics.cosine_rows(a, b[:2])


def test_retrieval_agreement():
    ref = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    # ref nearest neighbours: 0<->1, 2<->3
    assert metrics.retrieval_agreement(ref, ref * 3) == 1.0
    swapped = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]])  # nearest: 0<->2, 1<->3
    assert metrics.retrieval_agreement(ref, swapped) == 0.0
    # row 3 moves towards row 1: cos(r3, r1) = 0.74 / (0.9055 * 0.8246) = 0.991 > cos(r3, r0) = 0.970,
    # so only row 3 changes its neighbour (2 -> 1); rows 0, 1, 2 keep theirs: 3 / 4
    partly = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.8, 0.2]])
    assert metrics.retrieval_agreement(ref, partly) == 0.75
    # k = n - 1: the neighbour set is always "all others"
    assert metrics.retrieval_agreement(ref, swapped, k=3) == 1.0
    with pytest.raises(ValueError, match="k must"):
        metrics.retrieval_agreement(ref, ref, k=4)


def test_relative_loss():
    assert metrics.relative_loss(0.9, 0.891) == pytest.approx(0.01)  # 1 % worse
    assert metrics.relative_loss(0.8, 0.88) == pytest.approx(-0.1)  # 10 % better
    assert metrics.relative_loss(0.0, 0.0) == 0.0
    assert metrics.relative_loss(0.0, 0.5) == -math.inf


def test_nmse_hand_case():
    from multiverse.metrics import nmse

    ref = np.array([[3.0, 4.0]])                    # Σr² = 25
    assert nmse(ref, np.array([[3.0, 1.0]])) == pytest.approx(9 / 25)
    assert nmse(ref, ref) == 0.0
    with pytest.raises(ValueError):
        nmse(ref, np.zeros(3))
