"""A deliberately weak 2-class BBC classifier on frozen MiniLM (many near-boundary examples), with its
validation/test eval files: the kind of head whose int8 keeps accuracy but flips labels (issue 11 §4).
Cached like the other trained fixtures (``trained_checkpoints["weak-text-classification"]``)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .trained import (_bbc_text, _cached_build, _check_saved, _fold_standardization, _pooler_head, _pooler_head_state, _save_minilm_head, _bbc_cls_states, _standardizer, _train_head, _write_report, torch_threads)


_BBC_WEAK = {"max_length": 128, "positive": ["business", "politics"], "epochs": 3, "lr": 1e-3,
             "label_noise": 0.35}
WEAK_LABELS = ("other", "business-or-politics")


def bbc_weak_classifier(out_dir: Path) -> Path:
    """A deliberately weak 2-class BBC News ``BertForSequenceClassification`` on frozen MiniLM; returns ``out_dir``.

    The kind of head issue 11 §4 found on a real review dataset (test accuracy 0.73, many examples near the
    decision boundary, so int8 kept accuracy within 1 % but flipped 3-6 % of labels). Built like
    :func:`bbc_classifier` (MiniLM's [CLS] state, pooler + classifier head, texts ``headline + "\\n" + body``
    cut to 128 tokens), on a 2-class merge of the 5 topics (``business-or-politics`` vs ``other``),
    trained on the 1,489 ``train`` articles with their labels flipped at random with probability 0.35 (a
    fixed seed): a head that learned a weak, noisy direction, like one trained on ambiguous labels.

    Also writes ``eval-validation.jsonl`` and ``eval-test.jsonl`` (``text``, ``label`` = one of
    :data:`WEAK_LABELS`, the true merged topic) for ``--eval-data``, and ``training_report.json``
    with the test accuracy and the share of test examples whose logit margin is below 0.05 / 0.2.
    Cached like the others. Build: about 40 s of MiniLM feature extraction on 2 idle cores.
    """
    return _cached_build(Path(out_dir), "bbc_weak_classifier", _BBC_WEAK, _build_bbc_weak_classifier)


def _build_bbc_weak_classifier(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from multiverse.evaldata import bbc_articles, split_indices

    p, t0 = _BBC_WEAK, time.perf_counter()
    articles = bbc_articles()
    train, val, test = (split_indices(len(articles), s) for s in ("train", "validation", "test"))
    y = torch.tensor([int(label in p["positive"]) for *_, label in articles])
    rng, picked = random.Random(0), train
    y_train = y[picked].clone()
    flip = torch.tensor([rng.random() < p["label_noise"] for _ in picked])
    y_train[flip] = 1 - y_train[flip]
    with torch_threads():
        encoder, tok, bf16, cls = _bbc_cls_states(articles, p["max_length"])
        t_feat = time.perf_counter() - t0
        mean, std = _standardizer(cls[train])
        head = _pooler_head(encoder, mean, std, 2)
        _train_head(head, (cls[picked] - mean) / std, y_train, torch.nn.functional.cross_entropy, p["epochs"], p["lr"])
        with torch.no_grad():
            logits = head((cls[test] - mean) / std)
        accuracy = (logits.argmax(-1) == y[test]).float().mean().item()
        margin = (logits[:, 1] - logits[:, 0]).abs()
        _fold_standardization(head[0], mean, std)
        _save_minilm_head(out_dir, AutoModelForSequenceClassification, _pooler_head_state(head), p["max_length"],
                          num_labels=2, id2label=dict(enumerate(WEAK_LABELS)),
                          label2id={n: i for i, n in enumerate(WEAK_LABELS)})
        check = _check_saved(out_dir, AutoModelForSequenceClassification, tok,
                             [_bbc_text(*articles[i][:2]) for i in test[:16]], head, cls[test[:16]], p["max_length"])
    for split, idx in (("validation", val), ("test", test)):
        rows = [{"text": _bbc_text(*articles[i][:2]), "label": WEAK_LABELS[int(y[i])]} for i in idx]
        (out_dir / f"eval-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _write_report(out_dir, {"task": "text-classification", "data": "bbc-news, 2-class merge, noisy training labels",
                            "n_train": len(picked), "n_flipped_train_labels": int(flip.sum()), "n_test": len(test),
                            "labels": list(WEAK_LABELS), "accuracy": round(accuracy, 4),
                            "test_margin_below_0.05": round((margin < 0.05).float().mean().item(), 4),
                            "test_margin_below_0.2": round((margin < 0.2).float().mean().item(), 4),
                            "max_length": p["max_length"], "params": p, "feature_dtype": "bfloat16" if bf16 else "float32",
                            **check, "feature_seconds": round(t_feat, 1),
                            "total_seconds": round(time.perf_counter() - t0, 1)})
