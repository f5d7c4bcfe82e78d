"""Which int8 candidate kind keeps a weak classifier head's labels? Label agreement with PyTorch and speed vs fp32.

The fixture is ``tests/support/weak.py``'s ``bbc_weak_classifier`` (MiniLM-L6 + a 2-class head trained on noisy
BBC labels, test accuracy 0.74, 18 % of test examples with a logit margin below 0.2). Every candidate is built from
the same checkpoint, calibrated or tuned on ``eval-validation.jsonl`` (213 articles) only, and scored on both
splits against the PyTorch reference (``multiverse.validate``; test = ``eval-test.jsonl``, 425 articles, held out).

Candidates:
  * ORT fp32: the fused fp32 graph (what the tuner calls fp32) and the unfused optimum export.
  * ORT dynamic int8: the target's ``quantize_dynamic`` config, head fp32 (the tuner's first trial).
  * ORT shipped: the bundle that ``multiverse optimize`` wrote for this fixture (``--bundle``, optional).
  * ORT SmoothQuant α=0.8 dynamic int8 with the k nodes that move near-boundary validation margins most kept
    fp32 (:func:`ort_margin_fallback`), and with the embeddings fp32.
  * OpenVINO fp32 and OpenVINO + NNCF static int8 (``openvino.convert_model`` of the exported fp32 ONNX,
    ``nncf.quantize(model_type=TRANSFORMER)``) with its levers: SmoothQuant alpha, preset MIXED, the classifier
    head (and the FFN output projections) in ``ignored_scope``, ``nncf.quantize_with_accuracy_control`` with
    label agreement on validation; and int8 weights only (``nncf.compress_weights``) with the CPU plugin's
    per-token dynamic activation quantization (``DYNAMIC_QUANTIZATION_GROUP_SIZE`` 0 = off, 32, 64).
    Compiled with ``INFERENCE_PRECISION_HINT=f32`` (no bf16 on this host anyway), ``PERFORMANCE_HINT=LATENCY``.

Agreement columns per split: the observed label agreement with PyTorch, and what the gate estimates users will see
from that split alone: ``expected_agreement_pairs`` (± ``_se``), 1 − ``multiverse.tasks.text_classification.
expected_flip_rate`` (every example's margin tried with every example's logit error), and ``expected_agreement_gaussian``
(mean Φ(−|m| / σ) with σ the std of the margin error). Logits of every candidate go to ``WORK/logits.npz``.

Speed: end-to-end call (tokenize, run, post-process) on one text cut to 128 tokens, batch 1, 2 threads, all
candidates interleaved in one process (``multiverse.timing.interleaved``; ORT sessions with spinning off so that
process CPU time is the work done); costs are ``relative_costs`` over the rounds; speed-up = fp32 fused cost /
candidate cost. Writes ``benchmarks/results/weak_head.json``.

Usage: ``PYTHONPATH=.:tests python benchmarks/weak_head.py [--bundle BUNDLE] [--only NAME ...] [--rounds 9]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from multiverse import evaldata, hub
from multiverse.export import export
from multiverse.fuse import fuse
from multiverse.graphnodes import head_nodes
from multiverse.inference import Predictor
from multiverse.quantize import quantize
from multiverse.targets import get_target
from multiverse.tasks.text_classification import (
    expected_flip_rate as pairwise_flip_rate,
)
from multiverse.timing import interleaved, relative_costs
from multiverse.tuning import NO_SPINNING
from multiverse.validate import candidate_outputs, reference_outputs, score

THREADS, SEQ_LEN, TOLERANCE = 2, 128, 0.005
OUT = ROOT / "benchmarks" / "results" / "weak_head.json"


class OpenVinoCandidate:
    """An OpenVINO model behind the attributes ``multiverse.validate.candidate_outputs`` uses (``encode``,
    ``run_batched``, ``handler``, ``config``). ``run_batched`` runs the whole right-padded batch (static int8
    scales do not depend on the batch)."""

    def __init__(self, model, predictor: Predictor, config: dict | None = None):
        import openvino as ov

        self.compiled = ov.Core().compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
            **(config or {})})
        self.request = self.compiled.create_infer_request()
        self.names = [p.get_any_name() for p in self.compiled.inputs]
        self.handler, self.config, self.tok = predictor.handler, predictor.config, predictor.tokenizer

    def encode(self, items):
        return self.tok.encode(list(items), self.names)

    def run_batched(self, enc) -> np.ndarray:
        return self.request.infer(enc.arrays)[self.compiled.outputs[0]]

    def predict(self, items):
        enc = self.encode(items)
        return self.handler.postprocess(self.run_batched(enc), enc, {})


def ov_inputs(pred: Predictor, texts, batch: int = 16) -> list[dict]:
    """Tokenized right-padded batches (``{input name: int64 [batch, seq]}``) for NNCF datasets."""
    names = [i.name for i in pred.session.get_inputs()]
    return [dict(pred.tokenizer.encode(list(texts[i:i + batch]), names).arrays) for i in range(0, len(texts), batch)]


def nncf_candidates(fp32_onnx: Path, pred: Predictor, val, val_ref_labels: np.ndarray, only,
                    max_drops=(0.01,)) -> dict:
    """``{name: openvino.Model}`` for the NNCF levers (each built only if its name is in ``only`` or ``only`` is
    empty). Calibration: the validation texts, batch 1 (NNCF's subset_size counts samples)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    base = ov.convert_model(str(fp32_onnx))
    calib = nncf.Dataset(ov_inputs(pred, list(val.texts), batch=1))
    head = nncf.IgnoredScope(patterns=[".*pooler.*", ".*classifier.*"], validate=False)

    def sq(alpha):
        return AdvancedQuantizationParameters(smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=alpha))

    recipes = {
        "ov nncf int8 (default)": {},
        "ov nncf int8 SQ off": {"advanced_parameters": sq(-1)},
        "ov nncf int8 SQ 0.5": {"advanced_parameters": sq(0.5)},
        "ov nncf int8 SQ 0.7": {"advanced_parameters": sq(0.7)},
        "ov nncf int8 mixed": {"preset": nncf.QuantizationPreset.MIXED},
        "ov nncf int8 head fp32": {"ignored_scope": head},
        "ov nncf int8 mixed head fp32": {"preset": nncf.QuantizationPreset.MIXED, "ignored_scope": head},
        # the FFN output projections (input: GELU output) were the most margin-sensitive nodes under ORT int8
        "ov nncf int8 head + FFN-out fp32": {"ignored_scope": nncf.IgnoredScope(
            patterns=[".*pooler.*", ".*classifier.*", r".*layer\.\d+/output/dense.*"], validate=False)},
    }
    models = {"ov fp32": base}
    for name, kw in recipes.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        models[name] = nncf.quantize(base.clone(), calib, model_type=nncf.ModelType.TRANSFORMER,
                                     subset_size=len(val.texts), **kw)
        print(f"{name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
    # int8 weights (per output channel), head fp32; the CPU plugin then quantizes the activations of those
    # layers per token in groups of DYNAMIC_QUANTIZATION_GROUP_SIZE input channels (0: off, weights only)
    for mode in ("INT8_SYM", "INT8_ASYM"):
        name = f"ov nncf weights {mode} (compress_weights), head fp32"
        if not only or name in only:
            models[name] = nncf.compress_weights(base.clone(), mode=getattr(nncf.CompressWeightsMode, mode),
                                                 ignored_scope=head)
    for max_drop in max_drops:
        name = f"ov nncf int8 accuracy control (label agreement, max drop {max_drop:g})"
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        batches = ov_inputs(pred, list(val.texts), batch=1)
        items = list(zip(batches, val_ref_labels.tolist()))

        def agreement(compiled, data) -> float:
            out = compiled.outputs[0]
            hits = [int(np.argmax(compiled(x)[out][0]) == y) for x, y in data]
            return float(np.mean(hits)), [float(h) for h in hits]

        models[name] = nncf.quantize_with_accuracy_control(
            base.clone(), calib, nncf.Dataset(items, lambda it: it[0]), validation_fn=agreement, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(val.texts))
        print(f"{name}: built in {time.perf_counter() - t0:.0f} s", flush=True)
    return models


def ort_margin_fallback(fused, ckpt, target, val, ref_val, work: Path, alpha: float, counts) -> tuple[dict, dict]:
    """``({name: OnnxModel}, sensitivity)``: SmoothQuant ``alpha`` + ORT dynamic int8 (head fp32, smoothing
    calibrated on 300 built-in texts as the tuner does) with the ``k`` nodes that move the logit margin of the 64
    nearest-to-boundary validation examples most, each quantized alone, kept in fp32, for each ``k`` in ``counts``.

    Sensitivity of a node: mean over those examples of ``max(0, -sign(m_ref) * Δm) / (|m_ref| + 0.05)`` (margin
    ``m`` = logit 1 - logit 0; the movement toward the other label relative to the distance to the boundary)."""
    from dataclasses import replace

    import onnx

    from multiverse.evaldata import builtin, subset
    from multiverse.graphnodes import quantizable_nodes, single_node_graphs
    from multiverse.smooth import calibrate, smooth
    from multiverse.validate import model_inputs

    head = head_nodes(fused, target.quantization)
    base = smooth(fused, work / f"smooth-{alpha:g}", calibrate(fused, ckpt.task, model_inputs(
        subset(builtin(ckpt.task), 300))), alpha)
    cfg = target.quantization.model_copy(update={"smooth_alpha": alpha})
    every = quantize(base, work / f"smooth-{alpha:g}-all", cfg)
    m_ref = ref_val.values[:, 1] - ref_val.values[:, 0]
    near = np.argsort(np.abs(m_ref))[:64]
    near_set = replace(val, texts=tuple(val.texts[i] for i in near), labels=tuple(val.labels[i] for i in near))
    sens = {}
    for name, proto in single_node_graphs(base, every, [n for n in quantizable_nodes(base, cfg) if n not in head]):
        onnx.save(proto, str(work / "single.onnx"))
        out = candidate_outputs(Predictor(work / "single.onnx", fused.model_dir, ckpt.task, threads=THREADS),
                                near_set).values
        dm = (out[:, 1] - out[:, 0]) - m_ref[near]
        sens[name] = round(float(np.mean(np.maximum(0, -np.sign(m_ref[near]) * dm) / (np.abs(m_ref[near]) + 0.05))), 5)
    order = sorted(sens, key=lambda n: -sens[n])
    models = {f"ort dynamic int8 SQ {alpha:g}, head + {k} fp32 by margin": quantize(
        base, work / f"margin-{k}", cfg.model_copy(update={"nodes_to_exclude": tuple(head) + tuple(order[:k])}))
        for k in counts}
    models[f"ort dynamic int8 SQ {alpha:g}, head + embeddings fp32"] = quantize(base, work / "embeddings-fp32", cfg.model_copy(
        update={"nodes_to_exclude": tuple(head), "op_types": ("MatMul", "Attention")}))
    return models, {n: sens[n] for n in order}


def expected_flip_rate(ref_margins: np.ndarray, sigma: float) -> float:
    """Expected share of labels flipped when Gaussian noise of std ``sigma`` is added to margins ``ref_margins``
    (float [n], logit 1 - logit 0): mean of Φ(-|m| / σ). From the reference margins alone, so it is as smooth in σ
    as the noise is; a count of flips on 213 examples moves by 0.47 points per example."""
    if sigma <= 0:
        return 0.0
    return float(np.mean([0.5 * math.erfc(abs(m) / sigma / math.sqrt(2)) for m in ref_margins]))


def agreement_row(cand, data, ref, config) -> dict:
    out = candidate_outputs(cand, data)
    rep = score(data, ref, out, config, TOLERANCE)
    ref_lab, cand_lab = np.argmax(ref.values, -1), np.argmax(out.values, -1)
    margin = np.abs(ref.values[:, 1] - ref.values[:, 0])
    flips = np.flatnonzero(ref_lab != cand_lab)
    d_margin = (out.values[:, 1] - out.values[:, 0]) - (ref.values[:, 1] - ref.values[:, 0])
    p_pairs, se_pairs = pairwise_flip_rate(ref.values, out.values)
    return {"agreement": round(float(np.mean(ref_lab == cand_lab)), 4), "flips": int(flips.size),
            # estimates of the agreement users will see, from this split alone (the gate's view)
            "expected_agreement_pairs": round(1 - p_pairs, 4), "expected_agreement_pairs_se": round(se_pairs, 4),
            "expected_agreement_gaussian": round(1 - expected_flip_rate(margin, float(d_margin.std())), 4),
            "logits": out.values.round(5).tolist(),
            "margin_noise_std": round(float(d_margin.std()), 5), "margin_shift_mean": round(float(d_margin.mean()), 5),
            "flipped_ref_margins": [round(float(margin[i]), 3) for i in flips][:20],
            "accuracy": round(rep.optimised, 4), "reference_accuracy": round(rep.reference, 4),
            "logit_nmse": round(float(rep.details.get("logit_nmse", float("nan"))), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="bundle written by `multiverse optimize` on the fixture (the tuner's choice)")
    ap.add_argument("--only", nargs="*", default=[], help="NNCF candidate names to build (default: all)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN, help="tokens of the timed text (default 128)")
    ap.add_argument("--max-drops", type=float, nargs="*", default=[0.01],
                    help="max_drop values (label agreement, absolute) of quantize_with_accuracy_control")
    ap.add_argument("--fallback-counts", type=int, nargs="*", default=[2, 6, 8],
                    help="ORT: numbers of margin-sensitive nodes kept fp32 (none: skip)")
    ap.add_argument("--work", default="/tmp/weak_head")
    args = ap.parse_args()

    from support import bbc_weak_classifier
    from support.pytest_fixtures import fixture_cache_root

    folder = bbc_weak_classifier(fixture_cache_root() / "bbc-weak-classifier")
    ckpt, work, target = hub.resolve(str(folder)), Path(args.work), get_target("native")
    fp32 = export(ckpt, work / "fp32", check=False)
    fused = fuse(fp32, work / "fused", ckpt, target, check=False)
    val = evaldata.load(str(folder / "eval-validation.jsonl"), ckpt.task)
    test = evaldata.load(str(folder / "eval-test.jsonl"), ckpt.task)
    refs = {"validation": reference_outputs(ckpt, val, fused.model_dir, THREADS),
            "test": reference_outputs(ckpt, test, fused.model_dir, THREADS)}

    def ort(path, model_dir=fused.model_dir):
        return Predictor(path, model_dir, ckpt.task, threads=THREADS, session_config=NO_SPINNING)

    cands = {"ort fp32 fused": ort(fused.path), "ort fp32 unfused": ort(fp32.path, fp32.model_dir)}
    head = head_nodes(fused, target.quantization)
    dyn = quantize(fused, work / "dyn", target.quantization.model_copy(update={"nodes_to_exclude": tuple(head)}))
    cands["ort dynamic int8 (head fp32)"] = ort(dyn.path)
    if args.bundle:
        shipped = Predictor.from_bundle(args.bundle, threads=THREADS)
        tuning = json.loads((Path(args.bundle) / "multiverse.json").read_text())["tuning"]
        cands["ort tuner's choice: " + tuning["trials"][tuning["chosen"]]["label"]] = ort(shipped.model_path,
                                                                                         shipped.model_dir)
    base = cands["ort fp32 fused"]
    sensitivity = {}
    if args.fallback_counts:
        models, sensitivity = ort_margin_fallback(fused, ckpt, target, val, refs["validation"], work, 0.8,
                                                  args.fallback_counts)
        cands.update({n: ort(m.path) for n, m in models.items()})
    val_labels = np.argmax(refs["validation"].values, -1)
    for name, model in nncf_candidates(fp32.path, base, val, val_labels, args.only, args.max_drops).items():
        if "compress_weights" in name:
            for group in (0, 32, 64):
                cands[f"{name}, CPU dynamic quantization group {group}"] = OpenVinoCandidate(
                    model, base, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": group})
        else:
            cands[name] = OpenVinoCandidate(model, base)

    rows = {}
    for name, cand in cands.items():
        rows[name] = {split: agreement_row(cand, d, refs[split], base.config)
                      for split, d in (("validation", val), ("test", test))}
        v = rows[name]["validation"]
        print(f"{name:60s} val {v['agreement']:.4f} expected {v['expected_agreement_pairs']:.4f} "
              f"(se {v['expected_agreement_pairs_se']:.4f}) test {rows[name]['test']['agreement']:.4f} "
              f"acc {rows[name]['test']['accuracy']:.4f}", flush=True)
    logits = {f"{name}|{split}": np.asarray(rows[name][split].pop("logits"), np.float32)
              for name in rows for split in ("validation", "test")}
    logits.update({f"reference|{split}": refs[split].values for split in refs})
    np.savez_compressed(Path(args.work) / "logits.npz", **logits)  # for re-analysis without rebuilding

    m_test = refs["test"].values[:, 1] - refs["test"].values[:, 0]
    for name, row in rows.items():  # the test flip rate predicted from the validation margin noise
        row["test_flip_rate_predicted_from_validation"] = round(
            expected_flip_rate(m_test, row["validation"]["margin_noise_std"]), 4)
    from multiverse.evaldata import bbc_articles

    text = base.text_of_length(" ".join(body for _, body, _ in bbc_articles()[:3]), args.seq_len)
    assert len(base.encode([text]).arrays["input_ids"][0]) == args.seq_len
    names = list(cands)
    load_before = os.getloadavg()
    r = interleaved([(lambda c=cands[n]: c.predict([text])) for n in names], args.rounds, 10, warmup_runs=5,
                    round_seconds=0.5)
    load_after = os.getloadavg()
    cpu, wall = relative_costs(r.cpu_ms), relative_costs(r.wall_ms)
    i0 = names.index("ort fp32 fused")
    for i, n in enumerate(names):
        rows[n]["cpu_ms"], rows[n]["wall_p50_ms"] = round(cpu[i], 2), round(wall[i], 2)
        rows[n]["cpu_speedup_vs_ort_fp32"] = round(cpu[i0] / cpu[i], 2)
        rows[n]["wall_speedup_vs_ort_fp32"] = round(wall[i0] / wall[i], 2)
        rows[n]["meets_target"] = (rows[n]["test"]["agreement"] >= 0.99 and rows[n]["cpu_speedup_vs_ort_fp32"] >= 1.8
                                   and rows[n]["wall_speedup_vs_ort_fp32"] >= 1.8)
        print(f"{n:60s} cpu {cpu[i]:7.2f} ms x{cpu[i0] / cpu[i]:.2f}  wall {wall[i]:7.2f} ms x{wall[i0] / wall[i]:.2f}")
    import nncf
    import onnxruntime
    import openvino

    doc = {"fixture": str(folder), "n_validation": len(val), "n_test": len(test), "threads": THREADS,
           "seq_len": args.seq_len, "batch": 1, "rounds": args.rounds, "loadavg_before": load_before,
           "loadavg_after": load_after, "versions": {"onnxruntime": onnxruntime.__version__,
                                                      "openvino": openvino.__version__, "nncf": nncf.__version__},
           "candidates": rows, "ort_margin_sensitivity_sq0.8": sensitivity}
    out = OUT if not args.only else OUT.with_name(f"weak_head-partial{'' if args.seq_len == SEQ_LEN else args.seq_len}.json")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(out)


if __name__ == "__main__":
    main()
