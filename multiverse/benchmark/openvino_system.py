"""The OpenVINO + NNCF baseline: what an OpenVINO user does with a Hugging Face encoder, run end to end.

Build (:func:`build_openvino`, cached per checkpoint): ``openvino.convert_model`` on the PyTorch model
(OpenVINO's documented route for PyTorch models; dynamic batch × sequence shapes), then NNCF post-training
static int8 (``nncf.quantize(..., model_type=nncf.ModelType.TRANSFORMER, subset_size=n)``, NNCF's defaults
otherwise: the ``PERFORMANCE`` preset, symmetric int8 weights and activations), calibrated on built-in texts
that the benchmark's accuracy comparison does not score, and ``openvino.save_model`` as IR.

Run (:class:`OpenVinoSystem`): the same ``tokenizers`` tokenizer and the same task post-processing as
Multiverse (``multiverse.tasks``), one ``InferRequest`` per batch, on ``core.compile_model(model, "CPU",
{"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})``. Sources: OpenVINO "Convert a PyTorch
model" and NNCF "Post-training quantization" guides (openvino 2026.4, nncf 3.4).
Needs the ``peers`` extra (``openvino``, ``nncf``); without it :class:`multiverse.errors.MissingExtraError`.
"""

from __future__ import annotations

import inspect
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import BenchmarkError, MissingExtraError
from ..extras import missing_distributions

IR_FILE = "openvino_model.xml"
#: Calibration texts (``nncf.quantize``'s default ``subset_size`` is 300): 48 built-in inputs after the 96 that the
#: accuracy step scores still fit in the 150 (query, passage) pairs of the ranking set.
CALIBRATION_SIZE = 48
#: The accuracy comparison scores the first 96 built-in inputs (``texts.accuracy_texts``); calibrate after them.
CALIBRATION_SKIP = 96
PEERS_DISTRIBUTIONS = ("openvino", "nncf")
PEERS_HINT = 'pip install "multiverse[peers]"'


def require_openvino(what: str = "The openvino baseline") -> None:
    """Raise MissingExtraError (exit code 2) naming the missing distributions of the ``peers`` extra and the
    install command. Imports nothing."""
    missing = missing_distributions(PEERS_DISTRIBUTIONS)
    if missing:
        raise MissingExtraError(f"{what} needs OpenVINO and NNCF ({', '.join(missing)} not installed): {PEERS_HINT}")


def default_dir(checkpoint: str | Path, optimum_dir: str | Path | None = None) -> Path:
    """Where the OpenVINO model of ``checkpoint`` is cached: beside the optimum baseline when there is one
    (the benchmark's work folder), else ``~/.cache/multiverse/benchmark/openvino-<checkpoint name>``."""
    root = Path(optimum_dir).parent if optimum_dir else Path.home() / ".cache" / "multiverse" / "benchmark"
    return root / f"openvino-{Path(checkpoint).name}"


def calibration_inputs(task: str, n: int = CALIBRATION_SIZE, skip: int = CALIBRATION_SKIP) -> list:
    """``n`` built-in inputs (texts; ranking: (query, passage) pairs) after the first ``skip`` ones, which the
    accuracy comparison scores; the last ``n`` when there are fewer than ``skip + n``."""
    from .texts import accuracy_texts

    items = accuracy_texts(task, limit=10**9)
    return items[skip:skip + n] if len(items) >= skip + n else items[-n:]


def _model_inputs(model) -> list[str]:
    """The tokenizer outputs ``model.forward`` takes, in the order of its parameters (the converted model's order):
    ``input_ids``, ``attention_mask`` and, where the model has them, ``token_type_ids``."""
    params = list(inspect.signature(model.forward).parameters)
    return [p for p in params if p in ("input_ids", "attention_mask", "token_type_ids")]


def build_openvino(checkpoint: str | Path, task: str, out_dir: str | Path, *, subset_size: int = CALIBRATION_SIZE,
                   threads: int | None = None) -> dict:
    """Convert ``checkpoint`` (a saved Hugging Face model folder) with OpenVINO, quantize it with NNCF and save
    ``out_dir/openvino_model.xml`` (+ ``.bin``); reuses an earlier build of the same checkpoint.

    Returns ``{"path", "recipe", "calibration", "inputs", "seconds", "convert_s", "quantize_s", "versions",
    "cached"}`` (times in s, wall clock). ``threads`` caps torch's pool during conversion.
    Raises MissingExtraError without openvino/nncf, BenchmarkError if conversion or quantization fails.
    """
    from .cache import checkpoint_hash

    require_openvino()
    checkpoint, out = Path(checkpoint), Path(out_dir)
    stamp = out / "multiverse-benchmark.json"
    key = checkpoint_hash(checkpoint)
    if stamp.is_file() and (out / IR_FILE).is_file():
        info = json.loads(stamp.read_text())
        if info.get("checkpoint_hash") == key and info.get("subset_size") == subset_size:
            return {**info, "cached": True}
    t0 = time.perf_counter()
    work = out.parent / f"{out.name}.tmp-{time.time_ns()}"
    try:
        import torch
        import transformers

        from ..extras import import_openvino
        from ..ovquant import nncf_output_to_stderr, no_telemetry

        ov = import_openvino()

        with no_telemetry():  # NNCF's first import in the process: no telemetry (see no_telemetry)
            import nncf
        from ..tasks import TextTokenizer, get_task

        if threads:
            torch.set_num_threads(threads)
        model = getattr(transformers, get_task(task).reference_class).from_pretrained(
            str(checkpoint), dtype=torch.float32).eval()
        tok = TextTokenizer(checkpoint)
        names = _model_inputs(model)
        sample = tok.encode([("A short example.", "Another one.") if get_task(task).requires_pairs
                             else "A short example sentence for tracing."], names).arrays
        with torch.no_grad(), no_telemetry():
            ov_model = ov.convert_model(model, example_input={k: torch.from_numpy(sample[k]) for k in names})
        if len(ov_model.inputs) != len(names):
            raise BenchmarkError(f"the converted model has {len(ov_model.inputs)} inputs, the tokenizer gives {names}")
        for port, name in zip(ov_model.inputs, names):  # the tracer may name an input after an internal tensor
            port.get_tensor().set_names({name})
        t1 = time.perf_counter()
        items = calibration_inputs(task, subset_size)
        data = [tok.encode([x], names).arrays for x in items]
        with nncf_output_to_stderr(), no_telemetry():  # NNCF's progress bars and log lines go, stdout keeps the path
            quantized = nncf.quantize(ov_model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(data))
        t2 = time.perf_counter()
        work.mkdir(parents=True)
        ov.save_model(quantized, str(work / IR_FILE), compress_to_fp16=False)  # int8 stays int8, the rest fp32
        info = {"path": str(out / IR_FILE), "checkpoint_hash": key, "subset_size": subset_size,
                "recipe": "openvino.convert_model(PyTorch model) + nncf.quantize(model_type=TRANSFORMER, "
                          f"subset_size={len(data)}) (PERFORMANCE preset: static symmetric int8)",
                "calibration": f"{len(data)} built-in texts, not those scored by the accuracy comparison",
                "inputs": names, "convert_s": round(t1 - t0, 1), "quantize_s": round(t2 - t1, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "versions": {"openvino": ov.__version__, "nncf": nncf.__version__}}
        (work / "multiverse-benchmark.json").write_text(json.dumps(info, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        work.rename(out)  # atomic: a concurrent reader sees the old build or the whole new one
    except MissingExtraError:
        raise
    except Exception as exc:  # any conversion/NNCF failure becomes one clear error
        raise BenchmarkError(f"Building the OpenVINO baseline failed: {type(exc).__name__}: {exc}. "
                             "Run without --baseline openvino.") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**info, "cached": False}


def target_precision(required_flags: Sequence[str], arch: str = "x86_64") -> str | None:
    """The ``INFERENCE_PRECISION_HINT`` that runs OpenVINO the way it would run on a target CPU with
    ``required_flags`` (a bundle's target): ``f32`` for an x86-64 target without a bf16 path
    (``targets.has_bf16_path``; the plugin then has none, e.g. Ice Lake), else None (the plugin's default: bf16
    for the non-int8 layers where the CPU has it; on Arm, the plugin's own default too).

    Why: on a host with AVX-512 BF16 the plugin runs every non-int8 layer in bf16 by default, which the
    target's own CPUs cannot; a peer timed that way is not the peer the target's users would run (numbers
    for a target are taken with that target's ISA where a cap exists)."""
    from ..targets import has_bf16_path

    return None if has_bf16_path(arch, required_flags) else "f32"


def bundle_precision(bundle) -> str | None:
    """:func:`target_precision` of the target ``bundle`` (a loaded ``Bundle`` or a bundle folder) was built for.
    Raises BundleError when a folder is not a bundle."""
    from ..bundle import load

    target = (bundle if hasattr(bundle, "spec") else load(bundle, verify=False)).spec.target
    return target_precision(target.required_flags, target.arch)


class OpenVinoSystem:
    """The NNCF int8 IR on OpenVINO's CPU plugin, end to end: ``multiverse.tasks`` tokenization → one
    ``InferRequest.infer`` on the whole batch (right-padded) → the task's post-processing.

    Args:
        model_dir: folder holding ``openvino_model.xml`` (from :func:`build_openvino`).
        checkpoint: the original checkpoint (tokenizer, config and pooling files).
        threads: ``INFERENCE_NUM_THREADS``; hint: ``PERFORMANCE_HINT`` (``LATENCY`` or ``THROUGHPUT``).
        inference_precision: ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``); None = the plugin's default, bf16
            where the CPU has it (see :func:`target_precision` for comparing against a bundle's target).
    Keeps per-step times (ms) like ``MultiverseSystem``; ``inference_precision`` is what the CPU plugin chose.
    """

    name = "openvino"

    def __init__(self, model_dir: str | Path, checkpoint: str | Path, task: str, threads: int, hint: str = "LATENCY",
                 inference_precision: str | None = None):
        require_openvino()
        from ..extras import import_openvino

        ov = import_openvino()

        from ..tasks import TextTokenizer, make_handler

        checkpoint = Path(checkpoint)
        self.core = ov.Core()
        model = self.core.read_model(str(Path(model_dir) / IR_FILE))
        props = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": hint}
        if inference_precision:
            props["INFERENCE_PRECISION_HINT"] = inference_precision
        self.compiled = self.core.compile_model(model, "CPU", props)
        self.request = self.compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self.compiled.inputs]
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
        self.tokenizer = TextTokenizer(checkpoint)
        self.handler = make_handler(task, checkpoint, config)
        outputs = [o for o in self.compiled.outputs if self.handler.output in o.get_names()]
        self.output = outputs[0] if outputs else self.compiled.outputs[0]
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # bf16 where the CPU has it, else f32
        self.inference_precision = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        self.steps: list[tuple[float, float, float]] = []

    def encode(self, inputs: Sequence):
        """Tokenized, right-padded batch (``multiverse.tasks.Encoded``) for this model's inputs."""
        return self.tokenizer.encode(list(inputs), self.input_names)

    def __call__(self, inputs: Sequence) -> list:
        t0 = time.perf_counter()
        enc = self.encode(inputs)
        t1 = time.perf_counter()
        out = self.request.infer(enc.arrays)[self.output]
        t2 = time.perf_counter()
        results = self.handler.postprocess(out, enc, {})
        t3 = time.perf_counter()
        self.steps.append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
        return results

    def breakdown(self, last: int) -> dict | None:
        """Mean ms of each pipeline step over the last ``last`` calls."""
        rows = self.steps[-last:] if last else []
        if not rows:
            return None
        n = len(rows)
        return {k: round(sum(r[i] for r in rows) / n, 4)
                for i, k in enumerate(("tokenization_ms", "inference_ms", "postprocess_ms"))}
