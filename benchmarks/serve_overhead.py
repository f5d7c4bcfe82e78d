"""What does HTTP cost on top of the pipeline? (`multiverse serve`, batch 1, loopback)

Measures, at batch 1 and for each sequence length, on real text cut to the exact length:

* **HTTP overhead** = client-observed latency − the server's ``x-compute-time`` header
  (target p50 ≤ 0.5 ms). The client is the standard library's ``http.client`` on one
  keep-alive connection, so the figure is the server's HTTP stack plus the loopback round
  trip, not a heavy client's own cost. The server-side part (from ``/metrics``: request time
  minus pipeline time, mean) is reported too: on a small VM most of the rest is the client
  process waking up after sleeping through the inference.
* **x-compute-time vs the in-process pipeline**: the p50 of ``x-compute-time`` against the
  p50 of ``Predictor.predict(...).total_ms`` in this process with the same bundle and threads
  (target within 10 %).

Server and in-process blocks are interleaved (the server idles while this process runs the
pipeline, and the other way round) so background load drifts affect both alike.

Usage::

    python benchmarks/serve_overhead.py [--bundle DIR] [--threads N] [--seq-lens 16,128]
                                        [--requests 1000] [--block 100] [--json out.json]

Without ``--bundle`` the embedded all-MiniLM-L6-v2 is optimised first (about a minute).
Results: a table on stderr, one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from multiverse.benchmark.host import cpu_busy, wait_for_quiet


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def texts_of_length(predictor, n_tokens: int) -> str:
    from importlib import resources

    lines = resources.files("multiverse.data").joinpath("builtin_texts.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in lines.splitlines() if line.strip()]
    texts = [r["text"] for r in rows if "text" in r]
    long_text = " ".join(t for t in texts if t.isascii())
    return predictor.text_of_length(long_text, n_tokens)


def start_server(bundle: Path, threads: int | None, log_path: Path) -> tuple[subprocess.Popen, int]:
    cmd = [sys.executable, "-m", "multiverse.cli", "serve", str(bundle), "--port", "0"]  # the port is logged
    if threads:
        cmd += ["--threads", str(threads)]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log_path.read_text(errors="replace"))
        if m:
            port = int(m.group(1))
            break
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log_path.read_text()}")
        time.sleep(0.05)
    else:
        raise SystemExit("server did not start")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.monotonic() < deadline:
        conn.request("GET", "/v2/health/ready")
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            conn.close()
            return proc, port
        time.sleep(0.05)
    raise SystemExit("server not ready")


def scrape(conn: http.client.HTTPConnection) -> dict[str, float]:
    """Sums and counts of the server's /predict request time and pipeline time (seconds) from /metrics."""
    conn.request("GET", "/metrics")
    r = conn.getresponse()
    text = r.read().decode()
    out = {}
    for key, prefix in (("request_sum", 'multiverse_request_duration_seconds_sum{route="/predict"}'),
                        ("request_count", 'multiverse_request_duration_seconds_count{route="/predict"}'),
                        ("compute_sum", "multiverse_compute_duration_seconds_sum"),
                        ("compute_count", "multiverse_compute_duration_seconds_count")):
        line = next(x for x in text.splitlines() if x.startswith(prefix + " "))
        out[key] = float(line.split()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, help="bundle folder (default: optimise the embedded MiniLM)")
    ap.add_argument("--threads", type=int, default=None, help="ORT threads, same in-process and served")
    ap.add_argument("--seq-lens", default="16,128", help="token counts (special tokens included)")
    ap.add_argument("--requests", type=int, default=1000, help="measured requests per sequence length")
    ap.add_argument("--block", type=int, default=100, help="requests per interleaved block")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--json", type=Path, help="also write the JSON report here")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="wait up to S seconds for the host to be idle first (shared machines)")
    args = ap.parse_args()

    from multiverse.inference import Predictor
    from multiverse.runtime import physical_cores

    work = Path(tempfile.mkdtemp(prefix="multiverse-serve-bench-"))
    bundle = args.bundle
    if bundle is None:
        from multiverse.pipeline import optimize

        print("optimising the embedded all-MiniLM-L6-v2 ...", file=sys.stderr)
        bundle = Path(optimize(None, target="native", out=work / "bundle", overwrite=True).path)
    threads = args.threads or physical_cores()
    busy_before = wait_for_quiet(args.wait_quiet, say=lambda m: print(m, file=sys.stderr)) if args.wait_quiet else cpu_busy()
    predictor = Predictor.from_bundle(bundle, threads=threads)
    proc, port = start_server(bundle, threads, work / "server.log")
    import importlib.util

    http_stack = {"parser": "httptools" if importlib.util.find_spec("httptools") else "h11",
                  "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"}
    report: dict = {"http_stack": http_stack, "bundle": str(bundle), "task": predictor.task, "threads": threads, "batch_size": 1,
                    "client": "http.client keep-alive", "unit": "ms", "host_busy_before": round(busy_before, 3),
                    "cells": []}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"content-type": "application/json"}
        for n_tokens in [int(x) for x in args.seq_lens.split(",")]:
            text = texts_of_length(predictor, n_tokens)
            inputs = [[text, text]] if predictor.task == "ranking" else text
            body = json.dumps({"inputs": inputs}).encode()

            def http_once(body: bytes = body) -> tuple[float, float, float]:
                t0 = time.perf_counter()
                conn.request("POST", "/predict", body, headers)
                r = conn.getresponse()
                r.read()
                latency = (time.perf_counter() - t0) * 1e3
                if r.status != 200:
                    raise SystemExit(f"HTTP {r.status}")
                return latency, float(r.getheader("x-compute-time")), float(r.getheader("x-queue-time"))

            items = [(text, text)] if predictor.task == "ranking" else [text]
            for _ in range(args.warmup):
                http_once()
                predictor.predict(items)
            client, compute, queue, inproc = [], [], [], []
            before = scrape(conn)
            done = 0
            while done < args.requests:
                k = min(args.block, args.requests - done)
                for _ in range(k):
                    lat, ct, qt = http_once()
                    client.append(lat)
                    compute.append(ct)
                    queue.append(qt)
                for _ in range(k):
                    inproc.append(predictor.predict(items).total_ms)
                done += k
            after = scrape(conn)
            overhead = [c - x for c, x in zip(client, compute)]
            n_req = after["request_count"] - before["request_count"]
            n_cmp = after["compute_count"] - before["compute_count"]
            server_overhead = ((after["request_sum"] - before["request_sum"]) / n_req
                               - (after["compute_sum"] - before["compute_sum"]) / n_cmp) * 1e3
            cell = {
                "seq_len": n_tokens,
                "requests": len(client),
                "client_ms": {"p50": pct(client, .5), "p90": pct(client, .9), "p99": pct(client, .99)},
                "x_compute_time_ms": {"p50": pct(compute, .5), "p90": pct(compute, .9), "p99": pct(compute, .99)},
                "x_queue_time_ms": {"p50": pct(queue, .5), "p99": pct(queue, .99)},
                "overhead_ms": {"p50": pct(overhead, .5), "p90": pct(overhead, .9), "p99": pct(overhead, .99),
                                "mean": statistics.fmean(overhead)},
                "in_process_ms": {"p50": pct(inproc, .5), "p90": pct(inproc, .9), "p99": pct(inproc, .99)},
                # In the server, from the request's first byte read to its last byte written, minus the pipeline:
                # parsing, validation, the hand-off to the worker and back, serialisation (mean, from /metrics).
                "server_side_overhead_mean_ms": server_overhead,
            }
            cell["compute_vs_in_process"] = cell["x_compute_time_ms"]["p50"] / cell["in_process_ms"]["p50"] - 1
            cell["targets_met"] = {"overhead_p50_le_0.5ms": cell["overhead_ms"]["p50"] <= 0.5,
                                   "compute_within_10pct": abs(cell["compute_vs_in_process"]) <= 0.10}
            report["cells"].append(cell)
            print(f"seq {n_tokens:>4}: client p50 {cell['client_ms']['p50']:.3f} ms | x-compute-time p50 "
                  f"{cell['x_compute_time_ms']['p50']:.3f} ms | overhead p50 {cell['overhead_ms']['p50']:.3f} / "
                  f"p90 {cell['overhead_ms']['p90']:.3f} / p99 {cell['overhead_ms']['p99']:.3f} ms (server side, mean: "
                  f"{server_overhead:.3f} ms) | in-process "
                  f"p50 {cell['in_process_ms']['p50']:.3f} ms ({cell['compute_vs_in_process']:+.1%})",
                  file=sys.stderr)
        conn.close()
        report["host_busy_after"] = round(cpu_busy(), 3)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            report["server_exit_code"] = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            report["server_exit_code"] = None
        shutil.rmtree(work, ignore_errors=True)
    out = json.dumps(report, indent=2)
    print(out)
    if args.json:
        args.json.write_text(out + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
