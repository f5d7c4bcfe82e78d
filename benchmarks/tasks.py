"""Per-task proof of "faster at the same accuracy" (issue 3), measured in one run.

For each task, a real checkpoint (MiniLM for embeddings; BBC topic classifier, WNUT-16 NER and
BBC headline/body cross-encoder with MiniLM's last layer fine-tuned, see ``tests/support/ranker.py``) is
optimized with the tuner selecting on the *validation* split, then re-validated on the held-out
*test* split. Latency: end-to-end p50 (tokenize + run + postprocess, ms) at sequence length 128,
batch 1, 2 intra-op threads pinned to 2 cores, for the shipped bundle, the fused fp32 ONNX graph,
the plain exported fp32 ONNX graph and the PyTorch model (transformers / sentence-transformers).

    python benchmarks/tasks.py [--tasks text-classification,...] [--out benchmarks/results]

Writes ``tasks.json`` and ``tasks.md`` (the README table).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from multiverse.timing import Budget, median_ms

THREADS = 2
SEQ_LEN = 128


def _pin(n: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:n]
    os.sched_setaffinity(0, cpus)


def torch_p50(task: str, ckpt: Path, text: str, seconds: float = 3.0) -> float:
    """p50 (ms) of the vanilla PyTorch path on one input of ~SEQ_LEN tokens: transformers pipeline, or
    sentence-transformers ``encode`` / ``CrossEncoder.predict``."""
    import torch

    torch.set_num_threads(THREADS)
    if task == "feature-extraction":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(ckpt), device="cpu")
        call = lambda: model.encode([text])  # noqa: E731
    elif task == "ranking":
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(ckpt), device="cpu")
        call = lambda: model.predict([(text[: len(text) // 3], text)])  # noqa: E731
    else:
        from transformers import pipeline

        pipe = pipeline(task, model=str(ckpt), device="cpu",
                        **({"aggregation_strategy": "simple"} if task == "token-classification" else {}))
        call = lambda: pipe(text)  # noqa: E731
    return median_ms(call, Budget(warmup_runs=5, min_runs=30, min_seconds=seconds, max_seconds=10 * seconds))


def run_task(task: str, cache: Path, out: Path) -> dict:
    from multiverse import hub
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.inference import Predictor
    from multiverse.pipeline import optimize, revalidate
    from multiverse.targets import get_target
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import support as fx
    from multiverse.candidate_timing import latency_call

    def measure_p50(predictor, text: str, min_seconds: float = 3.0) -> float:
        """Wall-clock p50 (ms) of the tuner's end-to-end call (tokenize + run + post-process, SEQ_LEN tokens)."""
        budget = Budget(warmup_runs=5, min_runs=30, min_seconds=min_seconds, max_seconds=10 * min_seconds)
        return median_ms(latency_call(predictor, text, seq_len=SEQ_LEN), budget)

    # Tolerances are the acceptance bars: embeddings min cosine ≥ 0.99 and mean ≥ 0.995 (τ = 0.005),
    # classification accuracy loss ≤ 0.5 % (τ = 0.005), entity F1 and MRR relative loss ≤ 1 % (τ = 0.01).
    tolerance = {"feature-extraction": 0.005, "text-classification": 0.005,
                 "token-classification": 0.01, "ranking": 0.01}[task]
    build = {"feature-extraction": (lambda: None, "bbc-news"),
             "text-classification": (lambda: fx.bbc_classifier(cache / "bbc-classifier"), "bbc-news"),
             "token-classification": (lambda: fx.wnut_ner(cache / "wnut-ner"), "wnut16"),
             "ranking": (lambda: fx.bbc_ranker(cache / "bbc-ranker"), "bbc-news")}
    make, data = build[task]
    path = make()
    t0 = time.perf_counter()
    b = optimize(None if path is None else str(path), "native", eval_data=data, eval_split="validation",
                 tolerance=tolerance, out=out / "bundles", overwrite=True, threads=THREADS)
    optimize_s = time.perf_counter() - t0
    held = revalidate(b.path, data, eval_split="test", threads=THREADS)
    ckpt = hub.resolve(None if path is None else str(path))
    from multiverse.evaldata import bbc_articles

    text = " ".join(body for _, body, _ in bbc_articles()[:3])
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export(ckpt, Path(tmp) / "fp32", check=False)
        fused = fuse(fp32, Path(tmp) / "fused", ckpt, get_target("native"), check=False)
        shipped = Predictor.from_bundle(b, threads=THREADS)
        cut = shipped.text_of_length(text, SEQ_LEN)
        p50 = {
            "shipped": measure_p50(shipped, text, min_seconds=3),
            "fp32_fused_onnx": measure_p50(Predictor(fused.path, fused.model_dir, task, threads=THREADS), text, min_seconds=3),
            "fp32_onnx": measure_p50(Predictor(fp32.path, fp32.model_dir, task, threads=THREADS), text, min_seconds=3),
            "pytorch": torch_p50(task, ckpt.path, cut),
        }
    m = b.manifest
    return {
        "task": task, "model": ckpt.name, "precision": m["precision"], "chosen": m["tuning"]["trials"][m["tuning"]["chosen"]]["label"],
        "reason": m["tuning"]["reason"], "tolerance": tolerance, "trials": len(m["tuning"]["trials"]), "optimize_seconds": round(optimize_s, 1),
        "tuning_split": m["validation"], "held_out": held.to_dict(), "p50_ms": p50,
        "speedup_vs_fp32_onnx": p50["fp32_onnx"] / p50["shipped"], "speedup_vs_pytorch": p50["pytorch"] / p50["shipped"],
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| task | shipped | held-out metric: PyTorch → shipped | other held-out checks | p50 shipped | fp32 fused ONNX | "
             "fp32 ONNX | PyTorch | × fp32 ONNX | × PyTorch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, p = r["held_out"], r["p50_ms"]
        d = h["details"]
        extra = ", ".join(f"{k} {v:.4f}" for k, v in d.items() if isinstance(v, float))
        lines.append(f"| {r['task']} | {r['chosen']} | {h['metric']} {h['reference']:.4f} → {h['optimised']:.4f} "
                     f"(loss {h['relative_loss']:+.4f}, n={h['n']}) | {extra} | {p['shipped']:.2f} ms | "
                     f"{p['fp32_fused_onnx']:.2f} ms | {p['fp32_onnx']:.2f} ms | {p['pytorch']:.2f} ms | "
                     f"{r['speedup_vs_fp32_onnx']:.2f}× | {r['speedup_vs_pytorch']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="feature-extraction,text-classification,token-classification,ranking")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("MULTIVERSE_FIXTURE_CACHE",
                                                                     Path.home() / ".cache" / "multiverse-fixtures")))
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _pin(THREADS)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks.split(","):
        print(f"== {task}", file=sys.stderr, flush=True)
        rows.append(run_task(task, args.cache, Path(tempfile.mkdtemp(prefix="mv-tasks-"))))
        print(markdown(rows[-1:]), file=sys.stderr, flush=True)
    from multiverse.pipeline import versions
    from multiverse.targets import host_cpu_name

    doc = {"host": {"cpu": host_cpu_name(), "threads": THREADS, "seq_len": SEQ_LEN, "batch": 1},
           "versions": versions(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tasks": rows}
    (args.out / "tasks.json").write_text(json.dumps(doc, indent=2))
    (args.out / "tasks.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
