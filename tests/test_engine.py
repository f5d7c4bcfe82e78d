"""The engine's scheduling: small requests pass large ones, the per-request token budget, draining."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_serve_unit import FakePredictor

from multiverse.errors import InputError, RequestTooLarge
from multiverse.serve.engine import Engine, NotRunning


def test_a_one_word_request_waits_for_one_run_of_a_large_request_not_all_of_it():
    p = FakePredictor(delay=0.05)  # 50 ms per ONNX Runtime run
    engine = Engine(p, max_queue=10, max_run_tokens=4)
    big = ["a b c d"] * 40  # 40 runs of one 4-token row: ~2 s
    engine.start()

    async def go():
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        f_big = engine.submit(big, {}, loop)
        await asyncio.sleep(0.2)
        f_small = engine.submit(["hi"], {}, loop)
        small = await f_small
        t_small = time.perf_counter() - t0
        res_big = await f_big
        return small, t_small, res_big, time.perf_counter() - t0

    small, t_small, res_big, t_big = asyncio.run(go())
    engine.stop()
    assert small.results == p.predict(["hi"]).results and res_big.results == p.predict(big).results
    assert t_small < 0.2 + 0.3 and t_big > 1.5  # it ran after at most a run or two of the big one
    assert small.queue_ms < 200 and res_big.queue_ms > 0


def test_requests_over_the_token_budget_are_refused_with_the_limit_named():
    p = FakePredictor()
    engine = Engine(p, max_queue=10, max_request_tokens=6)

    async def go():
        loop = asyncio.get_running_loop()
        futures = [engine.submit(["a b c", "d e f"], {}, loop), engine.submit(["a b c d", "e f g"], {}, loop)]
        engine.start()
        return await asyncio.gather(*futures, return_exceptions=True)

    ok, too_big = asyncio.run(go())
    engine.stop()
    assert ok.n_tokens == 6
    assert isinstance(too_big, RequestTooLarge) and isinstance(too_big, InputError)
    assert "7 tokens" in str(too_big) and "6" in str(too_big) and too_big.http_status == 413


def test_drain_finishes_what_fits_in_the_grace_period_and_fails_the_rest_with_not_running():
    p = FakePredictor(delay=0.1)
    engine = Engine(p, max_queue=10)

    async def go():
        loop = asyncio.get_running_loop()
        futures = [engine.submit(["w"] * 3, {}, loop) for _ in range(8)]  # 8 × 0.3 s of work
        engine.start()
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await loop.run_in_executor(None, engine.stop, 0.5)
        stop_s = time.perf_counter() - t0
        with pytest.raises(NotRunning):
            engine.submit(["late"], {}, loop)
        return await asyncio.gather(*futures, return_exceptions=True), stop_s

    outcomes, stop_s = asyncio.run(go())
    done = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, NotRunning)]
    assert len(done) + len(refused) == 8 and done and refused  # nothing else (no other exception)
    assert stop_s < 0.5 + 0.5
