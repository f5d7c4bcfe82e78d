"""Bounded load and shutdown tests of a real `multiverse serve` process on 127.0.0.1 (real all-MiniLM-L6-v2, int8).

* 64 concurrent clients for a fixed time: no 5xx, every request answered (200) or refused
  with 429, resident memory after the run within 10 % of after warm-up.
* SIGTERM while requests are in flight: they all finish with 200 and the process exits 0.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import httpx
import pytest
from serve_fixtures import Server

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "naïve", "cafés", "serve",
         "crème", "brûlée", "to", "visitors", "from", "Lisbon", "Paris", "and", "Tokyo", "東京", "🚀", "during", "the",
         "long", "summer", "evenings", "of", "a", "remarkable", "year"]


def _texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 60))) for _ in range(n)]


async def _hammer(url: str, clients: int, seconds: float, seed: int) -> dict[int, int]:
    """``clients`` concurrent loops of POST /predict (1-4 texts each) for ``seconds``; status counts."""
    counts: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:

        async def one(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.monotonic() < deadline:
                r = await c.post("/predict", json={"inputs": _texts(rng, rng.randint(1, 4))})
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    assert r.json()["error_type"] == "Overloaded"
                    await asyncio.sleep(0.05)

        await asyncio.gather(*[one(i) for i in range(clients)])
    return counts


@pytest.mark.slow
def test_64_clients_no_5xx_and_memory_is_stable(minilm_bundle):
    with Server(minilm_bundle, "--max-queue", "24", "--batch-tokens", "4096") as s:
        s.wait_ready()
        warm = asyncio.run(_hammer(s.url, 64, 6, seed=1))
        rss_warm = s.rss_bytes()
        counts = asyncio.run(_hammer(s.url, 64, 10, seed=2))
        rss_after = s.rss_bytes()
        with s.client() as c:
            assert c.post("/predict", json={"inputs": "still answering"}).status_code == 200
            metrics = c.get("/metrics").text
        code = s.terminate()
        log = s.log()
    for phase in (warm, counts):
        assert set(phase) <= {200, 429}, phase
    assert counts.get(200, 0) >= 20, counts
    print(f"load: {counts}, RSS after warm-up {rss_warm / 2**20:.1f} MiB, after the run {rss_after / 2**20:.1f} MiB")
    assert 'multiverse_batch_rows_bucket{le="1.0"}' in metrics
    assert abs(rss_after - rss_warm) / rss_warm <= 0.10, (rss_warm, rss_after)
    assert code == 0 and "Traceback" not in log, log


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish_and_exits_0(minilm_bundle):
    with Server(minilm_bundle) as s:
        s.wait_ready()
        results: list[int] = []
        errors: list[BaseException] = []
        started = threading.Barrier(13)

        def client(i: int) -> None:
            body = {"inputs": _texts(random.Random(i), 24)}
            try:
                with httpx.Client(base_url=s.url, timeout=60) as c:
                    started.wait()
                    results.append(c.post("/predict", json=body).status_code)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        started.wait()
        deadline = time.monotonic() + 10
        with httpx.Client(base_url=s.url, timeout=10) as c:  # wait until work is queued behind the model
            while time.monotonic() < deadline:
                text = c.get("/metrics").text
                queued = [line for line in text.splitlines() if line.startswith("multiverse_queue_size ")]
                if queued and float(queued[0].split()[1]) >= 3:
                    break
                time.sleep(0.01)
        in_flight = 12 - len(results)
        t0 = time.monotonic()
        code = s.terminate(timeout=45)
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - t0
        log = s.log()
    assert in_flight >= 3, "the test did not catch requests in flight; make the work bigger"
    assert not errors and sorted(results) == [200] * 12, (results, errors)
    assert code == 0, log
    assert "Shutting down" in log and "Traceback" not in log and elapsed < 45
