"""OpenVINO's PyTorch frontend for the tuner's OpenVINO candidates: the ``transformers`` model converted by
``openvino.convert_model`` (the route OpenVINO documents for PyTorch models and its own benchmark peer takes),
with the ONNX export's input and output names, saved as an fp32 IR and checked against PyTorch.

Why not only the ONNX export (``multiverse.ovquant.convert``)? Its ONNX-frontend graph keeps each attention
block's scale as a run-time computation from the input shape (``ShapeOf``/``Sqrt``/``Divide``) and an explicit key
``Transpose``; after the CPU plugin's own fusions it runs two attention kernels (``Subgraph``) and a ``Transpose``
per layer where the PyTorch frontend's graph runs one of each (``compiled.get_runtime_model()``, f32 inference).
Node names differ: ``__module.encoder.layer.3.output.dense/aten::linear/MatMul`` here,
``/encoder/layer.3/output/dense/MatMul`` there (``ovtuning.LAYER`` matches both). Sources: OpenVINO "Convert a
PyTorch model" guide (openvino 2026.4).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import QuantizationError
from .export import OnnxModel, _quiet_loggers
from .ovquant import IR_FILE, no_telemetry, require_ov

#: The conversion check's batches and their longest row: shapes are dynamic in both graphs, so what the check
#: must see is padded rows next to longer ones; measured on the DistilBERT-base shape at load 15, all six probe
#: batches up to 512 tokens took 7.6 s, at most 128 tokens 3.2 s.
PROBE_BATCHES = 2
PROBE_TOKENS = 128


def convert_pytorch(checkpoint: str | Path, task: str, exported: OnnxModel):
    """``openvino.convert_model`` of the ``transformers`` model of ``checkpoint`` (OpenVINO's PyTorch frontend, the
    route OpenVINO documents for PyTorch models), with the inputs, input order and outputs of ``exported`` (the fp32
    ONNX export): other outputs (``pooler_output``) are dropped. Returns an ``openvino.Model`` (dynamic batch ×
    sequence) tagged ``rt_info["multiverse"]["frontend"] = "pytorch"``.

    Measured, NNCF int8 (static; MiniLM also dynamic g32), f32 inference, 2 threads, batch 1, end to end, against
    the ONNX frontend's IR, medians of 6 interleaved runs on a loaded host (``benchmarks/results/ov_frontend.json``):
    CPU time per call 0.91-0.96x at 8-16 tokens, 0.93-0.98x at 64-256, the same fidelity (DistilBERT-base shape
    label agreement 1.0 both; all-MiniLM-L6-v2 dynamic mean / min cosine 0.99903 / 0.99292 vs 0.99902 / 0.99292).
    Cost: 8.6-17 s per build (load, trace, save, check) where the ONNX frontend took 2-5 s per candidate.

    The example input is a right-padded batch of two texts, so that the traced graph takes the attention-mask
    path for padded rows. Raises MissingExtraError without openvino, QuantizationError when the model does not
    load, trace or convert, or lacks an input/output of ``exported``.
    """
    require_ov()
    import onnx
    import openvino as ov
    import torch
    import transformers

    from .tasks import TextTokenizer, get_task

    graph = onnx.load(str(exported.path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    pair = get_task(task).requires_pairs
    items = [("A query.", "A short passage for tracing."), ("Another one.", "x")] if pair else [
        "A short example sentence for tracing the model.", "Padded."]
    try:
        with _quiet_loggers():
            model = getattr(transformers, get_task(task).reference_class).from_pretrained(
                str(checkpoint), dtype=torch.float32).eval()
        sample = TextTokenizer(exported.model_dir).encode(items, inputs).arrays
        with torch.no_grad(), _quiet_loggers():  # the tracer's TracerWarnings, transformers' config notes
            with no_telemetry():
                converted = ov.convert_model(model, example_input={k: torch.from_numpy(sample[k]) for k in inputs})
        in_ports = [_port(converted.inputs, name) for name in inputs]
        out_ports = [_port(converted.outputs, name) for name in outputs]
        for port, name in zip(in_ports + out_ports, inputs + outputs):
            port.get_tensor().set_names({name})  # the tracer may add internal tensor names ("24")
        out = ov.Model([p.get_node() for p in out_ports], [p.get_node() for p in in_ports], "pytorch")
    except Exception as exc:
        raise QuantizationError(f"OpenVINO's PyTorch frontend could not convert {checkpoint} "
                                f"({type(exc).__name__}: {exc}); the ONNX export can be converted instead.") from exc
    out.set_rt_info("pytorch", ["multiverse", "frontend"])
    return out


def pytorch_ir(checkpoint: str | Path, task: str, exported: OnnxModel, out_dir: str | Path,
               tolerance: float = 1e-4) -> OnnxModel:
    """:func:`convert_pytorch` saved as an fp32 IR ``out_dir/model.xml`` and checked: on the first ``PROBE_BATCHES``
    of ``export.probe_batches`` (4 built-in texts each, right-padded, cut at ``PROBE_TOKENS``), OpenVINO's outputs
    (f32 inference) must agree to ``tolerance`` over real tokens with PyTorch's (``export.reference_batches``: the
    export check's rows when it ran on the same checkpoint in this process, so nothing is run again; measured, a
    DistilBERT-base shape: the ONNX Runtime session this check used to open on the export took 0.3-1 s).
    Returns ``exported`` with ``path`` the IR (what :func:`quantize_ov` and :func:`node_names` take).
    Raises QuantizationError when the conversion fails or the outputs differ."""
    require_ov()  # imports openvino without its telemetry (extras.import_openvino)
    import openvino as ov

    from .export import probe_batches, reference_batches
    from .hub import from_folder
    from .tasks import TextTokenizer

    model = convert_pytorch(checkpoint, task, exported)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / IR_FILE), compress_to_fp16=False)
    compiled = ov.Core().compile_model(str(out / IR_FILE), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "ENABLE_CPU_PINNING": "NO"})
    names = [p.get_any_name() for p in compiled.inputs]
    tok = TextTokenizer(exported.model_dir, max_length=min(TextTokenizer(exported.model_dir).max_length, PROBE_TOKENS))
    batches = probe_batches(task, PROBE_TOKENS)[:PROBE_BATCHES]
    encs = [tok.encode(batch, names) for batch in batches]
    encode = lambda items: tok.encode(items, names)  # noqa: E731
    wants = reference_batches(from_folder(Path(checkpoint), task), batches, encs, encode)
    worst = 0.0
    for enc, want in zip(encs, wants):
        got = compiled.create_infer_request().infer(enc.arrays)[0]
        diff = np.abs(got - want)
        if diff.ndim == 3:  # [batch, seq, hidden]: real tokens only
            diff = diff * enc.arrays["attention_mask"][..., None]
        worst = max(worst, float(diff.max()))
    if worst > tolerance:
        raise QuantizationError(f"OpenVINO's PyTorch-frontend graph of {checkpoint} differs from PyTorch by "
                                f"{worst:.2e} (> {tolerance:g}) on padded batches; the ONNX export is converted "
                                "instead.")
    return replace(exported, path=out / IR_FILE)


def _port(ports, name: str):
    """The port among ``ports`` that carries tensor name ``name``; KeyError names what there is."""
    for port in ports:
        if name in port.get_names():
            return port
    raise KeyError(f"no port named {name!r} (got {[sorted(p.get_names()) for p in ports]})")
