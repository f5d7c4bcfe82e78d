"""Static input shapes for OpenVINO IRs: what compiling an IR for one sequence length buys over the dynamic-shape
IR that bundles ship, and what it costs (issue 12's lever list: "pre-packed weights, pre-allocated buffers").

optimum-intel offers the same trade (``OVModelForFeatureExtraction.reshape(batch_size, sequence_length)``: "static
shapes ... can reduce the inference latency"). For each IR and each of ``--lengths`` tokens, batch 1:

* ``dynamic``: the IR as shipped (input shapes ``[?, ?]``), compiled with Multiverse's properties
  (``multiverse.ovsession.compile_properties``: LATENCY hint, f32, unpinned, ``--threads`` threads);
* ``static``: the same IR after ``model.reshape({input: [1, L]})``, same properties, one compiled model per length.

Both are timed on the runtime call alone (``InferRequest.infer`` on fixed int64 inputs: tokenization and
post-processing are the same for both), in ``--rounds`` interleaved rounds (order alternating), each round ≥ 20
calls per variant; per round the wall p50 and the process CPU time per call (ms), reported as the median over
rounds and as static / dynamic ratios. Also recorded per static length: compile time (s, ``compile_model`` plus the
first call) and the resident memory it adds (MB, ``/proc/self/statm``).

    PYTHONPATH=. python benchmarks/ov_static_shapes.py [--ir LABEL=PATH.xml ...] [--lengths 8 16 ...] [--rounds 7]

Default IRs: the DistilBERT-shape and MiniLM bundles and the OpenVINO peer IRs that ``peers.py`` cached. Writes
``results/ov_static_shapes.json``. Needs the ``peers`` extra (openvino).
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
CACHE = Path.home() / ".cache/multiverse/benchmarks"
DEFAULT_IRS = {
    "distilbert-bundle": CACHE / "bundles-distilbert/distilbert-base-shaped-icelake/model.xml",
    "distilbert-openvino-peer": CACHE / "openvino-distilbert-base-shaped/openvino_model.xml",
    "minilm-bundle": CACHE / "bundles-minilm/all-minilm-l6-v2-icelake/model.xml",
    "minilm-openvino-peer": CACHE / "openvino-model/openvino_model.xml",
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _feeds(names: list[str], length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """int64 [1, length] inputs: random ids in a BERT vocabulary's word range, mask of ones, token types 0."""
    out = {}
    for name in names:
        if "input_ids" in name:
            out[name] = rng.integers(1000, 20000, (1, length)).astype(np.int64)
        elif "attention_mask" in name:
            out[name] = np.ones((1, length), np.int64)
        else:
            out[name] = np.zeros((1, length), np.int64)
    return out


def _time(request, feeds, calls: int) -> tuple[float, float]:
    """(wall p50 ms, process CPU ms per call) of ``calls`` calls after 3 warm-up calls."""
    for _ in range(3):
        request.infer(feeds)
    wall = []
    cpu0 = time.process_time()
    for _ in range(calls):
        t = time.perf_counter()
        request.infer(feeds)
        wall.append(time.perf_counter() - t)
    return statistics.median(wall) * 1e3, (time.process_time() - cpu0) / calls * 1e3


def measure(xml: Path, lengths: list[int], rounds: int, threads: int) -> dict:
    """The dynamic IR against one static compile per length, interleaved. Returns a JSON-ready dict."""
    from multiverse.extras import import_openvino
    from multiverse.ovsession import compile_properties

    ov = import_openvino()
    core = ov.Core()
    props = compile_properties(threads)
    base = core.read_model(str(xml))
    names = [p.get_any_name() for p in base.inputs]
    rng = np.random.default_rng(0)
    dynamic = core.compile_model(base.clone(), "CPU", dict(props)).create_infer_request()
    static, cost = {}, {}
    for length in lengths:
        model = base.clone()
        model.reshape({name: ov.PartialShape([1, length]) for name in names})
        rss, t = _rss_mb(), time.perf_counter()
        static[length] = core.compile_model(model, "CPU", dict(props)).create_infer_request()
        static[length].infer(_feeds(names, length, rng))
        cost[length] = {"compile_s": round(time.perf_counter() - t, 3), "rss_added_mb": round(_rss_mb() - rss, 1)}
    rows = {length: {"dynamic": [], "static": []} for length in lengths}
    for r in range(rounds):
        for length in lengths:
            feeds = _feeds(names, length, rng)
            calls = max(20, 400 // length)
            order = ("dynamic", "static") if r % 2 == 0 else ("static", "dynamic")
            for kind in order:
                rows[length][kind].append(_time(dynamic if kind == "dynamic" else static[length], feeds, calls))
    out = {}
    for length in lengths:
        d, s = rows[length]["dynamic"], rows[length]["static"]
        med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in (("dynamic", d), ("static", s))}
        per_round = [b[1] / a[1] for a, b in zip(d, s)]
        out[str(length)] = {
            "dynamic_wall_p50_ms": round(med["dynamic"][0], 4), "static_wall_p50_ms": round(med["static"][0], 4),
            "dynamic_cpu_ms": round(med["dynamic"][1], 4), "static_cpu_ms": round(med["static"][1], 4),
            "static_over_dynamic_wall": round(med["static"][0] / med["dynamic"][0], 4),
            "static_over_dynamic_cpu": round(med["static"][1] / med["dynamic"][1], 4),
            "cpu_ratio_per_round": [round(x, 4) for x in per_round],
            **cost[length],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ir", action="append", default=[], help="LABEL=PATH to an OpenVINO .xml (repeatable)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results/ov_static_shapes.json")
    args = ap.parse_args()
    irs = dict(x.split("=", 1) for x in args.ir) if args.ir else {k: v for k, v in DEFAULT_IRS.items() if v.exists()}
    report = {"threads": args.threads, "rounds": args.rounds, "load_before": os.getloadavg(), "irs": {}}
    import openvino

    report["openvino"] = openvino.__version__
    for label, xml in irs.items():
        lengths = [n for n in args.lengths if n <= 256] if "minilm" in label else args.lengths
        report["irs"][label] = {"path": str(xml), "lengths": measure(Path(xml), lengths, args.rounds, args.threads)}
        for n, row in report["irs"][label]["lengths"].items():
            print(f"{label:26s} {n:>4s} tokens: dynamic {row['dynamic_wall_p50_ms']:.3f} ms, static / dynamic wall "
                  f"{row['static_over_dynamic_wall']:.3f} cpu {row['static_over_dynamic_cpu']:.3f}; static compile "
                  f"{row['compile_s']:.2f} s, +{row['rss_added_mb']:.0f} MB", flush=True)
    report["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
