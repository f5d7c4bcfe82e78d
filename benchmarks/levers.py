"""Speed levers for the int8 graph, measured as ratios in interleaved rounds in one process (issue: speed at
equal accuracy). 2 threads, batch 1, end to end (``Predictor.predict``), the tuner's latency text cut to
exactly N tokens.

Variants (all built from one export + fusion of ``--model``, the task head kept fp32 as the tuner does):

* ``plain``: s8 per-channel dynamic int8 (the icelake target's configuration), 2 threads,
  ``session.intra_op.allow_spinning=0`` (as every variant below unless named otherwise);
* ``plain-spin``: the same graph, spinning on (the serving default);
* ``plain-1thread``: the same graph, 1 intra-op thread;
* ``smooth-mul``: SmoothQuant α=0.7 with a ``Mul`` before every smoothed MatMul/Attention (before this change);
* ``smooth-fold``: α=0.7 with the attention-output scale folded into V (``smooth(..., fold=True)``);
* ``static-qdq`` (``--static``): ``quantize_static`` QDQ, u8 activations / s8 per-channel weights, MinMax
  calibration on 64 texts of the eval set, the head in fp32.

For each sequence length: ``--rounds`` rounds, each runs every variant ``--per-round`` times (rotating order);
reported per variant: median wall ms and median process CPU ms, and the ratio of medians to ``plain``.
Fidelity: cosine (embeddings) or label agreement (classifiers) to the fp32 fused graph on 64 texts.

    python benchmarks/levers.py [--model PATH|none] [--seq-lens 8,64,128,512] [--static] [--out results/levers-<name>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path


def build(model: str | None, work: Path, static: bool):
    from multiverse import hub
    from multiverse.evaldata import builtin, subset
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.graphnodes import head_nodes
    from multiverse.quantize import quantize
    from multiverse.smooth import calibrate, smooth
    from multiverse.targets import get_target
    from multiverse.validate import model_inputs

    ckpt = hub.resolve(model)
    tgt = get_target("icelake")
    fused = fuse(export(ckpt, work / "fp32", check=False), work / "fused", ckpt, tgt, check=False)
    head = tuple(head_nodes(fused, tgt.quantization))
    base = tgt.quantization.model_copy(update={"nodes_to_exclude": head})
    texts = model_inputs(subset(builtin(ckpt.task), 300))
    amax = calibrate(fused, ckpt.task, texts)
    cfg = base.model_copy(update={"smooth_alpha": 0.7})
    graphs = {"fp32": fused, "plain": quantize(fused, work / "plain", base),
              "smooth-mul": quantize(smooth(fused, work / "sm-mul", amax, 0.7, fold=False), work / "q-mul", cfg),
              "smooth-fold": quantize(smooth(fused, work / "sm-fold", amax, 0.7, fold=True), work / "q-fold", cfg)}
    if static:
        graphs["static-qdq"] = quantize_static_qdq(fused, work / "static", ckpt.task, texts[:64], head)
    return ckpt, texts, graphs


def quantize_static_qdq(fused, out: Path, task: str, texts, head):
    """ORT ``quantize_static`` (QDQ, u8 activations, s8 per-channel weights, MinMax) calibrated on ``texts``."""
    from dataclasses import replace

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from multiverse.inference import Predictor

    pred = Predictor(fused.path, fused.model_dir, task)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([pred.encode([t]).arrays for t in texts])

        def get_next(self):
            return next(self.items, None)

    out.mkdir(parents=True, exist_ok=True)
    quantize_static(str(fused.path), str(out / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    op_types_to_quantize=["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
                    nodes_to_exclude=list(head),
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    return replace(fused, path=out / "model.onnx", stage="int8")


def fidelity(task, ref, cand, texts) -> float:
    import numpy as np

    a = np.asarray(ref.predict(texts).results, dtype=object)
    b = np.asarray(cand.predict(texts).results, dtype=object)
    if task == "feature-extraction":
        a, b = np.asarray(a.tolist(), float), np.asarray(b.tolist(), float)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        return float(cos.min())
    return float(np.mean([x[0]["label"] == y[0]["label"] for x, y in zip(a.tolist(), b.tolist())]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="none")
    ap.add_argument("--seq-lens", default="8,64,128,512")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--per-round", type=int, default=10)
    ap.add_argument("--static", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from multiverse.inference import Predictor
    from multiverse.timing import interleaved
    from multiverse.candidate_timing import latency_call

    work = Path(args.work or tempfile.mkdtemp(prefix="levers-"))
    ckpt, texts, graphs = build(None if args.model == "none" else args.model, work, args.static)
    on, off = {"session.intra_op.allow_spinning": "1"}, {"session.intra_op.allow_spinning": "0"}

    def pred(g, threads=2, cfg=on):
        return Predictor(graphs[g].path, graphs[g].model_dir, ckpt.task, threads=threads, session_config=cfg)

    # Graph levers compare spinning-off sessions (CPU time then measures work); "plain-spin" is the serving default.
    variants = {"plain": pred("plain", cfg=off), "plain-spin": pred("plain"), "plain-1thread": pred("plain", 1, off),
                "smooth-mul": pred("smooth-mul", cfg=off), "smooth-fold": pred("smooth-fold", cfg=off)}
    if "static-qdq" in graphs:
        variants["static-qdq"] = pred("static-qdq", cfg=off)
    ref = pred("fp32", cfg=off)
    fid_texts = [t if isinstance(t, str) else t[1] for t in texts[:64]]
    fid = {k: round(fidelity(ckpt.task, ref, v, fid_texts), 5) for k, v in variants.items()}
    text = " ".join(t if isinstance(t, str) else t[1] for t in texts)
    results = []
    for n in [int(x) for x in args.seq_lens.split(",")]:
        names = list(variants)
        load = os.getloadavg()
        r = interleaved([latency_call(variants[k], text, seq_len=n) for k in names], args.rounds, args.per_round)
        wall = {k: statistics.median(r.wall_ms[i]) for i, k in enumerate(names)}
        cpu = {k: statistics.median(r.cpu_ms[i]) for i, k in enumerate(names)}
        row = {"seq_len": n, "loadavg": [round(x, 2) for x in load], "wall_ms": wall, "cpu_ms": cpu,
               "wall_ratio_to_plain": {k: round(v / wall["plain"], 3) for k, v in wall.items()},
               "cpu_ratio_to_plain": {k: round(v / cpu["plain"], 3) for k, v in cpu.items()}}
        results.append(row)
        print(f"seq {n:4} load {load[0]:5.2f} wall " + " ".join(f"{k}={v:.2f}({row['wall_ratio_to_plain'][k]:.2f})"
                                                            for k, v in wall.items()), flush=True)
        print(f"{'':19}cpu  " + " ".join(f"{k}={v:.2f}({row['cpu_ratio_to_plain'][k]:.2f})" for k, v in cpu.items()),
              flush=True)
    name = Path(args.model).name if args.model != "none" else "minilm"
    out = Path(args.out or Path(__file__).parent / "results" / f"levers-{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": ckpt.name, "task": ckpt.task, "threads": 2, "batch": 1, "rounds": args.rounds,
                               "per_round": args.per_round, "fidelity_vs_fp32_on_64_texts": fid,
                               "fidelity_metric": "min cosine" if ckpt.task == "feature-extraction" else "label agreement",
                               "results": results}, indent=1))
    print(json.dumps(fid))
    print(out)


if __name__ == "__main__":
    main()
