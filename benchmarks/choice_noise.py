"""Can host load flip which int8 candidate the tuner ships? Old timing methods vs the new one.

Builds the tuner's phase-1 candidates for a model the way ``optimize`` does (optimum-onnx export, ORT
fusion, SmoothQuant at α 0.7 and 0.8, ``quantize_dynamic`` with the target's config, the task head in
fp32) plus one per-node fp32 fallback, then ranks them by speed (sequence length 128, batch 1, end to
end, the tuner's latency text) with three methods:

* ``sequential_wall``: each candidate timed once, one after another (wall-clock p50, ORT spinning on:
  the tuner's per-trial timing before this change, ``Budget(min_runs=30, min_seconds=1)``);
* ``interleaved_wall``: 5 interleaved rounds, each round's wall p50 (spinning on; the tuner's
  ``retime`` before this change), median over rounds;
* ``interleaved_cpu``: 5 interleaved rounds of 10 calls, process CPU time per call, ORT spinning off,
  :func:`multiverse.timing.relative_costs` (the tuner's ``retime`` now, which also caps a candidate's
  round at ``ROUND_SECONDS`` of wall time: at 128 tokens on MiniLM, 10 calls fit well inside it).

Each method runs ``--repeats`` times on the host as it is ("quiet": no load added; the load average is
recorded) and again with ``--busy`` busy-loop processes running. The reference ("truth") is a long
interleaved wall-clock measurement with spinning on (what ``serve`` runs), taken without added load.
For every run the report gives the ranking, the fastest candidate, whether it differs from the quiet
choice of the same method (``flipped``) and how much slower it is than the truly fastest one
(``regret``; the goal is ≤ 5 %).

    python benchmarks/choice_noise.py [--model PATH|none] [--repeats 3] [--busy 2] [--out results/choice_noise.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

SPIN_ON = {"session.intra_op.allow_spinning": "1"}
SPIN_OFF = {"session.intra_op.allow_spinning": "0"}


def _spin() -> None:  # pragma: no cover - a child process burning one CPU until terminated
    while True:
        pass


def build_candidates(model: str | None, work: Path) -> tuple[object, dict]:
    """``(ckpt, {label: OnnxModel})``: fp32 (fused), s8 per-channel, smooth α 0.7 and 0.8, and α 0.7 with its two
    first quantizable nodes in fp32; the head (classifier/pooler) stays fp32 in all, as in the tuner."""
    from multiverse import hub
    from multiverse.evaldata import builtin, subset
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.graphnodes import head_nodes, quantizable_nodes
    from multiverse.quantize import quantize
    from multiverse.smooth import calibrate, smooth
    from multiverse.targets import get_target
    from multiverse.validate import model_inputs

    ckpt = hub.resolve(model)
    tgt = get_target("icelake")
    fused = fuse(export(ckpt, work / "fp32", check=False), work / "fused", ckpt, tgt, check=False)
    base = tgt.quantization.model_copy(update={"nodes_to_exclude": tuple(head_nodes(fused, tgt.quantization))})
    amax = calibrate(fused, ckpt.task, model_inputs(subset(builtin(ckpt.task), 300)))
    out = {"fp32 (fused)": fused, base.label(): quantize(fused, work / "q-plain", base)}
    for alpha in (0.7, 0.8):
        sm = smooth(fused, work / f"smooth-{alpha}", amax, alpha)
        config = base.model_copy(update={"smooth_alpha": alpha})
        out[config.label()] = quantize(sm, work / f"q-{alpha}", config)
        if alpha == 0.7:
            extra = tuple(n for n in quantizable_nodes(sm, config) if n not in base.nodes_to_exclude)[:2]
            fb = config.model_copy(update={"nodes_to_exclude": base.nodes_to_exclude + extra})
            out[fb.label()] = quantize(sm, work / "q-fallback", fb)
    return ckpt, out


def rank(costs: dict[str, float]) -> list[str]:
    return sorted(costs, key=costs.get)


def measure(method: str, predictors: dict, text: str, rounds: int = 5) -> dict[str, float]:
    """Cost (ms) per candidate label by ``method`` (see the module docstring)."""
    from multiverse.timing import Budget, interleaved, median_ms, relative_costs
    from multiverse.candidate_timing import RUNS_PER_ROUND, latency_call

    labels = list(predictors)
    if method == "sequential_wall":
        budget = Budget(warmup_runs=5, min_runs=30, min_seconds=1.0, max_seconds=4.0, floor_runs=1)
        return {k: median_ms(latency_call(predictors[k]["on"], text), budget) for k in labels}
    if method == "interleaved_wall":
        budget = Budget(warmup_runs=5, min_runs=10, min_seconds=0.3, max_seconds=1.5, floor_runs=1)
        times = {k: [] for k in labels}
        for _ in range(rounds):
            for k in labels:
                times[k].append(median_ms(latency_call(predictors[k]["on"], text), budget))
        return {k: statistics.median(v) for k, v in times.items()}
    if method == "interleaved_cpu":
        r = interleaved([latency_call(predictors[k]["off"], text) for k in labels], rounds, RUNS_PER_ROUND)
        return dict(zip(labels, relative_costs(r.cpu_ms)))
    raise ValueError(method)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="none", help="checkpoint folder or Hub id; 'none' = the built-in MiniLM")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2, help="busy-loop processes for the loaded runs")
    ap.add_argument("--truth-rounds", type=int, default=10)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "choice_noise.json"))
    args = ap.parse_args()

    import onnxruntime

    from multiverse.evaldata import builtin
    from multiverse.inference import Predictor
    from multiverse.validate import model_inputs

    work = Path(args.work or tempfile.mkdtemp(prefix="choice-noise-"))
    t0 = time.perf_counter()
    ckpt, models = build_candidates(None if args.model == "none" else args.model, work)
    build_s = time.perf_counter() - t0
    texts = model_inputs(builtin(ckpt.task))
    text = " ".join(t if isinstance(t, str) else t[1] for t in texts)  # the tuner's latency text
    predictors = {k: {mode: Predictor(m.path, m.model_dir, ckpt.task, threads=args.threads, session_config=cfg)
                      for mode, cfg in (("on", SPIN_ON), ("off", SPIN_OFF))} for k, m in models.items()}

    truth = measure("interleaved_wall", predictors, text, rounds=args.truth_rounds)
    truth_load = os.getloadavg()
    methods = ("sequential_wall", "interleaved_wall", "interleaved_cpu")
    runs = []
    for condition in ("quiet", "loaded"):
        procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy if condition == "loaded" else 0)]
        for p in procs:
            p.start()
        try:
            for rep in range(args.repeats):
                for method in methods:
                    load = os.getloadavg()
                    t = time.perf_counter()
                    costs = measure(method, predictors, text)
                    runs.append({"condition": condition, "repeat": rep, "method": method, "seconds": round(time.perf_counter() - t, 2),
                                 "loadavg": [round(x, 2) for x in load], "costs_ms": {k: round(v, 3) for k, v in costs.items()},
                                 "ranking": rank(costs)})
                    print(f"{condition:6} {method:17} load {load[0]:5.2f}  " + "  ".join(
                        f"{k.replace('s8 per-channel', 'pc')}={v:.2f}" for k, v in costs.items()), flush=True)
        finally:
            for p in procs:
                p.terminate()
                p.join()

    int8 = [k for k in models if k != "fp32 (fused)"]
    truly_fastest = min(int8, key=truth.get)
    summary = {}
    for method in methods:
        quiet_choice = None
        rows = [r for r in runs if r["method"] == method]
        for r in rows:
            r["choice"] = min(int8, key=r["costs_ms"].get)
            r["regret"] = round(truth[r["choice"]] / truth[truly_fastest] - 1, 4)
        quiet = [r["choice"] for r in rows if r["condition"] == "quiet"]
        quiet_choice = statistics.mode(quiet)
        for r in rows:
            r["flipped"] = r["choice"] != quiet_choice
        loaded = [r for r in rows if r["condition"] == "loaded"]
        summary[method] = {"quiet_choice": quiet_choice, "choices": {c: [r["choice"] for r in rows if r["condition"] == c]
                                                                      for c in ("quiet", "loaded")},
                           "flips_under_load": sum(r["flipped"] for r in loaded), "loaded_runs": len(loaded),
                           "max_regret": max(r["regret"] for r in rows),
                           "within_5_percent": all(r["regret"] <= 0.05 for r in rows)}
    report = {"model": ckpt.name, "task": ckpt.task, "threads": args.threads, "seq_len": 128, "batch": 1,
              "busy_processes": args.busy, "repeats": args.repeats, "build_s": round(build_s, 1),
              "host": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                       "onnxruntime": onnxruntime.__version__},
              "truth": {"method": f"interleaved wall p50, {args.truth_rounds} rounds, spinning on, no added load",
                        "loadavg": [round(x, 2) for x in truth_load], "costs_ms": {k: round(v, 3) for k, v in truth.items()},
                        "fastest_int8": truly_fastest},
              "summary": summary, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    print(args.out)


if __name__ == "__main__":
    main()
