"""The physical limit of an encoder's int8 run on this host: multiply-accumulates (MACs) per call against the
int8 GEMM throughput ONNX Runtime's MLAS kernels reach here on a large matrix.

Arithmetic: a BERT-family layer with hidden size H, FFN size F and sequence length S does, per sequence,
S·(4·H² + 2·H·F) MACs in its weight GEMMs (Q, K, V, attention output; FFN in and out) and 2·S²·H in attention
(Q·Kᵀ and probabilities·V). Measured: the throughput (GMAC/s) of one large int8 GEMM (M=1024, K=H, N=F),
``MatMulInteger`` uint8×int8 in ONNX Runtime (the VNNI/AMX kernels its int8 MatMuls use), ``threads`` intra-op
threads, median of ``--runs`` calls. (A hand-built OpenVINO FakeQuantize MatMul ran at 41 GMAC/s here: the
plugin did not take its int8 path for that pattern, so it is not a peak and is not reported.) The floor of a model call is MACs ÷ the better throughput; it ignores
everything that is not a GEMM (LayerNorm, softmax, GELU, quantize/dequantize, tokenization), so a real call is
slower. Writes ``benchmarks/results/physical_limit.json``.

    python benchmarks/physical_limit.py --hidden 384 --ffn 1536 --layers 6      # all-MiniLM-L6-v2
    python benchmarks/physical_limit.py --hidden 768 --ffn 3072 --layers 6      # DistilBERT-base
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "physical_limit.json"


def macs(hidden: int, ffn: int, layers: int, seq: int) -> dict[str, int]:
    """Multiply-accumulates of one sequence of ``seq`` tokens: weight GEMMs and attention, per call."""
    gemm = layers * seq * (4 * hidden * hidden + 2 * hidden * ffn)
    attention = layers * 2 * seq * seq * hidden
    return {"gemm": gemm, "attention": attention, "total": gemm + attention}


def _median_s(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ort_int8_gmacs(m: int, k: int, n: int, threads: int, runs: int) -> float:
    """GMAC/s of ONNX Runtime's ``MatMulInteger`` (A uint8 [m, k] × constant B int8 [k, n])."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    seconds = _median_s(lambda: session.run(None, {"A": a}), runs)
    return m * k * n / seconds / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--name", default="all-MiniLM-L6-v2")
    ap.add_argument("--seq", default="8,64,128,512")
    args = ap.parse_args()
    m = 1024
    gemm = {"onnxruntime": round(ort_int8_gmacs(m, args.hidden, args.ffn, args.threads, args.runs), 1)}
    best = max(gemm.values())
    rows = {}
    for s in (int(x) for x in args.seq.split(",")):
        c = macs(args.hidden, args.ffn, args.layers, s)
        rows[s] = {**{k: v for k, v in c.items()}, "floor_ms": round(c["total"] / best / 1e6, 3)}
    doc = {"model": args.name, "hidden": args.hidden, "ffn": args.ffn, "layers": args.layers,
           "threads": args.threads, "gemm_shape": [m, args.hidden, args.ffn], "int8_gemm_gmacs": gemm,
           "loadavg": list(os.getloadavg()), "per_seq_len": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    out[args.name] = doc
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
