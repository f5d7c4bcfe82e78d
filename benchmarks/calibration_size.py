"""NNCF calibration size: how many built-in texts the OpenVINO static int8 candidate needs, judged on held-out data.

For each model, the tuner's first OpenVINO candidate (``ovtuning.openvino_configs(...)[0]``: NNCF static int8,
the task head fp32, from OpenVINO's PyTorch frontend as ``optimize`` builds it) is quantized with calibration sets
of ``--sizes`` evenly spaced built-in texts (``ovtuning.calibration_feeds``); below the full set, also from a
second, shifted subset of the same size, so that the spread between two subsets of one size shows what noise a
smaller set adds. Each quantized model is scored against the PyTorch model on held-out data the calibration never
saw (BBC News ``test`` split, the weak classifier's ``eval-test.jsonl``) and on the tuner's default eval set (the
built-in texts), with the gate's own numbers (``validate.validate``). NNCF's CPU seconds are recorded per run.

    python benchmarks/calibration_size.py [--models distilbert,bbc-classifier,bbc-weak,minilm]
        [--sizes 270,128,64] [--held-out-limit N] [--out benchmarks/results/calibration_size.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MULTIVERSE_FIXTURE_CACHE", Path.home() / ".cache" / "multiverse-fixtures"))
THREADS = 2


def checkpoint(name: str, work: Path) -> tuple[str | None, list[tuple[str, str, str]]]:
    """The model path (None: the embedded MiniLM) and its held-out sets ``(name, spec, split)``."""
    sys.path.insert(0, str(ROOT.parent / "tests"))
    sys.path.insert(0, str(ROOT))
    import support as fx

    if name == "distilbert":
        from peers import build_distilbert

        # random weights, labels of its own: agreement with PyTorch on the BBC texts, their labels dropped
        return str(build_distilbert(work / "distilbert")), [("bbc-news test", "bbc-news", "test-unlabelled")]
    if name == "bbc-classifier":
        return str(fx.bbc_classifier(CACHE / "bbc-classifier")), [("bbc-news test", "bbc-news", "test")]
    if name == "bbc-weak":
        from support.weak import bbc_weak_classifier

        path = bbc_weak_classifier(CACHE / "bbc-weak-classifier")
        return str(path), [("eval-test.jsonl", str(path / "eval-test.jsonl"), "test")]
    if name == "minilm":
        return None, [("bbc-news test", "bbc-news", "test")]
    raise SystemExit(f"unknown model {name}")


def pick(total: int, n: int, shift: bool) -> list[int]:
    """``n`` evenly spaced indices of ``range(total)``; ``shift`` moves each by half a step (another subset)."""
    if n >= total:
        return list(range(total))
    step = total / n
    return [min(total - 1, int(i * step + (step / 2 if shift else 0))) for i in range(n)]


def run_model(name: str, sizes: list[int], work: Path, limit: int | None) -> dict:
    from multiverse import evaldata, hub
    from multiverse.export import export
    from multiverse.inference import Predictor
    from multiverse.ovfrontend import pytorch_ir
    from multiverse.ovquant import quantize_ov
    from multiverse.ovtuning import calibration_set, openvino_configs
    from multiverse.validate import model_inputs, reference_outputs, validate

    path, held = checkpoint(name, work)
    ckpt = hub.resolve(path)
    exported = export(ckpt, work / name / "fp32", check=False)
    source = pytorch_ir(ckpt.path, ckpt.task, exported, work / name / "ov-fp32")
    config = openvino_configs(source)[0]
    sets = [("builtin", evaldata.load("builtin", ckpt.task))]
    for label, spec, split in held:
        data = evaldata.load(spec, ckpt.task, split=split.split("-")[0], limit=limit)
        sets.append((label, replace(data, labels=None) if split.endswith("-unlabelled") else data))
    refs = {label: reference_outputs(ckpt, data, exported.model_dir, THREADS) for label, data in sets}
    encoder = Predictor(exported.path, exported.model_dir, ckpt.task, threads=THREADS)
    items = model_inputs(calibration_set(sets[0][1]))
    runs = []
    for n in sizes:
        for shift in ((False, True) if n < len(items) else (False,)):
            feeds = [encoder.encode([items[i]]).arrays for i in pick(len(items), n, shift)]
            c0, t0 = time.process_time(), time.perf_counter()
            q = quantize_ov(source, work / name / f"ov-{n}-{int(shift)}", config, feeds)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            row = {"n": len(feeds), "subset": "shifted" if shift else "evenly spaced", "nncf_cpu_s": round(cpu, 1),
                   "nncf_wall_s": round(wall, 1), "load_1m": round(os.getloadavg()[0], 2)}
            predictor = Predictor(q.path, q.model_dir, ckpt.task, threads=THREADS)
            for label, data in sets:
                r = validate(ckpt, predictor, data, 0.01, refs[label])
                row[label] = {"metric": r.metric, "reference": r.reference, "optimised": round(r.optimised, 5),
                              **{k: round(v, 6) for k, v in r.details.items() if isinstance(v, float)}}
            print(name, json.dumps(row), flush=True)
            runs.append(row)
    return {"model": ckpt.name, "task": ckpt.task, "config": config.label(), "calibration_pool": len(items),
            "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="distilbert,bbc-classifier,bbc-weak,minilm")
    ap.add_argument("--sizes", default="270,128,64")
    ap.add_argument("--held-out-limit", type=int, default=None, help="evenly spaced held-out examples (all)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "calibration_size.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work or tempfile.mkdtemp(prefix="calibration-size-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    report = {"threads": THREADS, "sizes": sizes, "held_out_limit": args.held_out_limit, "models": []}
    for name in args.models.split(","):
        report["models"].append(run_model(name, sizes, work, args.held_out_limit))
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
