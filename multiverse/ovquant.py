"""OpenVINO int8 candidates: the exported fp32 ONNX graph → OpenVINO IR → NNCF post-training static int8.

:func:`convert` reads the *unfused* fp32 ONNX export (``multiverse.export.export``; OpenVINO's ONNX frontend does not
read ONNX Runtime's ``com.microsoft`` fused ops) with ``openvino.convert_model``: inputs and outputs keep their ONNX
names (``input_ids``, ``attention_mask``, ``token_type_ids`` → ``last_hidden_state`` / ``logits``) and OpenVINO
nodes keep the ONNX node names, so ``/encoder/layer.3/output/dense/MatMul`` names the same layer here as in
``QuantConfig.nodes_to_exclude``. The frontend fuses each attention block into one ``ScaledDotProductAttention``,
which NNCF leaves in floating point; what int8 can touch are the weight ``MatMul`` nodes (:func:`node_names`,
six per BERT layer: ``attention/self/{query,key,value}``, ``attention/output/dense``, ``intermediate/dense``,
``output/dense``; DistilBERT: ``attention/{q,k,v,out}_lin``, ``ffn/{lin1,lin2}``; plus classifier heads).

:func:`quantize_ov` runs ``nncf.quantize(model_type=TRANSFORMER)`` with the knobs of :class:`OvInt8Config`
(preset, SmoothQuant α, bias correction, nodes kept in fp32 via ``nncf.IgnoredScope``) and saves the IR with
``openvino.save_model(compress_to_fp16=False)``: int8 weights stay int8, everything else fp32. Sources: NNCF
"Post-training quantization" guide and ``nncf.quantize`` API reference (nncf 3.4, openvino 2026.4).
Needs the ``peers`` extra (``openvino``, ``nncf``); without it :class:`multiverse.errors.MissingExtraError`.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import QuantizationError
from .extras import import_openvino, no_telemetry  # noqa: F401 (no_telemetry re-exported)
from .export import OnnxModel

IR_FILE = "model.xml"
#: NNCF's SmoothQuant α for MatMul when ``model_type=TRANSFORMER`` and none is given
#: (``AdvancedSmoothQuantParameters.matmul``, nncf 3.4).
NNCF_DEFAULT_SMOOTH_QUANT_ALPHA = 0.95
#: Operation types whose inputs NNCF quantizes in an encoder converted from ONNX (the others stay fp32).
QUANTIZABLE_TYPES = ("MatMul", "Convolution")
_QUANT_NODE_TYPES = ("FakeQuantize", "FakeConvert")
#: ``activations_range`` → ``nncf.quantization.range_estimator.RangeEstimatorParametersSet`` member; NNCF's
#: default for per-tensor activations is ``MEAN_MINMAX`` (the mean over calibration samples of each one's min/max).
RANGE_ESTIMATORS = {"mean_minmax": "MEAN_MINMAX", "minmax": "MINMAX", "median_minmax": "MEDIAN_MINMAX",
                    "mean_no_outliers": "MEAN_NO_OUTLIERS_MINMAX", "mean_quantile": "MEAN_QUANTILE",
                    "histogram": "HISTOGRAM"}


class OvInt8Config(BaseModel):
    """One NNCF int8 configuration (symmetric int8 weights, per output channel).

    Attributes:
        mode: ``static``: ``nncf.quantize``, activations quantized with scales fixed at calibration
            (``FakeQuantize`` nodes). ``dynamic``: ``nncf.compress_weights(mode=INT8_SYM)`` (data-free, int8
            weights only) and the CPU plugin quantizes activations at run time per group of ``dynamic_group_size``
            input channels (its ``DYNAMIC_QUANTIZATION_GROUP_SIZE``, stored in the IR's ``rt_info`` runtime options;
            0 = off: int8 weights decompressed to float). The knobs below except ``ignored_nodes`` apply to static.
        dynamic_group_size: see ``mode``.
        preset: ``performance`` (symmetric int8 activations) or ``mixed`` (asymmetric activations).
        smooth_quant_alpha: SmoothQuant migration strength α for MatMul inputs (Xiao et al. 2023,
            arXiv:2211.10438): None = NNCF's default for transformers (0.95), a negative value switches it off.
        fast_bias_correction: NNCF's fast bias correction (True, its default) or the full BiasCorrection.
        ignored_nodes: OpenVINO node names kept in fp32 (``nncf.IgnoredScope(names=...)``; see :func:`node_names`).
        ignored_types: OpenVINO operation types kept in fp32 (``nncf.IgnoredScope(types=...)``).
        activations_range: how activation ranges are estimated from the calibration statistics (a key of
            :data:`RANGE_ESTIMATORS`; ``mean_minmax`` is NNCF's default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["static", "dynamic"] = "static"
    dynamic_group_size: int = Field(32, ge=0)
    preset: Literal["performance", "mixed"] = "performance"
    smooth_quant_alpha: float | None = Field(None, le=1, description="None = NNCF default, negative = off")
    fast_bias_correction: bool = True
    ignored_nodes: tuple[str, ...] = ()
    ignored_types: tuple[str, ...] = ()
    activations_range: Literal["mean_minmax", "minmax", "median_minmax", "mean_no_outliers", "mean_quantile",
                               "histogram"] = "mean_minmax"

    @model_validator(mode="after")
    def _knobs_fit_the_mode(self):
        static_knobs = ("preset", "smooth_quant_alpha", "fast_bias_correction", "ignored_types", "activations_range")
        if self.mode == "dynamic" and any(getattr(self, k) != OvInt8Config.model_fields[k].default for k in static_knobs):
            raise ValueError(f"{', '.join(static_knobs)} apply to mode static only; leave them unset with mode dynamic")
        if self.mode == "static" and self.dynamic_group_size != 32:
            raise ValueError("dynamic_group_size applies to mode dynamic only")
        return self

    def label(self) -> str:
        """Short human-readable name, e.g. ``ov s8 static sq=0.5 (2 fp32)``, ``ov s8 dynamic g32``."""
        if self.mode == "dynamic":
            fp32 = f" ({len(self.ignored_nodes)} fp32)" if self.ignored_nodes else ""
            return f"ov s8 dynamic g{self.dynamic_group_size}{fp32}"
        parts = ["ov s8 static"]
        if self.preset == "mixed":
            parts.append("mixed")
        alpha = self.smooth_quant_alpha
        if alpha is not None:
            parts.append("sq off" if alpha < 0 else f"sq={alpha:g}")
        if not self.fast_bias_correction:
            parts.append("full-bc")
        if self.activations_range != "mean_minmax":
            parts.append(f"range={self.activations_range}")
        if self.ignored_types:
            parts.append("-" + "-".join(self.ignored_types))
        if self.ignored_nodes:
            parts.append(f"({len(self.ignored_nodes)} fp32)")
        return " ".join(parts)


def require_ov(what: str = "OpenVINO int8") -> None:
    """Raise MissingExtraError (exit code 2) when ``openvino``/``nncf`` are not installed, naming the ``optimize``
    extra that brings them; imports nothing."""
    from .errors import MissingExtraError
    from .extras import missing_distributions

    missing = missing_distributions(("openvino", "nncf"))
    if missing:
        raise MissingExtraError(f"{what} needs OpenVINO and NNCF ({', '.join(missing)} not installed): "
                                'pip install "multiverse[optimize]"')
    import_openvino()  # the first import of openvino in the process: without its import-time telemetry event


@contextlib.contextmanager
def nncf_output_to_stderr():
    """While the block runs: NNCF's warnings and errors (a ``StreamHandler`` bound to the ``sys.stdout`` of import
    time) go to stderr, its INFO lines (one per node it leaves unquantized) and its progress bars (``rich``, written
    to ``sys.stdout``) are dropped, so stdout carries only the command's own output and a CI log only Multiverse's
    progress lines."""
    import io
    import logging

    from nncf.common.logging import logger as nncf_logging

    handler = nncf_logging.stdout_handler
    previous, handler.stream = handler.stream, sys.stderr  # not setStream: it flushes the old stream, maybe closed
    level = nncf_logging.nncf_logger.level
    nncf_logging.nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        handler.stream = previous
        nncf_logging.nncf_logger.setLevel(level)


def convert(onnx_path: str | Path):
    """``openvino.convert_model`` of an fp32 ONNX export; returns an ``openvino.Model`` (dynamic batch × sequence).

    Checks that every ONNX graph input and output keeps its name. Raises MissingExtraError without openvino,
    QuantizationError when OpenVINO cannot read the graph (for instance an ONNX Runtime-fused graph).
    """
    require_ov()
    import onnx
    import openvino as ov

    onnx_path = Path(onnx_path)
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
        with no_telemetry():
            model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise QuantizationError(
            f"OpenVINO could not convert {onnx_path} ({type(exc).__name__}: {exc}). Give it the unfused fp32 export "
            "(multiverse.export.export), not the ONNX Runtime-fused graph, or use --runtime onnxruntime.") from exc
    initializers = {t.name for t in graph.initializer}
    for kind, want, ports in (("input", [i.name for i in graph.input if i.name not in initializers], model.inputs),
                              ("output", [o.name for o in graph.output], model.outputs)):
        got = [set(p.get_names()) for p in ports]
        if len(got) != len(want) or any(w not in g for w, g in zip(want, got)):
            raise QuantizationError(f"OpenVINO renamed the {kind}s of {onnx_path}: ONNX has {want}, the converted "
                                    f"model {[sorted(g) for g in got]}. Report the model; use --runtime onnxruntime.")
    return model


def _as_ov_model(model):
    """An ``openvino.Model`` from an ``openvino.Model``, an :class:`OnnxModel` or a ``.onnx``/``.xml`` path."""
    import openvino as ov

    if isinstance(model, ov.Model):
        return model
    path = Path(model.path if isinstance(model, OnnxModel) else model)
    return ov.Core().read_model(str(path)) if path.suffix == ".xml" else convert(path)


def node_names(model, types: Sequence[str] = QUANTIZABLE_TYPES) -> list[str]:
    """Names of the nodes NNCF can quantize (``MatMul``/``Convolution`` with a constant weight input), in graph
    (topological) order: the values :attr:`OvInt8Config.ignored_nodes` takes.

    ``model``: an ``openvino.Model``, an :class:`OnnxModel` or a path to ``.onnx`` (converted) or ``.xml``.
    Weights may reach the node through ``Convert``/``Multiply``/``Subtract``/``Reshape`` (a quantized IR).
    """
    require_ov()
    return [op.get_friendly_name() for op in _as_ov_model(model).get_ordered_ops()
            if op.get_type_name() in types and _weight_input(op) is not None]


def _weight_input(op):
    """The ``Constant`` feeding ``op``'s second input through dequantization/reshape nodes, or None."""
    if op.get_input_size() < 2:
        return None
    node = op.input_value(1).get_node()
    for _ in range(6):
        if node.get_type_name() == "Constant":
            return node
        if node.get_type_name() not in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose",
                                        *_QUANT_NODE_TYPES):
            return None
        node = node.input_value(0).get_node()
    return None


def int8_nodes(model) -> list[str]:
    """The nodes of :func:`node_names` that run in int8 after NNCF: an activation input fed by a
    ``FakeQuantize``/``FakeConvert``, or an int8/uint8 weight ``Constant``. In graph order."""
    require_ov()
    ov_model = _as_ov_model(model)
    out = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in QUANTIZABLE_TYPES or _weight_input(op) is None:
            continue
        act = op.input_value(0).get_node().get_type_name() in _QUANT_NODE_TYPES
        weight = _weight_input(op).get_element_type().get_type_name() in ("i8", "u8")
        if act or weight:
            out.append(op.get_friendly_name())
    return out


def quantized_op_counts(model) -> dict[str, int]:
    """``{"FakeQuantize": n, ..., "int8_nodes": m}``: quantization nodes by type and int8 compute nodes."""
    ov_model = _as_ov_model(model)
    counts = Counter(op.get_type_name() for op in ov_model.get_ops() if op.get_type_name() in _QUANT_NODE_TYPES)
    return {**dict(sorted(counts.items())), "int8_nodes": len(int8_nodes(ov_model))}


def quantize_ov(model: OnnxModel, out_dir: str | Path, config: OvInt8Config,
                calibration: Sequence[dict[str, np.ndarray]]) -> OnnxModel:
    """NNCF int8 of ``model`` into ``out_dir/model.xml`` + ``model.bin``. ``model``: the fp32 ONNX export
    (converted by :func:`convert`), or one whose ``path`` is an fp32 IR (e.g. ``ovfrontend.pytorch_ir``'s).

    ``calibration``: tokenized batches, each ``{input name: int64 [batch, seq]}`` (extra keys are dropped);
    every item is used (``subset_size = len(calibration)``); mode ``dynamic`` needs none. NNCF's progress and log lines go to stderr.
    Returns a new OnnxModel with ``path`` the IR, stage ``int8`` and ``quantization`` =
    ``{"runtime": "openvino", **config, "inference_precision": "f32", "calibration_size", "quantized_ops": {...}}``
    (``calibration_size``: the batches NNCF calibrated on; 0 for ``dynamic``, which uses none)
    (``inference_precision``: what OpenVINO compiles the IR's other layers in, ``ovsession.precision_config``).
    Raises MissingExtraError without openvino/nncf; QuantizationError on an empty calibration set (static), an unknown
    ignored node, a NNCF failure or a result with nothing quantized.
    """
    require_ov()
    if not calibration and config.mode == "static":
        raise QuantizationError("NNCF needs calibration inputs and got none: pass at least one tokenized batch "
                                "(typically 100-300 texts of mixed lengths from the eval data).")
    ov_model = _as_ov_model(model)
    known = set(node_names(ov_model))
    unknown = [n for n in config.ignored_nodes if n not in known]
    if unknown:
        raise QuantizationError(f"ignored_nodes names no quantizable node of {model.path}: {unknown[:3]}. "
                                "Take names from multiverse.ovquant.node_names(model).")
    try:
        with no_telemetry():  # NNCF's first import in the process happens here too
            quantized = (_nncf_compress(ov_model, config) if config.mode == "dynamic"
                         else _nncf_quantize(ov_model, config, calibration))
    except Exception as exc:
        raise QuantizationError(
            f"NNCF failed on {model.path} with {config.label()} ({type(exc).__name__}: {exc}). "
            "Try another configuration, or --runtime onnxruntime.") from exc
    counts = quantized_op_counts(quantized)
    if not counts["int8_nodes"]:
        raise QuantizationError(f"NNCF quantized no node of {model.path} with {config.label()}; "
                                "keep fewer nodes in fp32 or use --runtime onnxruntime.")
    import nncf
    import openvino as ov

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out / IR_FILE), compress_to_fp16=False)  # int8 stays int8, the rest fp32
    info = {"runtime": "openvino", "frontend": frontend(ov_model), **config.model_dump(mode="json"),
            "inference_precision": "f32", "calibration_size": len(calibration) if config.mode == "static" else 0,
            "quantized_ops": counts, "versions": {"openvino": ov.__version__, "nncf": nncf.__version__}}
    return replace(model, path=out / IR_FILE, stage="int8", quantization=info)


def _nncf_compress(ov_model, config: OvInt8Config):
    """``nncf.compress_weights(INT8_SYM)`` with the run-time activation group size recorded in ``rt_info``."""
    import nncf

    scope = nncf.IgnoredScope(names=list(config.ignored_nodes), validate=False) if config.ignored_nodes else None
    with nncf_output_to_stderr():
        model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_SYM, ignored_scope=scope)
    model.set_rt_info(str(config.dynamic_group_size), ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    return model


def _nncf_quantize(ov_model, config: OvInt8Config, calibration: Sequence[dict[str, np.ndarray]]):
    """``nncf.quantize`` of an ``openvino.Model`` with ``config``; returns the quantized ``openvino.Model``."""
    import nncf
    from nncf.quantization import advanced_parameters as ap
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    names = [p.get_any_name() for p in ov_model.inputs]
    data = [{k: np.asarray(item[k]) for k in names if k in item} for item in calibration]
    advanced = {}
    if config.smooth_quant_alpha is not None:
        advanced["smooth_quant_alphas"] = ap.AdvancedSmoothQuantParameters(matmul=config.smooth_quant_alpha)
    if config.activations_range != "mean_minmax":
        advanced["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet,
                                                                 RANGE_ESTIMATORS[config.activations_range])
    scope = (nncf.IgnoredScope(names=list(config.ignored_nodes), types=list(config.ignored_types), validate=False)
             if config.ignored_nodes or config.ignored_types else None)
    preset = nncf.QuantizationPreset.MIXED if config.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    with nncf_output_to_stderr():
        return nncf.quantize(ov_model, nncf.Dataset(data), preset=preset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(data), fast_bias_correction=config.fast_bias_correction,
                             ignored_scope=scope,
                             advanced_parameters=ap.AdvancedQuantizationParameters(**advanced) if advanced else None)


def frontend(model) -> str:
    """Which OpenVINO frontend an ``openvino.Model`` came from: ``pytorch`` (``ovfrontend.convert_pytorch`` tags its
    ``rt_info``) or ``onnx`` (:func:`convert`)."""
    return "pytorch" if model.has_rt_info(["multiverse", "frontend"]) else "onnx"
