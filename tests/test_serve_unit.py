"""Serve internals without a real model: settings, body parsing, the engine's queue and batching, and
the HTTP behaviours that need a controllable model (readiness, 429, 500, API key, body limit, metrics)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
from serve_fixtures import ThreadServer

from multiverse.errors import InputError, UsageError
from multiverse.inference import join_outputs, normalize_inputs, plan_runs, slice_rows
from multiverse.serve.app import create_app
from multiverse.serve.engine import Engine, Overloaded
from multiverse.serve.schemas import ApiError, PredictRequest, parse
from multiverse.serve.settings import ServeSettings
from multiverse.tasks import Encoded

# ---- a controllable fake model ------------------------------------------------------------------


class _Handler:
    output = "logits"
    accepts_pairs = True

    def postprocess(self, output, enc, params):
        scale = params.get("top_k") or 1
        return [[{"label": "LEN", "score": float(row[0]) * scale}] for row in output]

    def info(self, dim=None):
        return {"classifier": {"id2label": {"0": "LEN"}, "label2id": {"LEN": 0}}}


class FakePredictor:
    """Text-classification-shaped: score = number of words; ``delay`` seconds per run; ``fail`` raises."""

    task = "text-classification"
    max_length = 16
    config: dict = {"id2label": {"0": "LEN"}}

    def __init__(self, delay: float = 0.0, fail: str | None = None):
        self.handler = _Handler()
        self.delay = delay
        self.fail = fail
        self.runs: list[int] = []

    def normalize(self, inputs):
        return normalize_inputs(inputs, accepts_pairs=False, requires_pairs=False)

    def encode(self, items):
        if any(isinstance(t, str) and "\x00bad" in t for t in items):
            raise InputError("the fake tokenizer refuses this text")
        lens = [min(len(str(t).split()), self.max_length) or 1 for t in items]
        longest = max(lens)
        ids = np.zeros((len(items), longest), dtype=np.int64)
        mask = np.zeros_like(ids)
        for i, n in enumerate(lens):
            ids[i, :n] = 7
            mask[i, :n] = 1
        return Encoded({"input_ids": ids, "attention_mask": mask}, [], list(items), int(mask.sum()))

    def run(self, enc):
        if self.fail:
            raise RuntimeError(self.fail)
        if self.delay:
            time.sleep(self.delay)
        self.runs.append(enc.arrays["input_ids"].shape[0])
        return enc.arrays["attention_mask"].sum(axis=1, keepdims=True).astype(np.float32)

    def plan(self, enc, max_run_tokens=None):
        return plan_runs(enc.arrays["attention_mask"].sum(axis=1).tolist(), max_run_tokens or 4096, False)

    def postprocess(self, output, enc, params=None):
        return self.handler.postprocess(output, enc, params or {})

    def predict(self, inputs, params=None):
        items = self.normalize(inputs)
        enc = self.encode(items)
        output = join_outputs([self.run(slice_rows(enc, a, b)) for a, b in self.plan(enc)],
                              enc.arrays["input_ids"].shape[1])

        class P:
            results = self.postprocess(output, enc, params)

        return P()


# ---- settings and parsing ---------------------------------------------------------------------------


def test_settings_defaults_and_validation():
    s = ServeSettings()
    assert (s.host, s.port, s.max_batch, s.max_body_bytes, s.batch_tokens) == ("127.0.0.1", 8080, 256, 4 << 20, 0)
    assert ServeSettings(api_key="s3cret").public()["api_key"] is True  # never the key itself
    for bad in ({"port": 70000}, {"max_batch": 0}, {"max_queue": 0}, {"batch_tokens": -1}, {"api_key": ""},
                {"threads": 0}, {"max_body_bytes": 10}):
        with pytest.raises(UsageError):
            ServeSettings(**bad)


@pytest.mark.parametrize("body,status,kind", [
    (b"", 400, "MalformedBody"),
    (b"not json", 400, "MalformedBody"),
    (b'{"inputs": "\xff\xfe"}', 400, "MalformedBody"),            # invalid UTF-8
    (b'{"inputs": "\\ud800"}', 400, "MalformedBody"),             # lone surrogate
    (b"[" * 10_000 + b"]" * 10_000, 400, "MalformedBody"),        # nested 10,000 deep
    (b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, "MalformedBody"),
    (b"[]", 422, "InvalidInput"),
    (b'"text"', 422, "InvalidInput"),
    (b"{}", 422, "InvalidInput"),
    (b'{"inputs": 5}', 422, "InvalidInput"),
    (b'{"inputs": null}', 422, "InvalidInput"),
    (b'{"inputs": ["a", 1]}', 422, "InvalidInput"),
    (b'{"inputs": [["a", "b", "c"]]}', 422, "InvalidInput"),
    (b'{"inputs": "a", "parameters": "x"}', 422, "InvalidInput"),
])
def test_parse_rejects_bad_bodies_without_echoing_them(body, status, kind):
    with pytest.raises(ApiError) as info:
        parse(PredictRequest, body)
    assert (info.value.status, info.value.error_type) == (status, kind)
    assert len(info.value.message) < 300 and "\\ud800" not in info.value.message


def test_parse_ignores_unknown_top_level_fields_as_tei_and_infinity_do():
    assert parse(PredictRequest, b'{"inputs": "a", "surprise": 1, "model": "x"}').inputs == "a"


def test_parse_accepts_the_three_input_shapes():
    assert parse(PredictRequest, b'{"inputs": "a"}').inputs == "a"
    assert parse(PredictRequest, b'{"inputs": ["a", "b"]}').inputs == ["a", "b"]
    assert parse(PredictRequest, b'{"inputs": [["q", "p"]], "parameters": {"raw_scores": true}}').inputs == [("q", "p")]


def test_each_task_params_model_validates_and_is_the_openapi_parameters_schema():
    from multiverse.serve.schemas import request_schemas
    from multiverse.tasks import TASKS

    tc = TASKS["text-classification"].Params
    assert tc.read({"top_k": 2.0, "raw_scores": True}, "tc") == {"top_k": 2, "raw_scores": True}
    assert tc.read(None, "tc") == {} and tc.read({"top_k": None}, "tc") == {"top_k": None}
    for bad, key in (({"top_k": "2"}, "top_k"), ({"top_k": True}, "top_k"), ({"top_k": 0}, "top_k"),
                     ({"truncate": "no"}, "truncate"), ({"function_to_apply": "tanh"}, "function_to_apply"),
                     ({"truncation_direction": "left"}, "truncation_direction")):
        with pytest.raises(InputError, match=f"`{key}` must be"):
            tc.read(bad, "text-classification")
    with pytest.raises(InputError, match="Unknown parameter `normalize` for a text-classification model; accepted: "
                                         "truncate, truncation, truncation_direction, top_k, raw_scores"):
        tc.read({"normalize": True}, "text-classification")
    assert TASKS["token-classification"].Params.read({"aggregation_strategy": "SIMPLE", "ignore_labels": []}, "t") \
        == {"aggregation_strategy": "SIMPLE", "ignore_labels": []}
    for task in TASKS.values():
        schema = request_schemas(task, 8, 200, 32)["/predict"]
        params = schema["properties"]["parameters"]["anyOf"][0]
        assert set(params["properties"]) == set(task.Params.model_fields) and params["additionalProperties"] is False
        assert "additionalProperties" not in schema  # unknown top-level fields are ignored
        assert task.capability in ("embed", "classify", "rerank")


# ---- engine ------------------------------------------------------------------------------------------


def _submit_all(engine: Engine, batches: list[list[str]], params: dict | None = None):
    async def go():
        loop = asyncio.get_running_loop()
        futures = [engine.submit(b, params or {}, loop) for b in batches]
        engine.start()
        return await asyncio.gather(*futures, return_exceptions=True)

    return asyncio.run(go())


def test_engine_batches_queued_requests_within_the_token_budget():
    p = FakePredictor()
    engine = Engine(p, max_queue=10, batch_tokens=64)
    batches = [["one"], ["two words"], ["three more words", "x"], ["a b c d e f g h"]]
    results = _submit_all(engine, batches)
    engine.stop()
    assert p.runs == [5]  # one merged run: 5 rows × 8 tokens = 40 ≤ 64
    for items, res in zip(batches, results):
        assert res.results == p.predict(items).results  # each request's own rows, own params
        assert res.batch_rows == 5 and res.compute_ms == pytest.approx(res.tokenization_ms + res.inference_ms +
                                                                       res.postprocess_ms)


def test_engine_budget_splits_batches_and_keeps_order():
    p = FakePredictor()
    engine = Engine(p, max_queue=10, batch_tokens=8)
    batches = [["a b c d"], ["e f g h"], ["i"], ["j k l m n o p q"]]
    results = _submit_all(engine, batches)
    engine.stop()
    assert p.runs == [2, 1, 1]  # 2×4 fits; then 3×4 > 8 → carried; then 2×8 > 8
    assert [r.results[0][0]["score"] for r in results] == [4.0, 4.0, 1.0, 8.0]


def test_engine_without_batching_runs_requests_alone():
    p = FakePredictor()
    engine = Engine(p, max_queue=10)
    _submit_all(engine, [["a"], ["b"], ["c"]])
    engine.stop()
    assert p.runs == [1, 1, 1]


def test_engine_queue_is_bounded_and_errors_reach_only_their_request():
    p = FakePredictor()
    engine = Engine(p, max_queue=2, batch_tokens=1000)

    async def go():
        loop = asyncio.get_running_loop()
        f1 = engine.submit(["fine"], {}, loop)
        f2 = engine.submit(["\x00bad"], {}, loop)
        with pytest.raises(Overloaded):
            engine.submit(["too many"], {}, loop)
        engine.start()
        return await asyncio.gather(f1, f2, return_exceptions=True)

    ok, bad = asyncio.run(go())
    engine.stop()
    assert ok.results[0][0]["score"] == 1.0 and isinstance(bad, InputError)


# ---- HTTP with the fake model -------------------------------------------------------------------------


def test_not_ready_until_loaded_then_ready():
    release = threading.Event()

    def slow_loader():
        release.wait(20)
        return FakePredictor()

    with ThreadServer(create_app(slow_loader, ServeSettings())) as srv, srv.client() as c:
        assert c.get("/v2/health/live").status_code == 200
        for path in ("/v2/health/ready", "/health"):
            r = c.get(path)
            assert r.status_code == 503 and r.json()["error_type"] == "NotReady"
        r = c.post("/predict", json={"inputs": "hello"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert c.get("/info").json()["ready"] is False
        release.set()
        srv.wait_ready()
        assert c.post("/predict", json={"inputs": "hello there"}).json() == [{"label": "LEN", "score": 2.0}]


def test_failed_load_is_not_ready_and_says_nothing_internal():
    def broken():
        raise RuntimeError("/secret/path exploded")

    app = create_app(broken, ServeSettings())
    seen = []
    app.state.multiverse.on_fatal = seen.append
    with ThreadServer(app) as srv, srv.client() as c:
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.get("/v2/health/ready")
        assert r.status_code == 503 and "secret" not in r.text
    assert isinstance(seen[0], RuntimeError)


def test_internal_errors_are_500_without_details_and_the_server_recovers():
    p = FakePredictor(fail="boom at /very/secret/internal.py line 42")
    with ThreadServer(create_app(p, ServeSettings(warmup=False))) as srv, srv.client() as c:
        srv.wait_ready()
        r = c.post("/predict", json={"inputs": "hello"})
        assert r.status_code == 500
        assert r.json() == {"error": "Internal server error; see the server log.", "error_type": "InternalServerError"}
        assert "secret" not in r.text and "Traceback" not in r.text
        p.fail = None
        assert c.post("/predict", json={"inputs": "hello"}).status_code == 200


def test_overload_answers_429_and_every_request_is_answered():
    p = FakePredictor(delay=0.15)
    settings = ServeSettings(max_queue=2, warmup=False)
    with ThreadServer(create_app(p, settings)) as srv:
        srv.wait_ready()

        async def burst():
            import httpx

            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as c:
                rs = await asyncio.gather(*[c.post("/predict", json={"inputs": f"t {i}"}) for i in range(10)])
            return rs

        responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 429} and codes.count(200) >= 2
    r429 = next(r for r in responses if r.status_code == 429)
    assert r429.json()["error_type"] == "Overloaded" and r429.headers["retry-after"] == "1"


def test_api_key_is_required_except_on_probes():
    with ThreadServer(create_app(FakePredictor(), ServeSettings(api_key="k3y", warmup=False))) as srv, \
            srv.client() as c:
        srv.wait_ready()
        body = {"inputs": "hi"}
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "k3y"}, {"x-api-key": "k3"},
                        {"authorization": "Bearer k3y0"}):
            r = c.post("/predict", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error_type"] == "Unauthorized", headers
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/predict", json=body, headers={"authorization": "Bearer k3y"}).status_code == 200
        assert c.post("/predict", json=body, headers={"x-api-key": "k3y"}).status_code == 200
        for probe in ("/health", "/v2/health/live", "/v2/health/ready"):
            assert c.get(probe).status_code == 200
        for private in ("/metrics", "/info", "/openapi.json", "/docs"):
            assert c.get(private).status_code == 401
        assert c.get("/metrics", headers={"authorization": "Bearer k3y"}).status_code == 200


def test_body_limit_413_for_declared_and_streamed_bodies():
    settings = ServeSettings(max_body_bytes=64 * 1024, warmup=False)
    with ThreadServer(create_app(FakePredictor(), settings)) as srv, srv.client() as c:
        srv.wait_ready()
        big = json.dumps({"inputs": "x" * 100_000}).encode()
        r = c.post("/predict", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error_type"] == "PayloadTooLarge"

        def chunks():  # no content-length: chunked transfer encoding
            for _ in range(20):
                yield b" " * 8192
            yield b'{"inputs": "hi"}'

        r = c.post("/predict", content=chunks())
        assert r.status_code == 413
        assert c.post("/predict", json={"inputs": "still fine"}).status_code == 200


def test_metrics_openapi_and_errors_are_documented():
    with ThreadServer(create_app(FakePredictor(), ServeSettings(warmup=False))) as srv, srv.client() as c:
        srv.wait_ready()
        r = c.post("/predict", json={"inputs": ["a b", "c"], "parameters": {"top_k": 2}})
        assert r.status_code == 200 and r.json() == [[{"label": "LEN", "score": 4.0}], [{"label": "LEN", "score": 2.0}]]
        for h in ("x-compute-time", "x-tokenization-time", "x-queue-time", "x-inference-time"):
            assert float(r.headers[h]) >= 0
        assert r.headers["x-compute-tokens"] == "3" and r.headers["x-compute-characters"] == "4"
        assert c.post("/predict", json={"inputs": "a"}, headers={"x-x": "1"}).status_code == 200
        assert c.get("/nope").json()["error_type"] == "NotFound"
        assert c.get("/predict").status_code == 405
        text = c.get("/metrics").text
        assert 'multiverse_requests_total{route="/predict",status="200"} 2.0' in text
        assert 'multiverse_requests_total{route="other",status="404"} 1.0' in text
        for name in ("tokenization", "queue", "inference", "compute", "request"):
            assert f"multiverse_{name}_duration_seconds_bucket" in text
        spec = c.get("/openapi.json").json()
        predict = spec["paths"]["/predict"]["post"]
        assert "milliseconds" in predict["responses"]["200"]["headers"]["x-compute-time"]["description"]
        assert "inputs" in predict["requestBody"]["content"]["application/json"]["schema"]["properties"]
        assert {"/", "/predict", "/info", "/health", "/metrics", "/v2/health/ready", "/v2/health/live",
                "/v1/models", "/models"} <= set(spec["paths"])
        assert not {"/embed", "/rerank", "/v1/embeddings"} & set(spec["paths"])  # not for a classifier
        assert "milliseconds" in spec["info"]["description"]
        assert c.get("/docs").status_code == 200


def test_engine_splits_big_requests_into_bounded_runs_in_order():
    p = FakePredictor()
    engine = Engine(p, max_queue=10, batch_tokens=1000, max_run_tokens=8)
    big = ["a b c", "d", "e f g h", "i j", "k", "l m n o p q r s"]  # lengths 3 1 4 2 1 8
    results = _submit_all(engine, [["x"], big, ["y z"]])
    engine.stop()
    runs = list(p.runs)
    assert [r.results for r in results] == [p.predict(b).results for b in (["x"], big, ["y z"])]
    # [x, yz] merged (each one run; the big request is not) | [abc, d] 2×3 | [efgh, ij] 2×4 | [k] | [lmnopqrs] 1×8
    assert runs == [2, 2, 2, 1, 1]
    assert results[1].tokenization_ms > 0 and results[1].inference_ms > 0


# ---- pre-cutting long texts ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_tokenizers(tmp_path_factory):
    """The TextTokenizer of tiny checkpoints with a WordPiece (bert), and a byte-level BPE (roberta) vocabulary."""
    from multiverse.tasks import TextTokenizer
    from support import tiny_checkpoint

    root = tmp_path_factory.mktemp("precut")
    return {m: TextTokenizer(tiny_checkpoint("ranking", root / m, model_type=m)) for m in ("bert", "roberta")}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_precut_keeps_the_exact_tokens_of_long_texts_and_pairs(text_tokenizers, model_type):
    import random

    from multiverse.tasks.precut import PreCutter

    tok = text_tokenizers[model_type]
    pc = PreCutter(tok.tokenizer, tok.max_length)
    rng = random.Random(0)
    words = ["the", "naïve", "café", "✈️", "東京", "playing", "antidisestablishmentarianism,", "[SEP]", "<s>", "a?b", "https://x.io/a?b=1", "tab\there", "ok."]
    cjk = "東京大学的研究人员在周一发表了一篇关于人工智能的论文，"
    cut_any = 0
    for _ in range(12):  # long enough to be cut (> 8 × 128 characters), short enough to tokenize whole
        a = " ".join(rng.choice(words) for _ in range(rng.randint(10, 350)))
        b = "\n".join(rng.choice(words) for _ in range(rng.randint(10, 350)))
        c = "".join(rng.choice(cjk) for _ in range(rng.randint(10, 1500)))
        for item in (a, c, (a, b), (b[:40], a), (a, a), (b, a), (c, a), (c, c), (a, c + " " + a)):
            cut = pc.item(item)
            cut_any += cut is not item
            want, got = tok.tokenizer.encode_batch([item])[0], tok.tokenizer.encode_batch([cut])[0]
            assert want.ids == got.ids and want.offsets == got.offsets
            assert tok.encode([item]).arrays["input_ids"][0].tolist() == want.ids  # encode() pre-cuts itself
    assert cut_any > 30


def test_precut_makes_long_pairs_cheap(text_tokenizers):
    from multiverse.tasks.precut import PreCutter

    tok = text_tokenizers["bert"]
    pc = PreCutter(tok.tokenizer, tok.max_length)
    long_text = "A long document about the serving of transformer models. " * 900  # 51,300 characters
    cjk = "東京大学的研究人员在周一发表了一篇关于人工智能的论文，" * 1900
    t0 = time.perf_counter()
    for pair in ((long_text, long_text), (cjk, long_text), (cjk, cjk)):
        tok.encode([pc.item(pair)])
    assert time.perf_counter() - t0 < 3.0  # whole, one such pair takes minutes on this 128-token model
    # The library path (TextTokenizer.encode, used by Predictor, validation and the benchmark) pre-cuts
    # too: "cat " * 8000 vs "dog " * 7999 took ~50 s through Predictor.predict before.
    t0 = time.perf_counter()
    enc = tok.encode([("cat " * 8000, "dog " * 7999)])
    assert time.perf_counter() - t0 < 3.0 and enc.arrays["input_ids"].shape[1] == tok.max_length


def test_top_level_tei_fields_are_checked_apart_from_parameters():
    """A valid top-level ``truncation_direction`` must not hide a bad one in ``parameters`` (found by schemathesis);
    TEI's default ``raw_scores: false`` is accepted by every task, unknown top-level fields are ignored."""
    with ThreadServer(create_app(FakePredictor(), ServeSettings(warmup=False))) as srv, srv.client() as c:
        srv.wait_ready()
        for body in ({"inputs": "a", "parameters": {"truncation_direction": "AAA"}, "truncation_direction": "RIGHT"},
                     {"inputs": "a", "parameters": {"truncation_direction": "right"}, "truncation_direction": "up"},
                     {"inputs": "a", "parameters": {"top_k": 1}, "truncate": "no"}):
            r = c.post("/predict", json=body)
            assert r.status_code == 422 and r.json()["error_type"] == "InvalidInput", (body, r.text)
        r = c.post("/predict", json={"inputs": "a b", "parameters": {"top_k": 2, "truncation_direction": "Right"},
                                     "raw_scores": False, "truncate": True, "surprise": [1]})
        assert r.status_code == 200 and r.json() == [{"label": "LEN", "score": 4.0}]
