"""The systems a cell times: Multiverse (the bundle), vanilla transformers, optimum-onnx's ORTModel, and
OpenVINO + NNCF int8 (``openvino_system``; the ``peers`` extra).

Every system is a callable ``system(inputs)`` that runs the *whole* pipeline on one batch
(pre-processing, prediction, post-processing) and returns the task results. Construct systems
only inside a pinned benchmark process (see ``runner``): the constructors import torch or
onnxruntime and size their thread pools to ``threads``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import BenchmarkError  # re-exported: callers import it from here too
from ..tasks import get_task
from .cache import checkpoint_hash
from .texts import accuracy_texts  # noqa: F401 (re-exported: runner, peers and tests import it from here)

SYSTEMS = ("multiverse", "transformers", "optimum", "openvino")
BASELINES = ("transformers", "optimum", "openvino")

OPTIMUM_FILE = "model_optimized_quantized.onnx"


class MultiverseSystem:
    """The bundle through :class:`multiverse.inference.Predictor` (what ``multiverse serve`` runs).

    Keeps the per-step times of every call (``tokenization_ms``, ``inference_ms``,
    ``postprocess_ms``) so a cell can report where its time goes.
    """

    name = "multiverse"

    def __init__(self, bundle: str | Path, threads: int):
        from ..inference import Predictor

        self.predictor = Predictor.from_bundle(bundle, threads=threads)
        self.steps: list[tuple[float, float, float]] = []

    def __call__(self, inputs: Sequence) -> list:
        p = self.predictor.predict(list(inputs))
        self.steps.append((p.tokenization_ms, p.inference_ms, p.postprocess_ms))
        return p.results

    def breakdown(self, last: int) -> dict | None:
        """Mean ms of each pipeline step over the last ``last`` calls."""
        rows = self.steps[-last:] if last else []
        if not rows:
            return None
        n = len(rows)
        return {"tokenization_ms": round(sum(r[0] for r in rows) / n, 4),
                "inference_ms": round(sum(r[1] for r in rows) / n, 4),
                "postprocess_ms": round(sum(r[2] for r in rows) / n, 4)}


def _call_kwargs(task: str, batch_size: int) -> dict:
    kw: dict[str, Any] = {"batch_size": batch_size}
    if get_task(task).sentence_embeddings:
        kw["return_tensors"] = True  # token states, mean-pooled below as sentence-transformers does
    return kw


def _as_pipeline_inputs(task: str, inputs: Sequence) -> list:
    if get_task(task).requires_pairs:
        return [{"text": q, "text_pair": p} for q, p in inputs]
    return list(inputs)


def _mean_pool(outputs: list) -> list:
    """Feature-extraction pipeline output (one [1, tokens, hidden] tensor per text) → mean-pooled, L2-normalised
    vectors: the post-processing a user adds to turn the vanilla pipeline into sentence embeddings.

    Exact only when a call's texts have equal lengths (the benchmark cells) or one text per call: the
    pipeline does not return the attention mask of batched, padded texts."""
    vecs = []
    for t in outputs:
        v = t[0].mean(dim=0)
        vecs.append((v / v.norm().clamp_min(1e-12)).tolist())
    return vecs


class _HFPipelineSystem:
    task: str

    def __call__(self, inputs: Sequence) -> list:
        out = self.pipe(_as_pipeline_inputs(self.task, inputs), **_call_kwargs(self.task, len(inputs)))
        if get_task(self.task).sentence_embeddings:
            return _mean_pool(out)
        return out

    def breakdown(self, last: int) -> dict | None:
        """None: a pipeline does not expose its per-step times."""
        return None


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (parallel work has started in this process)
        pass


class TransformersSystem(_HFPipelineSystem):
    """Vanilla ``transformers.pipeline`` on the original PyTorch checkpoint, fp32, ``torch.set_num_threads(threads)``."""

    name = "transformers"

    def __init__(self, checkpoint: str | Path, task: str, threads: int):
        _set_torch_threads(threads)
        from transformers import pipeline

        self.task = task
        self.pipe = pipeline(get_task(task).pipeline_task, model=str(checkpoint), tokenizer=str(checkpoint),
                             device="cpu", **get_task(task).pipeline_kwargs)


class OptimumSystem(_HFPipelineSystem):
    """optimum-onnx's ``ORTModelFor<Task>`` (O2-optimised, avx512_vnni dynamic int8, see :func:`build_optimum`)
    through ``optimum.onnxruntime.pipeline``, with ``intra_op_num_threads=threads`` and otherwise default
    session options."""

    name = "optimum"

    def __init__(self, model_dir: str | Path, checkpoint: str | Path, task: str, threads: int):
        _set_torch_threads(threads)  # optimum imports torch; keep its pool inside the budget too
        import onnxruntime as ort
        import optimum.onnxruntime as oo
        from transformers import AutoTokenizer

        self.task = task
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        model = getattr(oo, get_task(task).ort_model_class).from_pretrained(str(model_dir), file_name=OPTIMUM_FILE, session_options=so)
        tok = AutoTokenizer.from_pretrained(str(checkpoint))
        self.pipe = oo.pipeline(get_task(task).pipeline_task, model=model, tokenizer=tok, **get_task(task).pipeline_kwargs)


def make_system(name: str, *, threads: int, bundle: str | Path | None, checkpoint: str | Path | None, task: str,
                optimum_dir: str | Path | None = None, openvino_dir: str | Path | None = None) -> Callable:
    """Build system ``name`` (one of :data:`SYSTEMS`) with ``threads`` intra-op threads.

    ``openvino`` converts and quantizes the checkpoint on first use (cached in ``openvino_dir``, default
    ``openvino_system.default_dir``; see ``openvino_system.build_openvino``) and runs at the inference precision
    ``bundle``'s target CPU would run it (``openvino_system.target_precision``: f32 for a target without bf16;
    without a ``bundle``, the plugin's default).
    Raises BenchmarkError when a baseline lacks what it needs (the original checkpoint, the optimum model),
    MissingExtraError for ``openvino`` without the ``peers`` extra.
    """
    if name == "multiverse":
        return MultiverseSystem(bundle, threads)
    if checkpoint is None or not Path(checkpoint).is_dir():
        raise BenchmarkError(f"The {name} baseline needs the original checkpoint folder, and {checkpoint!r} is not one; "
                             "pass --checkpoint PATH or use --baseline none.")
    if name == "transformers":
        return TransformersSystem(checkpoint, task, threads)
    if name == "optimum":
        if optimum_dir is None:
            raise BenchmarkError("The optimum baseline was not built; see build_optimum().")
        return OptimumSystem(optimum_dir, checkpoint, task, threads)
    if name == "openvino":
        from .openvino_system import OpenVinoSystem, build_openvino, bundle_precision, default_dir

        built = build_openvino(checkpoint, task, openvino_dir or default_dir(checkpoint, optimum_dir), threads=threads)
        return OpenVinoSystem(Path(built["path"]).parent, checkpoint, task, threads,
                              inference_precision=None if bundle is None else bundle_precision(bundle))
    raise BenchmarkError(f"Unknown system {name!r}; choose from {', '.join(SYSTEMS)}.")


def build_optimum(checkpoint: str | Path, task: str, out_dir: str | Path) -> dict:
    """optimum-onnx's documented CPU recipe: export with ``ORTModelFor<Task>.from_pretrained(export=True)``,
    ``ORTOptimizer`` with ``AutoOptimizationConfig.O2()``, then ``ORTQuantizer`` with
    ``AutoQuantizationConfig.avx512_vnni(is_static=False)`` (its defaults otherwise).

    Writes ``out_dir/model_optimized_quantized.onnx`` plus the tokenizer/config files and returns
    ``{"path", "recipe", "workaround", "seconds", "cached"}``; reuses an earlier build of the same checkpoint.
    With onnxruntime ≥ 1.2x the quantizer cannot type the outputs of the fused ``com.microsoft`` ops and
    raises; then the same quantization is re-run with ``extra_options={"DefaultTensorType": FLOAT}``
    (recorded in ``workaround``). Raises BenchmarkError if the build still fails.
    """
    checkpoint, out = Path(checkpoint), Path(out_dir)
    stamp = out / "multiverse-benchmark.json"
    key = checkpoint_hash(checkpoint)
    if stamp.is_file() and (out / OPTIMUM_FILE).is_file():
        info = json.loads(stamp.read_text())
        if info.get("checkpoint_hash") == key:
            return {**info, "cached": True}
    t0 = time.perf_counter()
    try:
        import optimum.onnxruntime as oo
        from optimum.onnxruntime import ORTOptimizer, ORTQuantizer
        from optimum.onnxruntime import quantization as oq
        from optimum.onnxruntime.configuration import AutoOptimizationConfig, AutoQuantizationConfig

        shutil.rmtree(out, ignore_errors=True)
        work = out.parent / (out.name + ".tmp")
        shutil.rmtree(work, ignore_errors=True)
        model = getattr(oo, get_task(task).ort_model_class).from_pretrained(str(checkpoint), export=True)
        ORTOptimizer.from_pretrained(model).optimize(AutoOptimizationConfig.O2(), save_dir=work)
        qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False)
        quantizer = ORTQuantizer.from_pretrained(work, file_name="model_optimized.onnx")
        workaround = None
        try:
            quantizer.quantize(qconfig, save_dir=out)
        except RuntimeError as exc:
            if "DefaultTensorType" not in str(exc):
                raise
            workaround = ("optimum-onnx's ORTQuantizer failed on the O2 graph (shape inference cannot type the "
                          "outputs of fused com.microsoft ops); re-ran the same config with "
                          "extra_options DefaultTensorType=FLOAT")
            import onnx

            original = oq.ONNXQuantizer

            class _Typed(original):  # type: ignore[misc, valid-type]
                def __init__(self, *args, **kwargs):
                    kwargs.setdefault("extra_options", {})["DefaultTensorType"] = onnx.TensorProto.FLOAT
                    super().__init__(*args, **kwargs)

            oq.ONNXQuantizer = _Typed
            try:
                ORTQuantizer.from_pretrained(work, file_name="model_optimized.onnx").quantize(qconfig, save_dir=out)
            finally:
                oq.ONNXQuantizer = original
        for f in work.iterdir():
            if f.is_file() and not f.name.endswith(".onnx") and not (out / f.name).exists():
                shutil.copy(f, out / f.name)
        shutil.rmtree(work, ignore_errors=True)
    except Exception as exc:  # any optimum/ORT failure becomes one clear error
        raise BenchmarkError(f"Building the optimum-onnx baseline failed: {type(exc).__name__}: {exc}. "
                             "Run without --baseline optimum.") from exc
    info = {"path": str(out / OPTIMUM_FILE), "checkpoint_hash": key,
            "recipe": "ORTOptimizer AutoOptimizationConfig.O2() + ORTQuantizer AutoQuantizationConfig.avx512_vnni(is_static=False)",
            "workaround": workaround, "seconds": round(time.perf_counter() - t0, 1)}
    stamp.write_text(json.dumps(info, indent=2))
    return {**info, "cached": False}


def agreement(task: str, reference: list, candidate: list) -> dict:
    """How close a system's results are to the PyTorch model's on the same inputs: the task's own
    ``agreement`` (text-classification: ``label_agreement``, ``max_abs_score_diff``; feature-extraction:
    ``mean_cosine``, ``min_cosine``; ranking: ``max_abs_score_diff``; token-classification:
    ``entity_agreement``)."""
    return get_task(task).agreement(reference, candidate)


def compare_accuracy(systems: dict[str, Callable], task: str, texts: Sequence, batch_size: int = 8) -> dict:
    """Run every system on ``texts`` (in batches) and compare each with ``systems["transformers"]`` (the
    PyTorch reference) via :func:`agreement`. Returns ``{system: metrics}`` (plus ``inference_precision`` for a
    system that records it, OpenVINO); ``{}`` without the reference."""
    if "transformers" not in systems:
        return {}
    if get_task(task).sentence_embeddings:
        # The vanilla feature-extraction pipeline returns padded token states for batched texts of mixed
        # lengths (and no mask); one text per call keeps the mean pooling of the baselines exact.
        batch_size = 1
    outputs = {}
    for name, system in systems.items():
        res: list = []
        for i in range(0, len(texts), batch_size):
            res.extend(system(list(texts[i:i + batch_size])))
        outputs[name] = res
    ref = outputs["transformers"]
    return {name: {**agreement(task, ref, out), **({"inference_precision": systems[name].inference_precision}
                                                   if getattr(systems[name], "inference_precision", None) else {})}
            for name, out in outputs.items() if name != "transformers"}
