"""The HTTP contract's small rules with controllable fake models (no bundle): one empty-input rule on every
route, error messages that name the route's own fields, OpenAI's nullable ``encoding_format``, the
per-request token budget's 413, the serve options. About 3 s."""

from __future__ import annotations

import inspect
import sys
import unicodedata

import pytest
from serve_fixtures import ThreadServer
from test_serve_unit import FakePredictor

from multiverse import errors
from multiverse.inference import normalize_inputs
from multiverse.serve.app import create_app
from multiverse.serve.engine import Engine
from multiverse.serve.schemas import BLANK_RANGES, TEXT_PATTERN, is_blank
from multiverse.serve.settings import ServeSettings

BLANKS = ["", "   ", "\u200b", "\ufeff", "\u200b \u2060\n\t", "\u00ad", "\x00", "\u202e\u200f", "\U000e0001"]


class _EmbedHandler:
    output = "last_hidden_state"
    accepts_pairs = False

    def postprocess(self, output, enc, params):
        return [[float(row[0]), 1.0] for row in output]  # a 2-d "embedding": [words, 1]

    def info(self, dim=None):
        return {"embedding": {"pooling": "mean", "dim": dim}}


class FakeEmbedder(FakePredictor):
    task = "feature-extraction"

    def __init__(self):
        super().__init__()
        self.handler = _EmbedHandler()


class _RankHandler:
    output = "logits"
    accepts_pairs = True

    def postprocess(self, output, enc, params):
        return [float(row[0]) for row in output]

    def info(self, dim=None):
        return {"reranker": {"id2label": {"0": "LABEL_0"}}}


class FakeRanker(FakePredictor):
    task = "ranking"

    def __init__(self):
        super().__init__()
        self.handler = _RankHandler()

    def normalize(self, inputs):
        return normalize_inputs(inputs, accepts_pairs=True, requires_pairs=True)


def _serve(predictor, **kw) -> ThreadServer:
    return ThreadServer(create_app(predictor, ServeSettings(warmup=False, **kw)))


def test_blank_ranges_are_whitespace_control_and_format_characters_of_this_python():
    want, start = [], None
    for cp in range(sys.maxunicode + 2):
        ch = chr(cp) if cp <= sys.maxunicode else "a"
        blank = ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf")
        if blank and start is None:
            start = cp
        elif not blank and start is not None:
            want.append((start, cp - 1))
            start = None
    assert tuple(want) == BLANK_RANGES
    assert TEXT_PATTERN.startswith("[^\\u0000-\\u0020")
    assert all(is_blank(b) for b in BLANKS)
    assert not any(is_blank(t) for t in ("a", "\u200ba", " 東京 ", "🚀", "\u0301"))


def test_one_empty_input_rule_on_every_route():
    routes = {
        "classifier": [("/predict", lambda b: {"inputs": b}), ("/predict", lambda b: {"inputs": ["fine", b]}),
                       ("/", lambda b: {"inputs": b})],
        "embedder": [("/embed", lambda b: {"inputs": [b]}), ("/v1/embeddings", lambda b: {"input": b}),
                     ("/embeddings", lambda b: {"input": ["ok", b]}), ("/", lambda b: {"inputs": b}),
                     ("/similarity", lambda b: {"inputs": {"source_sentence": b, "sentences": ["x"]}}),
                     ("/similarity", lambda b: {"inputs": {"source_sentence": "x", "sentences": [b]}}),
                     ("/", lambda b: {"inputs": {"source_sentence": "x", "sentences": ["y", b]}})],
        "ranker": [("/rerank", lambda b: {"query": b, "texts": ["p"]}),
                   ("/rerank", lambda b: {"query": "q", "texts": [b]}),
                   ("/predict", lambda b: {"inputs": [["q", b]]})],
    }
    models = {"classifier": FakePredictor(), "embedder": FakeEmbedder(), "ranker": FakeRanker()}
    for name, cases in routes.items():
        with _serve(models[name]) as srv, srv.client() as c:
            srv.wait_ready()
            for path, body in cases:
                for blank in BLANKS:
                    r = c.post(path, json=body(blank))
                    assert r.status_code == 400 and r.json()["error_type"] == "EmptyInput", (path, blank, r.text)
                assert c.post(path, json=body("\u200bword")).status_code == 200, path


def test_error_messages_name_the_routes_own_fields_and_encoding_format_may_be_null():
    with _serve(FakeEmbedder()) as srv, srv.client() as c:
        srv.wait_ready()
        r = c.post("/embed", json={"inputs": 5})
        assert r.status_code == 422 and "pair" not in r.json()["error"] and "list of strings" in r.json()["error"]
        r = c.post("/embed", json={"inputs": [["a", "b"]]})
        assert r.status_code == 422 and "pair" not in r.json()["error"]
        for path in ("/v1/embeddings", "/embeddings"):
            r = c.post(path, json={"input": []})
            assert r.status_code == 400 and "`input` is empty" in r.json()["error"], r.text
        r = c.post("/v1/embeddings", json={"input": "two words", "encoding_format": None})
        assert r.status_code == 200 and r.json()["data"][0]["embedding"] == [2.0, 1.0]
        for dims, status in ((None, 200), (0, 200), (2, 200), (2.0, 200), (3, 422), (True, 422), ("2", 422)):
            assert c.post("/embed", json={"inputs": "a", "dimensions": dims}).status_code == status, dims
        r = c.post("/similarity", json={"inputs": {"source_sentence": "a b", "sentences": ["c d", "e"]}})
        assert r.status_code == 200 and len(r.json()) == 2


class _BigRequest(getattr(errors, "RequestTooLarge", errors.InputError)):
    """The engine's RequestTooLarge (an InputError carrying http_status 413); defined here when absent."""

    http_status = 413
    error_type = "PayloadTooLarge"


class _TooLargeFake(FakePredictor):
    def encode(self, items):
        if any("\x01big" in t for t in items):
            raise _BigRequest("The request has 99 tokens after truncation; the limit is 5 (max_batch_tokens).")
        return super().encode(items)


def test_input_errors_carry_their_own_status_413_for_a_request_over_the_token_budget():
    with _serve(_TooLargeFake()) as srv, srv.client() as c:
        srv.wait_ready()
        r = c.post("/predict", json={"inputs": ["\x01big text"]})
        assert r.status_code == 413 and r.json()["error_type"] == "PayloadTooLarge"
        assert "max_batch_tokens" in r.json()["error"]
        r = c.post("/predict", json={"inputs": ["\x00bad"]})  # a plain InputError stays 422
        assert r.status_code == 422 and r.json()["error_type"] == "InvalidInput"
        assert c.get("/info").json()["max_batch_tokens"] == 16384


@pytest.mark.skipif("max_request_tokens" not in inspect.signature(Engine).parameters,
                    reason="this engine has no per-request token budget yet (the engine rewrite adds it)")
def test_max_batch_tokens_is_enforced_through_the_engine():
    with _serve(FakePredictor(), max_batch_tokens=5) as srv, srv.client() as c:
        srv.wait_ready()
        assert c.post("/predict", json={"inputs": ["one two", "three"]}).status_code == 200
        r = c.post("/predict", json={"inputs": ["one two three", "four five six"]})
        assert r.status_code == 413 and r.json()["error_type"] == "PayloadTooLarge" and "5" in r.json()["error"]


def test_serve_options_reach_the_server(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import multiverse.serve.server as server
    from multiverse.cli import app

    seen = {}
    monkeypatch.setattr(server, "serve", lambda bundle, **kw: seen.update(kw))
    args = ["serve", str(tmp_path), "--max-client-batch-size", "7", "--max-batch-tokens", "1000",
            "--graceful-timeout", "3", "--header-timeout", "4", "--body-timeout", "5", "--keep-alive-timeout", "6",
            "--max-connections", "9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {k: seen[k] for k in ("max_batch", "max_batch_tokens", "graceful_timeout", "header_timeout",
                                 "body_timeout", "keep_alive_timeout", "max_connections")} == \
        {"max_batch": 7, "max_batch_tokens": 1000, "graceful_timeout": 3.0, "header_timeout": 4.0,
         "body_timeout": 5.0, "keep_alive_timeout": 6.0, "max_connections": 9}
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--max-batch", "11"])  # the old name still works
    assert result.exit_code == 0 and seen["max_batch"] == 11, result.output
    settings = ServeSettings(**{k: v for k, v in seen.items() if k in ServeSettings.__dataclass_fields__})
    assert settings.max_batch == 11
