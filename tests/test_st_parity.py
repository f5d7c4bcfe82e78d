"""Embeddings equal ``SentenceTransformer.encode`` on raw text (issue 11 §3).

A tiny sentence-transformers checkpoint with a *cased* WordPiece vocabulary is built here,
offline; its ``sentence_bert_config.json`` / ``config_sentence_transformers.json`` / modules
are varied and each variant is compared through ``Predictor`` on one fp32 ONNX export
against the real ``SentenceTransformer`` on the same folder.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest

from multiverse import hub
from multiverse.errors import ExportError
from multiverse.export import check_sentence_transformers_parity, export
from multiverse.inference import Predictor

TEXTS = ["ALICE WENT TO PARIS", "Alice went to Paris", "Thanks!", "a", "  Bob and CAROL met in London  ",
         "naïve café 😀 in Berlin?", " ".join(["The Market Report said Profit grew"] * 40)]


def _cased_st_checkpoint(out: Path) -> Path:
    """A random 2-layer BERT (hidden 32) with a cased WordPiece tokenizer (upper- and lower-case
    pieces: "ALICE" and "alice" tokenize differently) and a sentence-transformers layout."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from support.tiny import _corpus

    words = sorted(set(" ".join(_corpus()).split()))
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *("##" + c for c in string.ascii_letters + string.digits),
              *words, *(w.upper() for w in words[:150]), *(w.capitalize() for w in words)]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=False, model_max_length=128)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = BertModel(config).eval()
    out.mkdir(parents=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    _write_st(out, do_lower_case=True, max_seq_length=128)
    return out


def _write_st(folder: Path, *, do_lower_case=False, max_seq_length=128, pooling=("mean",), include_prompt=True,
              prompts=None, default_prompt_name=None, dense: int | None = None, normalize=True,
              v5: bool = False, processing_kwargs: dict | None = None,
              activation: str = "torch.nn.modules.activation.Tanh") -> None:
    """Write a sentence-transformers layout; ``v5`` uses the 5.x file format (``pooling_mode``,
    module paths under ``sentence_transformers.base``/``sentence_transformer.modules``)."""
    if v5:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"}]
        cfg = {"embedding_dimension": 32, "pooling_mode": pooling[0] if len(pooling) == 1 else list(pooling),
               "include_prompt": include_prompt}
    else:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
                  "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                  "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
        cfg = {"word_embedding_dimension": 32, **{k: v in pooling for k, v in legacy.items()},
               "include_prompt": include_prompt}
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    if dense:
        import torch
        from safetensors.torch import save_file

        width = 32 * len(pooling)
        gen = torch.Generator().manual_seed(3)
        (folder / "2_Dense").mkdir(exist_ok=True)
        save_file({"linear.weight": torch.randn(dense, width, generator=gen) * 0.3, "linear.bias": torch.randn(dense, generator=gen)},
                  str(folder / "2_Dense" / "model.safetensors"))
        (folder / "2_Dense" / "config.json").write_text(json.dumps(
            {"in_features": width, "out_features": dense, "bias": True,
             "activation_function": activation}))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense" if v5 else "sentence_transformers.models.Dense"})
    if normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    st_cfg = {"max_seq_length": max_seq_length, "do_lower_case": do_lower_case}
    if processing_kwargs:
        st_cfg["processing_kwargs"] = processing_kwargs
    (folder / "sentence_bert_config.json").write_text(json.dumps(st_cfg))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": prompts or {}, "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine"}))


@pytest.fixture(scope="module")
def cased(tmp_path_factory):
    """(checkpoint folder, its fp32 ONNX export with the full export check)."""
    root = tmp_path_factory.mktemp("st-parity")
    path = _cased_st_checkpoint(root / "ckpt")
    ckpt = hub.resolve(str(path), task="feature-extraction")
    return ckpt, export(ckpt, root / "fp32")


def _variant(cased, tmp_path, tokenizer_max_length: int | None = None, **st) -> tuple[Predictor, object]:
    from sentence_transformers import SentenceTransformer

    ckpt, fp32 = cased
    folder = tmp_path / "variant"
    shutil.copytree(fp32.model_dir, folder, ignore=shutil.ignore_patterns("*.onnx", "*.onnx_data", "*.onnx.data"))
    for sub in ("1_Pooling", "2_Dense", "2_Normalize", "3_Normalize"):
        shutil.rmtree(folder / sub, ignore_errors=True)
    _write_st(folder, **st)
    if tokenizer_max_length:
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        tc["model_max_length"] = tokenizer_max_length
        (folder / "tokenizer_config.json").write_text(json.dumps(tc))
    model_dir = tmp_path / "st"  # the same folder as sentence-transformers loads it (weights included)
    shutil.copytree(folder, model_dir)
    shutil.copy2(ckpt.path / "model.safetensors", model_dir / "model.safetensors")
    return Predictor(fp32.path, folder, "feature-extraction"), SentenceTransformer(str(model_dir), device="cpu",
                                                                                   local_files_only=True)


def _cosines(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    return (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)


def test_do_lower_case_on_a_cased_tokenizer_matches_encode(cased):
    """The issue's case: "ALICE WENT TO PARIS" had cosine 0.896 to SentenceTransformer.encode."""
    from sentence_transformers import SentenceTransformer

    ckpt, fp32 = cased
    st = SentenceTransformer(str(ckpt.path), device="cpu", local_files_only=True)
    want = st.encode(TEXTS, convert_to_numpy=True)
    got = np.asarray(Predictor(fp32.path, fp32.model_dir, "feature-extraction").predict(TEXTS).results)
    assert _cosines(got, want).min() >= 0.9999
    assert np.abs(got - want).max() < 1e-4
    # Lower-casing happened: upper- and lower-case spellings embed alike, and offsets still point into the raw text.
    assert np.abs(got[0] - got[1]).max() < 1e-6
    enc = Predictor(fp32.path, fp32.model_dir, "feature-extraction").encode([TEXTS[0]])
    assert "".join(TEXTS[0][s:e] for s, e in enc.encodings[0].offsets[1:-1]) == TEXTS[0].replace(" ", "")


@pytest.mark.parametrize("st", [
    {"do_lower_case": False},
    {"do_lower_case": True, "max_seq_length": 16},
    {"max_seq_length": 64, "tokenizer_max_length": 32},  # max_seq_length replaces the tokenizer's limit
    {"pooling": ("cls", "mean"), "dense": 8},
    {"pooling": ("max",), "normalize": False},
    {"pooling": ("weightedmean",)},
    {"pooling": ("lasttoken",), "prompts": {"query": "query: ", "doc": "passage: "}, "default_prompt_name": "query"},
    {"pooling": ("mean",), "include_prompt": False, "prompts": {"query": "Represent this SENTENCE: "},
     "default_prompt_name": "query", "do_lower_case": True},
    {"pooling": ("cls",), "include_prompt": False, "prompts": {"query": "query: "}, "default_prompt_name": "query"},
    {"pooling": ("mean_sqrt_len_tokens",), "prompts": {"query": "query: "}, "default_prompt_name": None},
    {"v5": True, "pooling": ("max", "mean"), "dense": 8, "do_lower_case": True},
    {"dense": 8, "activation": "torch.nn.modules.activation.GELU", "normalize": False},
    {"v5": True, "processing_kwargs": {"text": {"max_length": 12}}},
], ids=lambda st: ",".join(f"{k}={v}" for k, v in st.items()))
def test_sentence_transformers_config_variants_match_encode(cased, tmp_path, st):
    predictor, model = _variant(cased, tmp_path, **st)
    if "processing_kwargs" not in st:  # a per-call max_length does not show in ST's max_seq_length
        assert predictor.max_length == model.max_seq_length
    want = model.encode(TEXTS, convert_to_numpy=True)
    got = np.asarray(predictor.predict(TEXTS).results)
    cos = _cosines(got, want)
    assert cos.min() >= 0.9999, cos
    assert np.abs(got - want).max() < 1e-4


def test_max_seq_length_is_capped_by_the_position_limit(cased, tmp_path):
    """sentence-transformers would index past the position table (it does not cap ``max_seq_length``);
    Multiverse truncates at the real position limit instead."""
    predictor, _ = _variant(cased, tmp_path, max_seq_length=4096, tokenizer_max_length=32)
    assert predictor.max_length == 128  # max_position_embeddings


def test_export_check_names_the_cosine_when_preprocessing_differs(cased, tmp_path):
    """The export check compares with SentenceTransformer.encode on raw text: dropping do_lower_case
    from the graph's folder (what Multiverse did before) fails it with the cosine in the message."""
    ckpt, fp32 = cased
    folder = tmp_path / "broken"
    shutil.copytree(fp32.model_dir, folder)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    broken = type(fp32)(path=folder / "model.onnx", model_dir=folder, stage="fp32", opset=fp32.opset)
    with pytest.raises(ExportError, match=r"cosine 0\.\d+ to SentenceTransformer\.encode"):
        check_sentence_transformers_parity(ckpt, broken)
    assert check_sentence_transformers_parity(ckpt, fp32) >= 0.9999


def test_unsupported_module_is_refused(cased, tmp_path):
    from multiverse.errors import InputError

    ckpt, fp32 = cased
    folder = tmp_path / "ln"
    shutil.copytree(fp32.model_dir, folder, ignore=shutil.ignore_patterns("*.onnx"))
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(InputError, match="LayerNorm"):
        Predictor(fp32.path, folder, "feature-extraction")


def test_fp32_bundle_matches_encode_with_prompt_dense_and_lower_case(cased, tmp_path):
    """Through the whole pipeline: an fp32 bundle carries every sentence-transformers file
    (lower-casing, default prompt with include_prompt false, concatenated pooling, Dense,
    Normalize, max_seq_length) and ``Predictor.from_bundle`` equals ``SentenceTransformer.encode``."""
    from sentence_transformers import SentenceTransformer

    from multiverse.pipeline import optimize

    ckpt, _ = cased
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt.path, folder)
    shutil.rmtree(folder / "1_Pooling")
    (folder / "2_Normalize").mkdir(exist_ok=True)
    _write_st(folder, do_lower_case=True, max_seq_length=48, pooling=("cls", "mean"), include_prompt=False,
              prompts={"query": "Query: ", "passage": ""}, default_prompt_name="query", dense=16)
    b = optimize(str(folder), "native", out=tmp_path / "out", precision="fp32", task="feature-extraction")
    p = Predictor.from_bundle(b)
    assert p.max_length == 48 and b.manifest["pooling"]["include_prompt"] is False
    want = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(TEXTS, convert_to_numpy=True)
    got = np.asarray(p.predict(TEXTS).results)
    assert got.shape == (len(TEXTS), 16)
    assert _cosines(got, want).min() >= 0.9999 and np.abs(got - want).max() < 1e-4
