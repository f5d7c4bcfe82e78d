"""Stage 4: dynamic int8 quantization with ``onnxruntime.quantization.quantize_dynamic``.

Weights are quantized offline (int8 or uint8, per-channel or per-tensor, optionally
``reduce_range`` to 7 bits); activations are quantized to uint8 at run time. The target
recipe chooses what is correct for its CPU (u8u8 without VNNI; see ``targets.py``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .errors import QuantizationError
from .export import OnnxModel
from .targets import QuantConfig


def quantize(model: OnnxModel, out: str | Path, config: QuantConfig) -> OnnxModel:
    """Quantize ``model`` (fused fp32) into ``out/model.onnx``.

    ``DefaultTensorType=FLOAT`` lets shape inference type the outputs of ``com.microsoft``
    fused ops (ONNX shape inference cannot type them, and ``quantize_dynamic`` then fails on
fused graphs; seen with ORT 1.32 and optimum-onnx's ORTQuantizer alike);
    ``MatMulConstBOnly`` quantizes only MatMuls with constant weights (not attention's Q·Kᵀ).

    Returns a new OnnxModel with stage ``int8`` and ``quantization`` = the config plus the
    count of quantized ops. Raises QuantizationError when ORT fails or quantizes nothing.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = out / "model.onnx"
    external = model.needs_external_data  # a > 2 GB input: the output may not fit one protobuf either
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a pre-processing hint meant for static image models on the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(
                str(model.path), str(dest),
                op_types_to_quantize=list(config.op_types),
                per_channel=config.per_channel,
                reduce_range=config.reduce_range,
                weight_type=QuantType.QInt8 if config.weight_type == "int8" else QuantType.QUInt8,
                nodes_to_exclude=list(config.nodes_to_exclude),
                use_external_data_format=external,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
            )
    except Exception as exc:
        raise QuantizationError(
            f"onnxruntime.quantization failed on {model.path} with {config.label()}: {exc}. "
            "Try --precision fp32 to ship the fused fp32 graph, or report the model."
        ) from exc
    finally:
        root.setLevel(level)
    if external:  # int8 weights are ~4x smaller: ship one file when it fits (fewer files, same graph)
        _single_file_if_it_fits(dest)
    ops = quantized_op_counts(dest)
    if not ops:
        raise QuantizationError(f"quantize_dynamic quantized no op of {list(config.op_types)} in {model.path}.")
    return replace(model, path=dest, stage="int8", quantization={**config.model_dump(mode="json"), "quantized_ops": ops})


def _single_file_if_it_fits(path: Path) -> None:
    """Re-save a graph written with external data as one file when it is under ``EXTERNAL_DATA_BYTES``."""
    import onnx

    from .export import EXTERNAL_DATA_BYTES, proto_bytes, save_graph
    from .graphfiles import external_files

    stale = external_files(path)
    if not stale:
        return
    proto = onnx.load(str(path))
    if proto_bytes(proto) > EXTERNAL_DATA_BYTES:
        return
    save_graph(proto, path)
    for rel in stale:
        (path.parent / rel).unlink(missing_ok=True)


_QUANT_OPS = {"MatMulInteger", "QAttention", "QEmbedLayerNormalization", "DynamicQuantizeMatMul",
              "QGemm", "QLinearMatMul"}


def quantized_op_counts(path: str | Path) -> dict[str, int]:
    """Counts of integer ops in a graph (``MatMulInteger``, ``QAttention``, ...); a Gather on an int8 table counts as ``Gather(int8)``."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node if n.op_type in _QUANT_OPS)
    int8_inits = {i.name for i in graph.initializer if i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)}
    counts.update("Gather(int8)" for n in graph.node if n.op_type == "Gather" and n.input and n.input[0] in int8_inits)
    return dict(sorted(counts.items()))


_IR_BYTES = {"f64": 8, "i64": 8, "u64": 8, "f32": 4, "i32": 4, "u32": 4, "f16": 2, "bf16": 2, "i16": 2, "u16": 2,
             "i8": 1, "u8": 1, "boolean": 1}


def int8_weight_fraction(path: str | Path) -> float:
    """Fraction of weight elements (initializers; an OpenVINO IR's ``Const`` layers) stored as int8/uint8, in [0, 1]."""
    from .graphfiles import external_tensors, is_openvino_ir

    if is_openvino_ir(path):
        sizes = [(t.element_type, t.length // _IR_BYTES[t.element_type])
                 for t in external_tensors(path) if t.element_type in _IR_BYTES and t.length]
        total = sum(n for _, n in sizes)
        return sum(n for kind, n in sizes if kind in ("i8", "u8")) / total if total else 0.0
    import numpy as np
    import onnx

    graph = onnx.load(str(path)).graph
    total = q = 0
    for init in graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        total += n
        if init.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            q += n
    return q / total if total else 0.0
