"""NER aggregation equals the HF ``token-classification`` pipeline (``aggregation_strategy="simple"``)
on WordPiece, byte-level BPE (RoBERTa) and SentencePiece (XLM-R-style Unigram) tokenizers,
all built offline (issue 11 §3). Spans are ``text[start:end]`` stripped of whitespace; a bare
"▁" piece never becomes an entity; no empty or overlapping entities.
"""

from __future__ import annotations

import numpy as np
import pytest

from multiverse.tasks import TextTokenizer, make_handler
from multiverse.tasks.token_classification import aggregate

TEXTS = ["Alice went to  paris, naïve? A, 😀 ok", "He said A,B and Zq went to Paris.", "bob",
         "Google bought Nokia for £3 in London , Tokyo and   Berlin ?!", "alice alice , carol ; david 😀😀 emma",
         "  leading and trailing spaces  ", "naïve café Zürich, UNITED party?"]


def _sharpen(model, tokenizer, o_share: float = 0.35) -> None:
    """Scale the token head so labels are confident and varied: ~``o_share`` of tokens ``O``."""
    import torch

    from support.tiny import _calibration_texts

    with torch.no_grad():
        model.classifier.weight *= 4
        enc = tokenizer(_calibration_texts() + TEXTS, padding=True, return_tensors="pt")
        logits = model(**enc).logits[enc["attention_mask"].bool()]
        model.classifier.bias -= logits.mean(0)  # every label gets predicted somewhere
        logits = model(**enc).logits[enc["attention_mask"].bool()]
        model.classifier.bias[0] += torch.quantile(logits[:, 1:].max(-1).values - logits[:, 0], o_share)


def _sentencepiece_checkpoint(out):
    """XLM-R style: a Unigram SentencePiece tokenizer (Metaspace "▁", prepend always, NFKC, repeated
    spaces collapsed) trained with ``tokenizers`` on the test corpus, and a tiny XLMRobertaForTokenClassification."""
    import torch
    from tokenizers import SentencePieceUnigramTokenizer, processors
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification, XLMRobertaTokenizerFast

    from support.tiny import BIO_LABELS, _corpus

    corpus = list(_corpus()) + [t.title() for t in _corpus()[:100]]
    sp = SentencePieceUnigramTokenizer()
    sp.train_from_iterator(corpus, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                           unk_token="<unk>", show_progress=False)
    backend = sp._tokenizer
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = XLMRobertaTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                  cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                  model_max_length=128)
    labels = {"id2label": dict(enumerate(BIO_LABELS)), "label2id": {n: i for i, n in enumerate(BIO_LABELS)}}
    config = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                              initializer_range=0.2, pad_token_id=1, bos_token_id=0, eos_token_id=2, **labels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = XLMRobertaForTokenClassification(config).eval()
    return model, tok


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = _build(kind, tmp_path_factory.mktemp(kind))
        return cache[kind]
    return get


@pytest.fixture(params=["wordpiece", "bpe", "sentencepiece"])
def ner(request, built):
    """(folder, PyTorch model, HF pipeline) of a tiny NER checkpoint with the given tokenizer kind."""
    return built(request.param)


def _build(kind, out):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from support import tiny_checkpoint

    if kind == "sentencepiece":
        model, tok = _sentencepiece_checkpoint(out)
    else:
        src = tiny_checkpoint("token-classification", out / "src", "roberta" if kind == "bpe" else "bert")
        model, tok = AutoModelForTokenClassification.from_pretrained(src).eval(), AutoTokenizer.from_pretrained(src)
    _sharpen(model, tok)
    tok.backend_tokenizer.no_padding()
    tok.backend_tokenizer.no_truncation()
    folder = out / "ckpt"
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    pipe = pipeline("token-classification", model=str(folder), aggregation_strategy="simple", device=-1)
    return folder, model, pipe


def _expected(text: str, hf: list[dict]) -> list[dict]:
    """The HF pipeline's groups and scores with the spans Multiverse promises: stripped of whitespace,
    groups the pipeline decodes to nothing (a bare "▁") dropped, no overlap with the previous entity."""
    out: list[dict] = []
    for e in hf:
        if not e["word"].strip():
            continue
        start, end = e["start"], e["end"]
        if out and start < out[-1]["end"]:
            start = out[-1]["end"]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            out.append({"entity_group": e["entity_group"], "score": float(e["score"]), "word": text[start:end],
                        "start": start, "end": end})
    return out


def _ours(folder, model, texts, params=None):
    import torch

    tokenizer = TextTokenizer(folder)
    enc = tokenizer.encode(texts, ("input_ids", "attention_mask"))
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in enc.arrays.items()}).logits.numpy()
    return enc, make_handler("token-classification", folder, model.config.to_dict()).postprocess(logits, enc, params or {})


def _check_invariants(text, entities):
    end = 0
    for e in entities:
        assert e["word"] == text[e["start"]:e["end"]] == e["word"].strip() != ""
        assert e["start"] >= end  # in order, no overlap
        end = e["end"]


@pytest.mark.parametrize("ignore", [None, [], ["O", "PER"]])
def test_aggregation_equals_hf_pipeline_simple(ner, ignore):
    folder, model, pipe = ner
    params = {} if ignore is None else {"ignore_labels": ignore}
    enc, got = _ours(folder, model, TEXTS, params)
    hf_ids = pipe.tokenizer(TEXTS, padding=True)["input_ids"]
    assert enc.arrays["input_ids"].tolist() == hf_ids  # the same tokens
    n = 0
    for text, ours in zip(TEXTS, got):
        hf = pipe(text, **({} if ignore is None else {"ignore_labels": ignore}))
        want = _expected(text, hf)
        assert [{k: v for k, v in e.items() if k != "score"} for e in ours] == \
               [{k: v for k, v in e.items() if k != "score"} for e in want], text
        np.testing.assert_allclose([e["score"] for e in ours], [e["score"] for e in want], rtol=1e-5)
        _check_invariants(text, ours)
        n += len(ours)
    assert n >= 10  # not degenerate
    if ignore == []:
        assert any(e["entity_group"] == "O" for ents in got for e in ents)  # [] ignores nothing


def test_sentencepiece_bare_pieces_never_become_entities(built):
    """The issue's cases on the SentencePiece tokenizer: "▁" pieces exist in these texts, and with
    every token labelled B-PER no entity is a bare "▁" (empty, a lone space, or the first letter of
    the next word overlapping it), spans carry no leading space and "A," gives "A" and ","."""
    folder, model, pipe = built("sentencepiece")
    tok = TextTokenizer(folder)
    enc = tok.encode(TEXTS, ("input_ids", "attention_mask"))
    assert sum(t == "▁" for e in enc.encodings for t in e.tokens) >= 3
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for text, e in zip(TEXTS, enc.encodings):
        probs = np.zeros((len(e.ids), len(labels)), dtype=np.float32)
        probs[:, 1] = 1.0  # every token B-PER: each token its own group, as in the HF pipeline
        special = [max(s, 1 - a) for s, a in zip(e.special_tokens_mask, e.attention_mask)]
        ents = aggregate(text, e.offsets, special, probs, labels, tokens=e.tokens)
        _check_invariants(text, ents)
        pieces = [t for t, s in zip(e.tokens, special) if not s]
        assert len(ents) == sum(1 for t in pieces if t.strip("▁"))  # one entity per non-bare piece
    text = "He said A, went to  paris"
    e = tok.encode([text], ("input_ids",)).encodings[0]
    probs = np.zeros((len(e.ids), len(labels)), dtype=np.float32)
    probs[:, 3] = 1.0
    words = [x["word"] for x in aggregate(text, e.offsets, e.special_tokens_mask, probs, labels, tokens=e.tokens)]
    assert "A" in words and "," in words and not any(w != w.strip() for w in words)


def test_aggregate_rules_on_hand_made_tokens():
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]

    def run(text, offsets, tags, tokens=None, ignore=("O",)):
        probs = np.full((len(tags), len(labels)), 0.01, dtype=np.float32)
        for i, t in enumerate(tags):
            probs[i, labels.index(t)] = 0.96
        return [(e["word"], e["start"], e["end"], e["entity_group"])
                for e in aggregate(text, offsets, [0] * len(tags), probs, labels, ignore, tokens)]

    # SentencePiece "▁paris" carries the space: the span is (14,19), not ' paris' at (13,19).
    text = "Alice went to paris"
    assert run(text, [(0, 5), (5, 10), (10, 13), (13, 19)], ["B-PER", "O", "O", "B-LOC"],
               ["▁Alice", "▁went", "▁to", "▁paris"]) == [("Alice", 0, 5, "PER"), ("paris", 14, 19, "LOC")]
    # A bare "▁" at the start has the next letter's offset: alone it is no entity, and it never overlaps.
    assert run("Ab", [(0, 1), (0, 1), (1, 2)], ["B-PER", "B-PER", "I-PER"], ["▁", "A", "b"]) == [("Ab", 0, 2, "PER")]
    # "A," with two B- tokens: two entities, as the HF pipeline gives.
    assert run("A, b", [(0, 1), (1, 2), (2, 4)], ["B-PER", "B-PER", "O"], ["A", ",", "▁b"]) == \
        [("A", 0, 1, "PER"), (",", 1, 2, "PER")]
    # A whitespace-only group vanishes, but still separates its neighbours (as in the HF pipeline);
    # I- after B- of the same type continues across whitespace.
    assert run("New  York", [(0, 3), (3, 4), (4, 9)], ["B-LOC", "B-PER", "I-LOC"], ["▁New", "▁", "▁York"]) == \
        [("New", 0, 3, "LOC"), ("York", 5, 9, "LOC")]
    assert run("New  York", [(0, 3), (4, 9)], ["B-LOC", "I-LOC"], ["▁New", "▁York"]) == [("New  York", 0, 9, "LOC")]
    # Byte-level pieces of one emoji share its offsets: no overlapping second entity.
    assert run("x😀", [(0, 1), (1, 2), (1, 2)], ["O", "B-PER", "B-LOC"]) == [("😀", 1, 2, "PER")]
    # ignore_labels=[] keeps the O groups too.
    assert run("a b", [(0, 1), (2, 3)], ["O", "B-PER"], ignore=()) == [("a", 0, 1, "O"), ("b", 2, 3, "PER")]


def test_ignore_labels_must_be_a_list():
    from multiverse.errors import InputError
    from multiverse.tasks.token_classification import ignore_labels

    assert ignore_labels({}) == ("O",) and ignore_labels({"ignore_labels": []}) == ()
    with pytest.raises(InputError, match="list of label strings"):
        ignore_labels({"ignore_labels": "O"})


def test_predictor_on_fp32_onnx_equals_hf_pipeline_sentencepiece(built, tmp_path):
    """End to end on the XLM-R-style checkpoint: fp32 ONNX export (export check included) through
    ``Predictor`` gives the HF pipeline's entities (spans normalised as promised)."""
    from multiverse import hub
    from multiverse.export import export
    from multiverse.inference import Predictor

    folder, model, pipe = built("sentencepiece")
    ckpt = hub.resolve(str(folder), task="token-classification")
    fp32 = export(ckpt, tmp_path / "fp32")
    got = Predictor(fp32.path, fp32.model_dir, "token-classification").predict(TEXTS).results
    for text, ours in zip(TEXTS, got):
        want = _expected(text, pipe(text))
        assert [(e["entity_group"], e["start"], e["end"]) for e in ours] == \
               [(e["entity_group"], e["start"], e["end"]) for e in want], text
        np.testing.assert_allclose([e["score"] for e in ours], [e["score"] for e in want], rtol=1e-4)
