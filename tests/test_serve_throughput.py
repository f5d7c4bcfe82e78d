"""``multiverse serve --performance-hint throughput``: streams of engines, OpenVINO's THROUGHPUT compile properties,
results equal to ``Predictor.predict`` under concurrent clients, and usage errors for bad combinations."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json

import pytest
from serve_fixtures import ThreadServer
from test_serve_unit import FakePredictor
from typer.testing import CliRunner

from multiverse.errors import UsageError
from multiverse.serve.engine import Overloaded
from multiverse.serve.settings import ServeSettings
from multiverse.serve.throughput import EnginePool, plan

TEXTS = [f"text number {i} " + "words go here " * (i % 7) for i in range(24)]


@pytest.mark.parametrize("kwargs, message", [
    ({"streams": 2}, "--streams 2 needs --performance-hint throughput"),
    ({"performance_hint": "throughput", "threads": 1, "streams": 2}, "--streams 2 exceeds --threads 1"),
    ({"performance_hint": "fast"}, "--performance-hint 'fast' must be one of: latency, throughput"),
    ({"performance_hint": "throughput", "streams": 0}, "--streams 0 must be ≥ 1"),
])
def test_bad_hint_and_stream_combinations_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError) as err:
        ServeSettings(**kwargs)
    assert message in str(err.value) and err.value.exit_code == 2


def test_the_cli_refuses_streams_without_the_throughput_hint(tiny_bundles):
    from multiverse.cli import app

    r = CliRunner().invoke(app, ["serve", str(tiny_bundles["text-classification"]), "--streams", "2", "--port", "0"])
    assert r.exit_code == 2 and "needs --performance-hint throughput" in r.output, r.output


def test_plan_gives_one_thread_per_stream_for_onnx_and_openvino_its_throughput_hint():
    s = ServeSettings(performance_hint="throughput", threads=2)
    ort = plan(s, cores=8, openvino=False)
    assert (ort.streams, ort.threads, ort.session_config, ort.batch_tokens) == (2, 1, {}, 0)
    ov = plan(ServeSettings(performance_hint="throughput", batch_tokens=512), cores=4, openvino=True)
    assert (ov.streams, ov.threads, ov.batch_tokens) == (4, 4, 512)
    assert ov.session_config == {"openvino.PERFORMANCE_HINT": "THROUGHPUT", "openvino.NUM_STREAMS": "4"}
    assert plan(ServeSettings(performance_hint="throughput", threads=4, streams=2), 2, False).threads == 2


def test_the_pool_spreads_concurrent_requests_over_its_engines_and_answers_overloaded_when_all_are_full():
    p = FakePredictor(delay=0.05)
    pool = EnginePool(p, 2, max_queue=4)

    async def go():
        loop = asyncio.get_running_loop()
        futures = [pool.submit([f"w {i}" * (i + 1)], {}, loop) for i in range(4)]  # 2 waiting in each engine
        with pytest.raises(Overloaded):
            pool.submit(["one more"], {}, loop)
        assert [e.queue_size for e in pool.engines] == [2, 2]
        pool.start()
        return await asyncio.gather(*futures)

    results = asyncio.run(go())
    pool.stop(1.0)
    assert pool.join(5.0) and pool.draining
    assert [r.results for r in results] == [p.predict([f"w {i}" * (i + 1)]).results for i in range(4)]


def _concurrent_posts(url: str, route: str, texts: list[str], clients: int = 6) -> list:
    import httpx

    def one(text):
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post(route, json={"inputs": [text]})
            assert r.status_code == 200, r.text
            return r.json()

    with cf.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, texts))


def _assert_equal_to_predict(served: list, bundle) -> None:
    """Each served one-text answer equals ``Predictor.predict`` on that text (latency settings, the task's HTTP
    default parameters) to 1e-4."""
    from test_batch_invariance import max_abs_diff

    from multiverse.inference import Predictor
    from multiverse.tasks import get_task

    predictor = Predictor.from_bundle(bundle)
    params = get_task(predictor.task).http_defaults  # what the routes pass when a request names no parameters
    for text, got in zip(TEXTS, served):
        want = json.loads(json.dumps(predictor.predict([text], params).results, default=float))
        assert max_abs_diff(got, want) <= 1e-4, text


def test_openvino_ir_served_for_throughput_compiles_streams_and_equals_predict(tiny_ov_bundle):
    from multiverse.serve.app import create_app

    settings = ServeSettings(performance_hint="throughput", threads=2)
    application = create_app(str(tiny_ov_bundle), settings)
    with ThreadServer(application, settings) as srv, srv.client() as c:
        srv.wait_ready()
        state = application.state.multiverse
        session = state.predictor.session
        assert {k: session.properties[k] for k in ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                                                   "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING")} == {
            "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "2", "INFERENCE_NUM_THREADS": "2",
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": "NO"}
        assert session.compiled.get_property("NUM_STREAMS") == 2  # what OpenVINO compiled with
        assert len(state.engine.engines) == 2 and state.engine.batch_tokens == 0  # merging stays opt-in
        info = c.get("/info").json()
        assert (info["threads"], info["performance_hint"], info["streams"]) == (2, "throughput", 2)
        served = _concurrent_posts(srv.url, "/predict", TEXTS)
    _assert_equal_to_predict(served, tiny_ov_bundle)


def test_onnx_bundle_served_for_throughput_runs_one_thread_per_stream_and_equals_predict(tiny_bundles):
    from multiverse.serve.app import create_app

    bundle = tiny_bundles["text-classification"]
    settings = ServeSettings(performance_hint="throughput", threads=2)
    application = create_app(str(bundle), settings)
    with ThreadServer(application, settings) as srv:
        srv.wait_ready()
        state = application.state.multiverse
        assert state.predictor.session.get_session_options().intra_op_num_threads == 1
        assert len(state.engine.engines) == 2
        assert state.engine.batch_tokens == 0
        served = _concurrent_posts(srv.url, "/predict", TEXTS)
    _assert_equal_to_predict(served, bundle)
