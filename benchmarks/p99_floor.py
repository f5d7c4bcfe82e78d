"""How low can p99 / p50 go on this host? The tail of a served call against the tail of work that has no tail of
its own (issue 12's goal: p99 ≤ 1.5 × p50 at every length).

For a bundle at each of ``--lengths`` tokens, batch 1, every call timed with ``time.perf_counter``:

* ``predict``: ``Predictor.predict`` end to end (tokenize, run, post-process), as ``serve`` runs it, on 1 and 2
  intra-op threads;
* ``run``: the runtime call alone (``Predictor.run`` on pre-tokenized inputs), 1 and 2 threads;
* ``python_loop``: a pure-Python loop sized to the 1-thread ``run``'s p50 at that length: one thread, no memory
  traffic, no thread pool, no allocation. Whatever tail it has is the host's (timer interrupts, the hypervisor
  taking the vCPU, other processes), so it is the floor any call of that duration can reach here.

All variants of one length run in interleaved rounds (``--rounds`` × ``--seconds`` s each), so that host drift
hits them alike; p50 and p99 are taken within each round (drift between rounds would inflate a pooled p99) and
reported as the median over rounds, with the pooled figures beside them. Writes ``results/p99_floor.json``.

    PYTHONPATH=. python benchmarks/p99_floor.py [--bundle BUNDLE] [--lengths 8 16 64 128] [--rounds 4] [--seconds 1.5]

Default bundle: README command 1's all-MiniLM-L6-v2 icelake bundle as ``peers.py`` cached it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DEFAULT_BUNDLE = Path.home() / ".cache/multiverse/benchmarks/bundles-minilm/all-minilm-l6-v2-icelake"


def _loop(n: int) -> int:
    s = 0
    for i in range(n):
        s += i
    return s


def _sized_loop(target_ms: float) -> int:
    """Iterations of :func:`_loop` that take ``target_ms`` (median of 21 trials after a first guess)."""
    n = 10_000
    t = time.perf_counter()
    _loop(n)
    n = max(1, int(n * target_ms / ((time.perf_counter() - t) * 1e3)))
    times = []
    for _ in range(21):
        t = time.perf_counter()
        _loop(n)
        times.append((time.perf_counter() - t) * 1e3)
    return max(1, int(n * target_ms / statistics.median(times)))


def _timed(fn, seconds: float) -> np.ndarray:
    out = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return np.asarray(out) * 1e3


def measure(bundle: Path, lengths: list[int], rounds: int, seconds: float) -> dict:
    """``{length: {variant: {"p50_ms", "p99_ms", "ratio", "ratio_rounds", "pooled_ratio", "calls"}}}`` (module
    docstring)."""
    from multiverse.evaldata import builtin_texts
    from multiverse.inference import Predictor

    preds = {t: Predictor.from_bundle(bundle, threads=t) for t in (1, 2)}
    text = " ".join(builtin_texts()[:20])
    out = {}
    for n in lengths:
        cut = preds[1].text_of_length(text, n)
        enc = {t: p.encode([cut]) for t, p in preds.items()}
        variants = {f"predict {t}t": (lambda p=p, c=cut: p.predict([c])) for t, p in preds.items()}
        variants.update({f"run {t}t": (lambda p=p, e=enc[t]: p.run(e)) for t, p in preds.items()})
        for fn in variants.values():  # warm up
            _timed(fn, 0.3)
        run_p50 = float(np.median(_timed(variants["run 1t"], 0.5)))
        iters = _sized_loop(run_p50)
        variants["python_loop"] = lambda k=iters: _loop(k)
        per_round: dict[str, list[np.ndarray]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                per_round[k].append(_timed(variants[k], seconds))
        out[n] = {}
        for k, rs in per_round.items():
            p50s = [float(np.percentile(x, 50)) for x in rs]
            p99s = [float(np.percentile(x, 99)) for x in rs]
            pooled = np.concatenate(rs)
            out[n][k] = {"p50_ms": round(statistics.median(p50s), 4), "p99_ms": round(statistics.median(p99s), 4),
                         "ratio": round(statistics.median(b / a for a, b in zip(p50s, p99s)), 3),
                         "ratio_rounds": [round(b / a, 3) for a, b in zip(p50s, p99s)],
                         "pooled_ratio": round(float(np.percentile(pooled, 99) / np.percentile(pooled, 50)), 3),
                         "calls": int(pooled.size)}
        print(n, {k: (v["p50_ms"], v["ratio"]) for k, v in out[n].items()}, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    ap.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 64, 128])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "p99_floor.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load0 = os.getloadavg()
    data = measure(args.bundle, args.lengths, args.rounds, args.seconds)
    rep = {"bundle": str(args.bundle), "rounds": args.rounds, "seconds_per_round": args.seconds,
           "cpu_affinity": sorted(os.sched_getaffinity(0)),
           "loadavg_1m": [round(load0[0], 2), round(os.getloadavg()[0], 2)], "by_length": data,
           "goal": "p99 / p50 <= 1.5"}
    args.out.write_text(json.dumps(rep, indent=1) + "\n")


if __name__ == "__main__":
    main()
