"""Where one cell's time goes: ONNX Runtime's profiler over the bundle's session, plus the pipeline steps."""

from __future__ import annotations

import bisect
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence


def summarize_ort_profile(events: list[dict], runs: int, skip_runs: int = 0) -> dict:
    """Aggregate an ORT profile (list of Chrome-trace events) into ms per run.

    The first ``skip_runs`` ``model_run`` events (warm-up: allocations, first-touch) are left out. Each op
    type's time is summed per run and the **median over runs** is reported, so a few runs slowed down by
    other processes do not skew the picture (``runs`` is used when the profile has no ``model_run`` events).
    Returns ``{"model_run_ms", "kernel_ms", "ops": [{"op_type", "ms", "share", "nodes"}, ...]}``, ops sorted
    by time; ``share`` is the op's fraction of ``kernel_ms`` (the sum of the ops' medians).
    """
    starts = sorted((float(e.get("ts", 0)), float(e.get("dur", 0))) for e in events
                    if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = starts[skip_runs:] if len(starts) > skip_runs else starts
    n_runs = len(starts) or max(1, runs)
    per_run: dict[str, list[float]] = defaultdict(lambda: [0.0] * n_runs)
    nodes: dict[str, set] = defaultdict(set)
    first = starts[0][0] if starts else float("-inf")
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = float(e.get("ts", 0))
        if ts < first:
            continue
        i = bisect.bisect_right([s for s, _ in starts], ts) - 1 if starts else 0
        op = (e.get("args") or {}).get("op_name", "?")
        per_run[op][max(0, min(i, n_runs - 1))] += float(e.get("dur", 0)) / 1e3
        nodes[op].add(e["name"][: -len("_kernel_time")])
    med = {op: statistics.median(v) for op, v in per_run.items()}
    kernel = sum(med.values())
    ops = [{"op_type": op, "ms": round(ms, 4), "share": round(ms / kernel, 4) if kernel else 0.0,
            "nodes": len(nodes[op])} for op, ms in sorted(med.items(), key=lambda kv: -kv[1])]
    model_run = statistics.median(d for _, d in starts) / 1e3 if starts else 0.0
    return {"model_run_ms": round(model_run, 4), "kernel_ms": round(kernel, 4), "ops": ops}


def profile_predictor(bundle: str | Path, threads: int, inputs: Sequence, runs: int = 50, warmup: int = 5) -> dict:
    """Profile ``runs`` end-to-end calls of the bundle's pipeline on ``inputs`` with ``threads`` threads.

    Returns ``{"runs", "threads", "end_to_end_ms", "tokenization_ms", "inference_ms", "postprocess_ms",
    "model_run_ms", "kernel_ms", "ops"}`` (ms are medians per run). ``inference_ms - kernel_ms`` is ORT overhead
    outside kernels (input copies, thread hand-off, graph walk); ``end_to_end_ms - inference_ms`` is Python
    pre/post-processing. Warm-up runs use an unprofiled session.
    """
    from ..inference import Predictor
    from ..runtime import make_session

    p = Predictor.from_bundle(bundle, threads=threads)
    for _ in range(warmup):
        p.predict(list(inputs))
    # The unprofiled numbers first (profiling itself adds a little per node).
    plain = []
    for _ in range(runs):
        t0 = time.perf_counter()
        pred = p.predict(list(inputs))
        plain.append(((time.perf_counter() - t0) * 1e3, pred.tokenization_ms, pred.inference_ms, pred.postprocess_ms))
    out = {"runs": runs, "threads": threads, **{
        key: round(statistics.median(r[i] for r in plain), 4)
        for i, key in enumerate(("end_to_end_ms", "tokenization_ms", "inference_ms", "postprocess_ms"))}}
    with tempfile.TemporaryDirectory(prefix="multiverse-profile-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # ORT writes the profile into the working directory
        try:
            session = make_session(p.model_path, threads, p.bundle.session_config(), enable_profiling=True)
            p.session = session
            for _ in range(warmup):  # a new session's first runs allocate; left out of the summary
                p.predict(list(inputs))
            for _ in range(runs):
                p.predict(list(inputs))
            path = session.end_profiling()
            events = json.loads(Path(path).read_text())
        finally:
            os.chdir(cwd)
    summary = summarize_ort_profile(events, runs, skip_runs=warmup)
    out.update(summary)
    return out
