"""Drain on SIGTERM: every request in flight either finishes (200) or gets 503 with ``Retry-After``, never a 500,
and readiness answers 503 from the start of the drain.

The subprocess runs the real server path (``multiverse.serve.server.run_app``: uvicorn, its signal handling,
``build_server``) around the controllable fake model of ``test_serve_unit`` (0.4 s per request), so the amount
of queued work is known without a large model. About 6 s in all."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import httpx
from serve_fixtures import Server, ThreadServer
from test_serve_unit import FakePredictor

from multiverse.serve.app import create_app
from multiverse.serve.settings import GRACE_MARGIN, ServeSettings

_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_serve_unit import FakePredictor
from multiverse.serve.app import create_app
from multiverse.serve.server import run_app
from multiverse.serve.settings import ServeSettings
s = ServeSettings(host="127.0.0.1", port=0, warmup=False, graceful_timeout={grace}, max_queue=64)
run_app(create_app(FakePredictor(delay={delay}), s), s)
"""


def _queued(url: str) -> float:
    with httpx.Client(base_url=url, timeout=5) as c:
        for line in c.get("/metrics").text.splitlines():
            if line.startswith("multiverse_queue_size "):
                return float(line.split()[1])
    return 0.0


def test_sigterm_with_queued_work_answers_200_or_503_with_retry_after_never_500():
    grace, delay, n = 1.5, 0.4, 10  # 4 s of queued work, 1.5 s to drain it
    script = _SCRIPT.format(tests=str(Path(__file__).parent), grace=grace, delay=delay)
    with Server(None, cmd=[sys.executable, "-c", script]) as s:
        s.wait_ready()
        answers: list[httpx.Response] = []
        errors: list[BaseException] = []
        started = threading.Barrier(n + 1)

        def client(i: int) -> None:
            try:
                with httpx.Client(base_url=s.url, timeout=30) as c:
                    started.wait()
                    answers.append(c.post("/predict", json={"inputs": f"request {i}"}))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        started.wait()
        deadline = time.monotonic() + 10
        while _queued(s.url) < n - 2 and time.monotonic() < deadline:  # all submitted: one runs, the rest wait
            time.sleep(0.02)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        code = s.proc.wait(grace + GRACE_MARGIN + 10)
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(10)
        log = s.log()
    statuses = sorted(r.status_code for r in answers)
    print(f"drain: {statuses.count(200)} × 200, {statuses.count(503)} × 503, exit {code} after {elapsed:.2f} s")
    assert not errors and len(answers) == n, errors
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error_type"] == "ShuttingDown", r.text
    assert code == 0 and "Traceback" not in log and "timeout graceful shutdown exceeded" not in log, log
    assert elapsed < grace + GRACE_MARGIN, elapsed


def test_readiness_is_503_from_the_start_of_the_drain_while_in_flight_work_finishes():
    settings = ServeSettings(warmup=False, graceful_timeout=10)
    app = create_app(FakePredictor(delay=0.6), settings)
    with ThreadServer(app, settings) as srv, srv.client() as c:
        srv.wait_ready()
        answer: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answer.append(c.post("/predict", json={"inputs": "slow one"})))
        slow.start()
        time.sleep(0.2)
        app.state.multiverse.begin_drain()
        time.sleep(0.05)
        with srv.client() as probe:
            for path in ("/health", "/v2/health/ready"):
                r = probe.get(path)
                assert r.status_code == 503 and r.headers["retry-after"] == "1", (path, r.text)
                assert r.json()["error_type"] == "ShuttingDown"
            assert probe.get("/v2/health/live").status_code == 200
            late = probe.post("/predict", json={"inputs": "too late"})
            assert late.status_code == 503 and late.headers["retry-after"] == "1"
        slow.join(10)
    assert answer and answer[0].status_code == 200 and answer[0].json() == [{"label": "LEN", "score": 2.0}]
