"""Where one cell's time goes: ONNX Runtime's profiler over the bundle's session, plus the pipeline steps."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence


def summarize_ort_profile(events: list[dict], runs: int) -> dict:
    """Aggregate an ORT profile (list of Chrome-trace events) into ms per run.

    Returns ``{"model_run_ms", "kernel_ms", "ops": [{"op_type", "ms", "share", "nodes"}, ...]}``, ops sorted by
    time; ``ms`` is per run, ``share`` the fraction of the summed kernel time. The first (warm-up) run's events
    are not excluded here: pass only the steady-state file.
    """
    by_op: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    model_run = 0.0
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = (e.get("args") or {}).get("op_name", "?")
            by_op[op] += float(e.get("dur", 0)) / 1e3
            nodes[op].add(e["name"][: -len("_kernel_time")])
        elif e.get("cat") == "Session" and e.get("name") == "model_run":
            model_run += float(e.get("dur", 0)) / 1e3
    kernel = sum(by_op.values())
    ops = [{"op_type": op, "ms": round(ms / runs, 4), "share": round(ms / kernel, 4) if kernel else 0.0,
            "nodes": len(nodes[op])} for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])]
    return {"model_run_ms": round(model_run / runs, 4), "kernel_ms": round(kernel / runs, 4), "ops": ops}


def profile_predictor(bundle: str | Path, threads: int, inputs: Sequence, runs: int = 50, warmup: int = 5) -> dict:
    """Profile ``runs`` end-to-end calls of the bundle's pipeline on ``inputs`` with ``threads`` threads.

    Returns ``{"runs", "threads", "end_to_end_ms", "tokenization_ms", "inference_ms", "postprocess_ms",
    "model_run_ms", "kernel_ms", "ops"}`` (ms are means per run). ``inference_ms - kernel_ms`` is ORT overhead
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
    n = len(plain)
    out = {"runs": runs, "threads": threads,
           "end_to_end_ms": round(sum(r[0] for r in plain) / n, 4),
           "tokenization_ms": round(sum(r[1] for r in plain) / n, 4),
           "inference_ms": round(sum(r[2] for r in plain) / n, 4),
           "postprocess_ms": round(sum(r[3] for r in plain) / n, 4)}
    with tempfile.TemporaryDirectory(prefix="multiverse-profile-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # ORT writes the profile into the working directory
        try:
            session = make_session(p.model_path, threads, p.bundle.session_config(), enable_profiling=True)
            p.session = session
            for _ in range(warmup):  # a new session's first runs allocate; they are in the file, averaged in
                p.predict(list(inputs))
            for _ in range(runs):
                p.predict(list(inputs))
            path = session.end_profiling()
            events = json.loads(Path(path).read_text())
        finally:
            os.chdir(cwd)
    summary = summarize_ort_profile(events, runs + warmup)
    out.update(summary)
    return out
