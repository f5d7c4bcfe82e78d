"""``--http URL``: measure a running ``multiverse serve`` from the client side.

Each cell POSTs ``{"inputs": [...]}`` to ``URL/predict`` from one sequential client and records the
client-observed latency and the server's ``x-compute-time`` header (the end-to-end pipeline time
on the server, milliseconds). The server's core count is whatever it was started with: ``cores``
is reported as null.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from .baselines import BenchmarkError
from ..timing import DEFAULT_BUDGET, Budget, measure, summarize


class HttpSystem:
    """A callable that sends one batch to ``url/predict`` and keeps the ``x-compute-time`` of every response.

    Raises BenchmarkError on a non-2xx response or when the server cannot be reached.
    """

    name = "multiverse-http"

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 60.0, client=None):
        import httpx

        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self.compute_ms: list[float] = []

    def info(self) -> dict:
        """The server's ``GET /info`` (empty dict if it has none)."""
        try:
            r = self.client.get(self.url + "/info")
            return r.json() if r.status_code == 200 else {}
        except Exception:  # noqa: BLE001
            return {}

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Poll ``GET /health`` until it answers 200 (the server loads and warms up first).

        Raises BenchmarkError when it does not within ``timeout_s`` seconds."""
        import httpx

        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = self.client.get(self.url + "/health")
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise BenchmarkError(f"{self.url} was not ready after {timeout_s:.0f} s ({last}). Is `multiverse serve` running there?")

    def __call__(self, inputs: Sequence) -> list:
        import httpx

        payload = [list(i) if isinstance(i, tuple) else i for i in inputs]
        try:
            r = self.client.post(self.url + "/predict", json={"inputs": payload})
        except httpx.HTTPError as exc:
            raise BenchmarkError(f"Cannot reach {self.url}: {exc}. Is `multiverse serve` running there?") from exc
        if r.status_code // 100 != 2:
            raise BenchmarkError(f"{self.url}/predict answered {r.status_code}: {r.text[:200]}")
        ct = r.headers.get("x-compute-time")
        if ct is not None:
            self.compute_ms.append(float(ct))
        return r.json()

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


def run_http(url: str, bundle_path: str | Path, seq_lens: Sequence[int], batch_sizes: Sequence[int], *,
             budget: Budget = DEFAULT_BUDGET, api_key: str | None = None, progress=None) -> dict:
    """Measure every (seq_len, batch_size) cell against a running server and return the report document
    (``schema.Report.to_dict()``, with ``server``).

    The inputs are cut with ``bundle_path``'s tokenizer (the bundle the server runs). Rows carry
    ``stats`` (client latency) and ``http.compute_time`` (stats of ``x-compute-time``, ms).
    Raises BenchmarkError when the server is unreachable before any cell ran.
    """
    from ..bundle import load
    from . import report as report_mod
    from .grid import expand, require_runnable
    from .runner import BenchProgress
    from .texts import TextCutter, corpus

    progress = progress or BenchProgress()
    b = load(bundle_path, verify=False)
    cutter = TextCutter(b.path, b.manifest.get("max_sequence_length"))
    cells = expand([1], seq_lens, batch_sizes, available_cores=1, max_length=cutter.max_length)
    require_runnable(cells, available_cores=1, max_length=cutter.max_length)
    system = HttpSystem(url, api_key)
    system.wait_ready()
    info = system.info()
    pairs = corpus()
    rows = []
    progress.start(len(cells))
    try:
        for c in cells:
            row = {"system": system.name, "cores": info.get("threads") if isinstance(info.get("threads"), int) else None, "seq_len": c.seq_len, "batch_size": c.batch_size}
            if c.skipped:
                row.update(status="skipped", reason=c.skip_reason)
            else:
                inputs = cutter.inputs(b.task, c.seq_len, c.batch_size, pairs)
                system.compute_ms.clear()
                try:
                    m = measure(lambda: system(inputs), budget)
                except BenchmarkError as exc:
                    if not rows:
                        raise
                    row.update(status="error", reason=str(exc))
                else:
                    row.update(status="ok", capped=m.capped, stats=summarize(m.durations, c.batch_size).to_dict())
                    compute = system.compute_ms[-len(m.durations):]
                    if compute:
                        row["http"] = {"compute_time": summarize([x / 1e3 for x in compute], c.batch_size).to_dict()}
            rows.append(row)
            progress.advance(f"http seq {c.seq_len} batch {c.batch_size}")
            time.sleep(0)
    finally:
        system.close()
        progress.stop()
    notes = [f"measured over HTTP at {url} (server threads: {info.get('threads', 'unknown')}); "
             "client latency includes HTTP and JSON; x-compute-time is the server's pipeline time"]
    return report_mod.build_report(bundle=b, systems=[system.name], cells=cells, rows=rows, budget=budget, notes=notes,
                                   server={"url": url, "info": info}).to_dict()
