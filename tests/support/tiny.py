"""Tiny random checkpoints for fast tests: a 2-layer encoder (hidden 32) with a real fast tokenizer,
for any task × ``bert``/``distilbert``/``roberta``, built offline in well under a second."""

from __future__ import annotations

import functools
import json
import random
import string
from importlib.metadata import version as _pkg_version
from pathlib import Path

TASKS = ("feature-extraction", "text-classification", "token-classification", "ranking")
MODEL_TYPES = ("bert", "distilbert", "roberta")
SENTIMENT_LABELS = ("negative", "neutral", "positive")
BIO_LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")

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


