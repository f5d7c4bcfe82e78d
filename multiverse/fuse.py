"""Stage 3: fuse the fp32 graph with the ONNX Runtime transformer optimizer.

Attention, SkipLayerNormalization, BiasGelu and EmbedLayerNormalization fusions are what
make the int8 graph fast. ONNX Runtime's optimizer reports no error when a pattern matches
nothing (an unsupported model type or opset leaves plain MatMul/Softmax), so every fusion kind is counted against the layer count: no Attention at all
is a FusionError; other shortfalls are recorded as warnings in the manifest.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import replace
from pathlib import Path

from .errors import FusionError
from .export import OnnxModel, check_against_reference
from .hub import SUPPORTED_MODEL_TYPES, Checkpoint
from .targets import Target

FUSED_TOLERANCE = 1e-3  # fused kernels reorder float sums; 1e-3 abs on hidden states / logits


def expected_fusions(num_layers: int) -> dict[str, int]:
    """Fused-op counts a fully fused L-layer BERT-family encoder has: Attention L, SkipLayerNormalization 2L
    (residual add + LayerNorm after attention and after the FFN), GELU family L."""
    return {"Attention": num_layers, "SkipLayerNormalization": 2 * num_layers, "Gelu": num_layers}


def summarize(stats: dict[str, int]) -> dict[str, int]:
    """Sum ORT's per-op counts (``get_fused_operator_statistics``) into the families of :func:`expected_fusions`."""
    return {
        "Attention": stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0),
        "SkipLayerNormalization": stats.get("SkipLayerNormalization", 0),
        "Gelu": stats.get("BiasGelu", 0) + stats.get("Gelu", 0) + stats.get("FastGelu", 0) + stats.get("GemmFastGelu", 0),
        "EmbedLayerNormalization": stats.get("EmbedLayerNormalization", 0),
    }


def fuse(model: OnnxModel, out: str | Path, ckpt: Checkpoint, target: Target, *, check: bool = True) -> OnnxModel:
    """Fuse ``model`` into ``out/model.onnx`` and check it against PyTorch (tolerance 1e-3).

    Returns a new OnnxModel with ``fused_ops`` (ORT's counts) and ``fusion_warnings``.
    Raises FusionError when the optimizer fails or fuses no attention for an L-layer model.
    """
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ort_type = SUPPORTED_MODEL_TYPES.get(ckpt.model_type, "bert")
    options = FusionOptions(ort_type)
    options.enable_gelu_approximation = target.fusion.gelu_approximation
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), _capture("onnxruntime.transformers", log):
            optimized = optimize_model(str(model.path), model_type=ort_type, num_heads=ckpt.num_heads,
                                       hidden_size=ckpt.hidden_size, optimization_options=options, opt_level=0,
                                       use_gpu=False)
            stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items()}
            optimized.save_model_to_file(str(out / "model.onnx"), use_external_data_format=model.needs_external_data)
    except Exception as exc:
        raise FusionError(f"The ONNX Runtime transformer optimizer failed on {model.path}: {exc}.") from exc
    got = summarize(stats)
    want = expected_fusions(ckpt.num_layers)
    if got["Attention"] == 0 and ckpt.num_layers > 0:
        hint = " ".join(line for line in log.getvalue().splitlines() if "fail" in line.lower())[:300]
        raise FusionError(
            f"Attention fusion matched nothing in {ckpt.name} ({ckpt.model_type}, {ckpt.num_layers} layers): the "
            f"graph's attention pattern is not one ORT's optimizer knows{' (' + hint + ')' if hint else ''}. "
            "Without it int8 gains little; try another opset or exporter version, or report the model."
        )
    warnings = tuple(f"{kind}: fused {got[kind]} of {n} expected" for kind, n in want.items() if got[kind] < n)
    if got["EmbedLayerNormalization"] == 0:
        warnings += ("EmbedLayerNormalization: not fused (embeddings stay as separate ops)",)
    fused = replace(model, path=out / "model.onnx", stage="fused", fused_ops=stats, fusion_warnings=warnings)
    if check:
        fused = replace(fused, max_abs_diff=check_against_reference(ckpt, fused, FUSED_TOLERANCE))
    return fused


@contextlib.contextmanager
def _capture(logger_name: str, sink: io.StringIO):
    logger = logging.getLogger(logger_name)
    handler = logging.StreamHandler(sink)
    old, prop = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
        logger.propagate = prop
