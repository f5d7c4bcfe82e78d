"""Does ``session.x64quantprecision=1`` change outputs or cost time on this host? (issue 11 §5)

Builds the int8 all-MiniLM-L6-v2 graph the way ``optimize`` does (optimum-onnx export, ORT
fusion, ``quantize_dynamic`` with the sapphirerapids/icelake recipe's s8 per-channel config),
opens two sessions through ``runtime.make_session`` (with and without the option, same
threads) and

* compares outputs bit for bit (last_hidden_state, every text, batch 1 and a padded batch 8);
* times the same graph interleaved: for each sequence length, ``--rounds`` rounds, each
  round runs A then B (or B then A, alternating) ``--per-round`` times on real text cut to
  exactly that many tokens, batch 1. Reported per config: median wall ms and median thread
  CPU ms (``time.thread_time``; with 1 intra-op thread ORT runs on the calling thread, so
  CPU time is not inflated by other processes on a shared host); the ratio B/A of medians,
  and the spread of the per-round ratios (min, median, max).

    python benchmarks/x64quantprecision.py [--threads 1] [--rounds 10] [--per-round 30] [--out results/x64quantprecision.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def build_int8(work: Path):
    from multiverse import hub
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.quantize import quantize
    from multiverse.targets import get_target

    ckpt = hub.resolve(None)
    tgt = get_target("sapphirerapids")
    fp32 = export(ckpt, work / "fp32", check=False)
    fused = fuse(fp32, work / "fused", ckpt, tgt, check=False)
    return ckpt, quantize(fused, work / "int8", tgt.quantization)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=30)
    ap.add_argument("--seq-lens", default="16,128")
    ap.add_argument("--work", default=None, help="reuse a folder holding int8/model.onnx (built if missing)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "x64quantprecision.json"))
    args = ap.parse_args()

    import numpy as np

    from multiverse import evaldata
    from multiverse.inference import Predictor
    from multiverse.runtime import make_session
    from multiverse.targets import host_flags

    work = Path(args.work or tempfile.mkdtemp(prefix="x64qp-"))
    if (work / "int8" / "model.onnx").is_file():
        model_path, model_dir = work / "int8" / "model.onnx", work / "fp32"  # tokenizer/config files stay in fp32/
    else:
        _, m = build_int8(work)
        model_path, model_dir = m.path, m.model_dir
    base = Predictor(model_path, model_dir, "feature-extraction", threads=args.threads)
    on = make_session(model_path, args.threads, {"session.x64quantprecision": "1"})
    off = base.session
    texts = list(evaldata.builtin("feature-extraction").texts)

    # 1. bit-identity
    identical, compared = True, 0
    batches = [[t] for t in texts[:40]] + [texts[i:i + 8] for i in range(0, 80, 8)]
    for batch in batches:
        enc = base.encode(batch)
        a = off.run(["last_hidden_state"], enc.arrays)[0]
        b = on.run(["last_hidden_state"], enc.arrays)[0]
        compared += a.size
        identical &= bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))

    # 2. interleaved timing
    long_text = " ".join(texts)
    results = {}
    for n in [int(x) for x in args.seq_lens.split(",")]:
        enc = base.encode([base.text_of_length(long_text, n)])
        assert enc.attention_mask.shape[1] == n, enc.attention_mask.shape
        feed = enc.arrays
        for s in (off, on):
            for _ in range(20):
                s.run(["last_hidden_state"], feed)
        wall = {"off": [], "on": []}
        cpu = {"off": [], "on": []}
        round_ratio_wall, round_ratio_cpu = [], []
        for r in range(args.rounds):
            order = (("off", off), ("on", on)) if r % 2 == 0 else (("on", on), ("off", off))
            per = {}
            for name, s in order:
                w, c = [], []
                for _ in range(args.per_round):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    s.run(["last_hidden_state"], feed)
                    c.append((time.thread_time() - c0) * 1e3)
                    w.append((time.perf_counter() - t0) * 1e3)
                wall[name] += w
                cpu[name] += c
                per[name] = (statistics.median(w), statistics.median(c))
            round_ratio_wall.append(per["on"][0] / per["off"][0])
            round_ratio_cpu.append(per["on"][1] / per["off"][1])
        med = {k: statistics.median(v) for k, v in wall.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        results[n] = {
            "runs_each": len(wall["off"]),
            "wall_p50_ms": med, "cpu_p50_ms": cmed,
            "ratio_on_over_off_wall": med["on"] / med["off"],
            "ratio_on_over_off_cpu": cmed["on"] / cmed["off"],
            "round_ratio_wall": {"min": min(round_ratio_wall), "median": statistics.median(round_ratio_wall),
                                 "max": max(round_ratio_wall)},
            "round_ratio_cpu": {"min": min(round_ratio_cpu), "median": statistics.median(round_ratio_cpu),
                                "max": max(round_ratio_cpu)},
        }
    report = {
        "graph": "all-MiniLM-L6-v2, fused, dynamic int8 s8 per-channel (sapphirerapids recipe)",
        "host": {"cpu": platform.processor() or platform.machine(), "vnni": "avx512_vnni" in host_flags(),
                 "amx_int8": "amx_int8" in host_flags(), "loadavg": os.getloadavg()},
        "threads": args.threads, "bit_identical": identical, "values_compared": compared,
        "timing": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
