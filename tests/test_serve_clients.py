"""Real client packages against the server on 127.0.0.1 (uvicorn in a thread, the ``multiverse serve`` server
path, tiny bundles): the official ``openai`` SDK, ``huggingface_hub.InferenceClient`` and ``infinity_client``
use their own fixed paths (``/v1/embeddings`` with base64, ``/v1/models``, ``POST /`` by task, ``/embeddings``,
``/models``), and their answers equal ``Predictor.predict`` on the same inputs, for an ONNX Runtime bundle and for
an OpenVINO IR bundle; the served embeddings agree with ``sentence_transformers`` on the source checkpoint.
About 10 s per runtime (plus the shared tiny-bundle fixtures)."""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from serve_fixtures import ThreadServer

from multiverse.inference import Predictor
from multiverse.serve.app import create_app
from multiverse.serve.settings import ServeSettings

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Serving encoders on CPUs", "naïve café in Tokyo 東京"]


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def served(request, tiny_bundles):
    """task → (url, Predictor) for the feature-extraction, text- and token-classification tiny bundles, built for
    ONNX Runtime (``tiny_bundles``) and for OpenVINO (an IR bundle, conftest's ``tiny_ov_bundles``)."""
    if request.param == "openvino":
        pytest.importorskip("openvino")
        ov = request.getfixturevalue("tiny_ov_bundles")
        paths = {task: ov[task].path for task in ("feature-extraction", "text-classification", "token-classification")}
    else:
        paths = {task: Path(tiny_bundles[task]) for task in tiny_bundles}
    out, stack = {}, []
    try:
        for task in ("feature-extraction", "text-classification", "token-classification"):
            path = paths[task]
            settings = ServeSettings(model_name=f"tiny-{task}")
            srv = ThreadServer(create_app(path, settings), settings).__enter__()
            stack.append(srv)
            srv.wait_ready(60)
            out[task] = (srv.url, Predictor.from_bundle(path))
        out["runtime"] = request.param
        yield out
    finally:
        for srv in stack:
            srv.__exit__(None, None, None)


@contextmanager
def _hub_client_on_loopback():
    """huggingface_hub refuses every HTTP request under HF_HUB_OFFLINE=1 (the suite's setting); let it reach
    127.0.0.1 only, so the test still cannot touch the Hub."""
    import requests
    from huggingface_hub import configure_http_backend
    from huggingface_hub.utils._http import OfflineAdapter

    def factory() -> requests.Session:
        session = requests.Session()
        session.mount("http://", OfflineAdapter())
        session.mount("https://", OfflineAdapter())
        session.mount("http://127.0.0.1:", requests.adapters.HTTPAdapter())
        return session

    configure_http_backend(backend_factory=factory)
    try:
        yield
    finally:
        configure_http_backend()


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=tol, atol=1e-6)


def test_openai_sdk_embeddings_default_base64_and_float_and_models_list(served):
    from openai import OpenAI

    url, predictor = served["feature-extraction"]
    want = predictor.predict(TEXTS).results
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    got = client.embeddings.create(input=TEXTS, model="tiny")  # the SDK asks for base64 and decodes it
    assert [d.index for d in got.data] == [0, 1, 2] and got.model == "tiny-feature-extraction"
    _close([d.embedding for d in got.data], want)
    assert got.usage.prompt_tokens > 0
    floats = client.embeddings.create(input=TEXTS[0], model="tiny", encoding_format="float")
    _close(floats.data[0].embedding, want[0])
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-feature-extraction"] and models.data[0].owned_by == "multiverse"


def test_huggingface_inference_client_on_post_root(served):
    from huggingface_hub import InferenceClient

    fe_url, fe = served["feature-extraction"]
    tc_url, tc = served["text-classification"]
    ner_url, ner = served["token-classification"]
    with _hub_client_on_loopback():
        vec = InferenceClient(model=fe_url, timeout=30).feature_extraction(TEXTS[0])
        _close(np.asarray(vec).reshape(-1), fe.predict([TEXTS[0]]).results[0])

        sims = InferenceClient(model=fe_url, timeout=30).sentence_similarity(TEXTS[0], TEXTS[1:])
        vecs = np.asarray(fe.predict(TEXTS, {"normalize": True}).results)
        _close(sims, [float(vecs[0] @ vecs[i]) for i in (1, 2)])

        labels = InferenceClient(model=tc_url, timeout=30).text_classification(TEXTS[1])
        want = tc.predict([TEXTS[1]], {"top_k": None}).results[0]  # TEI's POST / answers every label
        assert len(labels) == len(tc.config["id2label"]) > 1
        assert [x.label for x in labels] == [w["label"] for w in want]
        _close([x.score for x in labels], [w["score"] for w in want])
        two = InferenceClient(model=tc_url, timeout=30).text_classification(TEXTS[1], top_k=2)
        assert len(two) == 2

        entities = InferenceClient(model=ner_url, timeout=30).token_classification(TEXTS[2])
        want = ner.predict([TEXTS[2]]).results[0]
        assert [(e.entity_group, e.word, e.start, e.end) for e in entities] == \
            [(w["entity_group"], w["word"], w["start"], w["end"]) for w in want]
        for e in entities:
            assert e.word == TEXTS[2][e.start:e.end]


def test_clients_get_logits_truncation_errors_and_extra_fields_ignored(served):
    """``InferenceClient.text_classification(function_to_apply="none")`` gets the logits (as TEI's ``raw_scores``);
    ``feature_extraction(truncate=False)`` on a text over the token limit fails 422 ``InputTooLong`` (as TEI) and
    succeeds with truncation; a text over the server's character limit fails 422 ``TooManyCharacters`` either way; the OpenAI SDK's ``extra_body`` fields are ignored (as TEI and infinity ignore unknown
    fields)."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError
    from openai import OpenAI

    fe_url, fe = served["feature-extraction"]
    tc_url, tc = served["text-classification"]
    long_text = "A long document. " * 1500
    with _hub_client_on_loopback():
        got = InferenceClient(model=tc_url, timeout=30).text_classification(TEXTS[1], function_to_apply="none",
                                                                             top_k=100)
        logits = tc.run_batched(tc.encode([TEXTS[1]]))[0]
        labels = tc.config["id2label"]
        order = np.argsort(-logits, kind="stable")
        assert [x.label for x in got] == [labels[str(i)] for i in order]
        _close([x.score for x in got], logits[order])

        client = InferenceClient(model=fe_url, timeout=30)
        with pytest.raises(HfHubHTTPError) as info:
            client.feature_extraction(long_text, truncate=False)
        assert info.value.response.status_code == 422
        assert info.value.response.json()["error_type"] == "InputTooLong"
        _close(np.asarray(client.feature_extraction(long_text, truncate=True)).reshape(-1),
               fe.predict([long_text]).results[0])
        # Over the server's --max-chars (default 50,000) truncation cannot help: a distinct error saying so.
        with pytest.raises(HfHubHTTPError) as info:
            client.feature_extraction("word " * 12_000, truncate=True)
        assert info.value.response.status_code == 422
        body = info.value.response.json()
        assert body["error_type"] == "TooManyCharacters" and "--max-chars" in body["error"], body

    openai = OpenAI(base_url=fe_url + "/v1", api_key="unused", max_retries=0, timeout=30)
    got = openai.embeddings.create(input=TEXTS, model="tiny", encoding_format="float",
                                   extra_body={"surprise": 1, "input_type": "query"})
    _close([d.embedding for d in got.data], fe.predict(TEXTS).results)


def test_infinity_client_embeddings_and_models(served):
    from infinity_client import Client
    from infinity_client.api.default import embeddings, models
    from infinity_client.models import OpenAIEmbeddingInputText, OpenAIEmbeddingResult, OpenAIModelInfo

    url, predictor = served["feature-extraction"]
    with Client(base_url=url, timeout=30) as client:
        result = embeddings.sync(client=client, body=OpenAIEmbeddingInputText(input_=TEXTS, model="tiny"))
        assert isinstance(result, OpenAIEmbeddingResult), result
        _close([d.embedding for d in result.data], predictor.predict(TEXTS).results)
        info = models.sync(client=client)
        assert isinstance(info, OpenAIModelInfo) and [m.id for m in info.data] == ["tiny-feature-extraction"]
        assert info.data[0].capabilities == ["embed"]


def test_tei_similarity_route_and_empty_sentences(served):
    import httpx

    url, predictor = served["feature-extraction"]
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS}}
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/similarity", json=body)
        assert r.status_code == 200 and len(r.json()) == 3
        assert math.isclose(r.json()[0], 1.0, rel_tol=1e-5)
        r = c.post("/similarity", json={"inputs": {"source_sentence": TEXTS[0], "sentences": []}})
        assert r.status_code == 400 and "`sentences` is empty" in r.json()["error"]
        r = c.post("/similarity", json={"inputs": {"source_sentence": "\u200b", "sentences": ["x"]}})
        assert r.status_code == 400 and "source_sentence" in r.json()["error"]


def test_info_models_and_metrics_name_the_runtime(served):
    """``/info`` (TEI's fields unchanged, plus ``backend``, ``backend_version``, ``backend_version_built``),
    infinity's ``/models`` ``backend`` and ``/metrics``' ``multiverse_runtime_info`` say which runtime serves the
    model and its version; no help text claims ONNX Runtime for an OpenVINO bundle."""
    import httpx

    from multiverse.runtime import engine_version

    runtime = served["runtime"]
    url, predictor = served["feature-extraction"]
    built = predictor.bundle.manifest["runtime"]["engine"]
    assert built["name"] == runtime
    with httpx.Client(base_url=url, timeout=30) as c:
        info = c.get("/info").json()
        models = c.get("/models").json()
        metrics = c.get("/metrics").text
    assert {"model_id", "model_sha", "model_dtype", "model_type", "max_input_length", "max_concurrent_requests",
            "max_batch_tokens", "max_client_batch_size", "tokenization_workers", "version"} <= set(info)
    assert (info["performance_hint"], info["streams"]) == ("latency", 1)
    assert info["backend"] == runtime and info["backend_version"] == engine_version(runtime)
    assert info["backend_version"] and info["backend_version_built"] == built["version"]
    assert models["data"][0]["backend"] == f"multiverse-{runtime}"
    line = next(x for x in metrics.splitlines() if x.startswith("multiverse_runtime_info{"))
    assert f'backend="{runtime}"' in line and f'version="{engine_version(runtime)}"' in line and line.endswith(" 1.0")
    help_lines = [x for x in metrics.splitlines() if x.startswith("# HELP")]
    assert not any("ONNX Runtime" in x and "OpenVINO" not in x for x in help_lines), help_lines


def test_tei_predict_answers_every_label_best_first_unless_top_k_says(served):
    """TEI's ``/predict`` has no ``top_k`` and answers all labels sorted by score (router/src/http/server.rs);
    Multiverse's ``/predict`` does the same by default, and ``parameters.top_k`` still narrows it."""
    import httpx

    url, tc = served["text-classification"]
    n_labels = len(tc.config["id2label"])
    with httpx.Client(base_url=url, timeout=30) as c:
        one = c.post("/predict", json={"inputs": TEXTS[1]}).json()
        batch = c.post("/predict", json={"inputs": TEXTS, "raw_scores": True}).json()
        top1 = c.post("/predict", json={"inputs": TEXTS[1], "parameters": {"top_k": 1}}).json()
    assert len(one) == n_labels > 1 and [x["score"] for x in one] == sorted((x["score"] for x in one), reverse=True)
    _close([x["score"] for x in one], [w["score"] for w in tc.predict([TEXTS[1]], {"top_k": None}).results[0]])
    assert [len(r) for r in batch] == [n_labels] * len(TEXTS)
    assert top1 == [one[0]]
    assert len(tc.predict([TEXTS[1]]).results[0]) == 1  # the library keeps transformers' pipeline default


def test_embeddings_agree_with_sentence_transformers_on_the_source_checkpoint(served):
    """The served embeddings (OpenAI route) against ``SentenceTransformer.encode`` of the checkpoint the bundle was
    built from (its manifest's ``source.local_path``: a sentence-transformers folder), per text."""
    from openai import OpenAI
    from sentence_transformers import SentenceTransformer

    url, predictor = served["feature-extraction"]
    source = predictor.bundle.manifest["source"]["local_path"]
    want = SentenceTransformer(source, device="cpu").encode(TEXTS, normalize_embeddings=True)
    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    got = np.asarray([d.embedding for d in client.embeddings.create(input=TEXTS, model="tiny").data])
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert got.shape == want.shape
    # As close as the accuracy gate measured on its 270 built-in texts (min cosine to PyTorch: ~1.0 for the tiny
    # ONNX bundle, 0.99978 for the OpenVINO int8 one; these 3 texts measured 0.9998-0.9999), less 1e-3 of slack.
    floor = predictor.bundle.manifest["validation"]["details"]["min_cosine"] - 1e-3
    assert cosine.min() >= floor, (served["runtime"], cosine, floor)
