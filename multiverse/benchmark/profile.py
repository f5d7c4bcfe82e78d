"""Where one cell's time goes: the pipeline steps, plus the runtime's own per-op profile (ONNX Runtime's
profiler for an ONNX bundle; OpenVINO's per-layer performance counters, ``PERF_COUNT``, for an IR bundle)."""

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


#: What the report says when the bundle runs on OpenVINO (ONNX Runtime's profiler cannot see inside it).
OPENVINO_PROFILE_NOTE = ("this bundle runs on OpenVINO, so ONNX Runtime's profiler does not apply: the op table is "
                         "OpenVINO's per-layer performance counters (PERF_COUNT), by the CPU plugin's layer types "
                         "(e.g. FullyConnected), not ONNX op types")


def _layer_type_ms(infos: Sequence) -> dict[str, tuple[float, set]]:
    """Per layer type: (sum of the layers' ``real_time`` in ms, their names) from OpenVINO ``ProfilingInfo``s."""
    out: dict[str, tuple[float, set]] = {}
    for info in infos:
        ms, names = out.get(info.node_type, (0.0, set()))
        names.add(info.node_name)
        out[info.node_type] = (ms + info.real_time.total_seconds() * 1e3, names)
    return out


def summarize_openvino_counters(after_warmup: Sequence, after_runs: Sequence, warmup: int, runs: int,
                                model_run_ms: Sequence[float]) -> dict:
    """OpenVINO per-layer counters as ms per run, in :func:`summarize_ort_profile`'s shape.

    The CPU plugin's counters are running means over every inference since the model was compiled (measured with
    openvino 2026.4: 11.7, 6.0, 4.1 … ms over a session's first runs, the first one holding the allocations), so
    the mean of the ``runs`` timed inferences is ``(mean_all × (warmup + runs) − mean_warmup × warmup) / runs``.
    ``after_warmup`` / ``after_runs``: ``ProfilingInfo`` lists read after the ``warmup`` first and after all
    inferences. ``model_run_ms``: the measured inference times (ms) of the timed runs (their median is reported).
    Returns ``{"model_run_ms", "kernel_ms", "ops": [{"op_type", "ms", "share", "nodes"}, ...]}``, ops sorted by
    time (mean per run, not a median: the counters give no single runs).
    """
    before, total = _layer_type_ms(after_warmup), _layer_type_ms(after_runs)
    mean = {op: max(0.0, (ms * (warmup + runs) - before.get(op, (0.0, set()))[0] * warmup) / runs)
            for op, (ms, _) in total.items()}
    kernel = sum(mean.values())
    ops = [{"op_type": op, "ms": round(ms, 4), "share": round(ms / kernel, 4) if kernel else 0.0,
            "nodes": len(total[op][1])} for op, ms in sorted(mean.items(), key=lambda kv: -kv[1]) if ms > 0]
    return {"model_run_ms": round(statistics.median(model_run_ms), 4) if model_run_ms else 0.0,
            "kernel_ms": round(kernel, 4), "ops": ops}


def _profile_openvino(p, threads: int, inputs: Sequence, runs: int, warmup: int) -> dict:
    """OpenVINO's per-layer counters over ``runs`` calls of ``p`` (a Predictor of an IR bundle; ``inputs`` one
    batch, so one inference per call)."""
    from ..runtime import make_session

    config = {**p.bundle.session_config(), "openvino.PERF_COUNT": "YES"}
    p.session = make_session(p.model_path, threads, config)
    for _ in range(max(1, warmup)):
        p.predict(list(inputs))
    after_warmup = p.session.profiling_info()
    run_ms = [p.predict(list(inputs)).inference_ms for _ in range(runs)]
    return {"profiler": "openvino PERF_COUNT", "note": OPENVINO_PROFILE_NOTE,
            **summarize_openvino_counters(after_warmup, p.session.profiling_info(), max(1, warmup), runs, run_ms)}


def profile_predictor(bundle: str | Path, threads: int, inputs: Sequence, runs: int = 50, warmup: int = 5) -> dict:
    """Profile ``runs`` end-to-end calls of the bundle's pipeline on ``inputs`` with ``threads`` threads.

    Returns ``{"runs", "threads", "end_to_end_ms", "tokenization_ms", "inference_ms", "postprocess_ms",
    "model_run_ms", "kernel_ms", "ops"}`` (ms are medians per run). ``inference_ms - kernel_ms`` is ORT overhead
    outside kernels (input copies, thread hand-off, graph walk); ``end_to_end_ms - inference_ms`` is Python
    pre/post-processing. Warm-up runs use an unprofiled session. An OpenVINO bundle gets OpenVINO's per-layer
    counters instead of ONNX Runtime's profile (``"profiler": "openvino PERF_COUNT"`` and a ``"note"`` saying so;
    ``op_type`` is then the CPU plugin's layer type); an ONNX bundle gets ``"profiler": "onnxruntime"``.
    """
    from ..graphfiles import is_openvino_ir
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
    if is_openvino_ir(p.model_path):
        out.update(_profile_openvino(p, threads, inputs, runs, warmup))
        return out
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
    out.update({"profiler": "onnxruntime", **summarize_ort_profile(events, runs, skip_runs=warmup)})
    return out
