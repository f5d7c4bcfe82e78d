"""Head-of-line blocking: latency of one-word requests while one large request runs.

Starts ``multiverse serve BUNDLE`` (this interpreter, on 127.0.0.1, any free port), sends one
large ``/predict`` request (default 256 texts × 2,200 characters, all truncated at the model's
limit), and 0.5 s later starts sending one-word requests one after the other until the large
one is answered. Reports the large request's time and the one-word requests' p50/p99 (ms,
``statistics.quantiles``), and writes JSON. Bounded: at most ``--max-small`` small requests and
``--timeout`` seconds.

    python benchmarks/head_of_line.py BUNDLE [--texts 256] [--chars 2200] [--out benchmarks/results/head_of_line.json]
        [extra `multiverse serve` options, e.g. --max-batch-tokens 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def start_server(bundle: str, extra: list[str]) -> tuple[subprocess.Popen, str, Path]:
    log = Path(tempfile.mkstemp(prefix="mv-hol-", suffix=".log")[1])
    proc = subprocess.Popen([sys.executable, "-m", "multiverse.cli", "serve", bundle, "--host", "127.0.0.1",
                             "--port", "0", *extra], stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            env={**os.environ})
    deadline = time.monotonic() + 120
    url = None
    while time.monotonic() < deadline:
        m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", log.read_text(errors="replace"))
        if m:
            url = f"http://127.0.0.1:{m.group(1)}"
            break
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()}")
        time.sleep(0.1)
    if url is None:
        proc.kill()
        raise SystemExit("server did not start")
    with httpx.Client(base_url=url, timeout=5) as c:
        while c.get("/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("server not ready")
            time.sleep(0.1)
    return proc, url, log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--chars", type=int, default=2200)
    ap.add_argument("--max-small", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default="benchmarks/results/head_of_line.json")
    args, extra = ap.parse_known_args(argv)  # unknown options go to `multiverse serve`
    extra = [a for a in extra if a != "--"]
    proc, url, log = start_server(args.bundle, extra)
    try:
        with httpx.Client(base_url=url, timeout=5) as c:  # baseline: one-word requests alone
            alone = []
            for _ in range(30):
                t0 = time.perf_counter()
                assert c.post("/predict", json={"inputs": "hello"}).status_code == 200
                alone.append((time.perf_counter() - t0) * 1e3)
        sentence = "The quick brown fox jumps over the lazy dog while the committee reviews the budget. "
        big_text = (sentence * (args.chars // len(sentence) + 1))[: args.chars]
        big = {"inputs": [big_text] * args.texts}
        result: dict = {}

        def send_big():
            with httpx.Client(base_url=url, timeout=args.timeout) as c:
                t0 = time.perf_counter()
                r = c.post("/predict", json=big)
                result["status"] = r.status_code
                result["ms"] = (time.perf_counter() - t0) * 1e3
                for h in ("x-compute-time", "x-queue-time", "x-inference-time", "x-tokenization-time"):
                    if h in r.headers:
                        result[h] = float(r.headers[h])
                result["body"] = r.text[:300] if r.status_code != 200 else ""

        thread = threading.Thread(target=send_big)
        thread.start()
        time.sleep(0.5)
        small, small_queue = [], []
        with httpx.Client(base_url=url, timeout=args.timeout) as c:
            while thread.is_alive() and len(small) < args.max_small:
                t0 = time.perf_counter()
                r = c.post("/predict", json={"inputs": "hello"})
                small.append((time.perf_counter() - t0) * 1e3)
                assert r.status_code == 200, r.text
                small_queue.append(float(r.headers.get("x-queue-time", "nan")))
        thread.join(args.timeout)
    finally:
        proc.terminate()
        proc.wait(30)

    def pct(xs: list[float]) -> dict:
        if len(xs) < 2:
            return {"n": len(xs), "p50": xs[0] if xs else None, "p99": xs[0] if xs else None, "max": max(xs, default=None)}
        q = statistics.quantiles(xs, n=100, method="inclusive")
        return {"n": len(xs), "p50": round(statistics.median(xs), 2), "p99": round(q[98], 2), "max": round(max(xs), 2)}

    report = {"label": args.label, "bundle": args.bundle, "serve_args": extra, "texts": args.texts, "chars": args.chars,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "large_request": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items()},
              "one_word_alone_ms": pct(alone), "one_word_during_large_ms": pct(small),
              "one_word_during_large_x_queue_time_ms": pct(small_queue)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else []
    old = old if isinstance(old, list) else [old]
    out.write_text(json.dumps(old + [report], indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
