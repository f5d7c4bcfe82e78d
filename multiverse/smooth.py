"""Activation smoothing for dynamic int8 (SmoothQuant, Xiao et al. 2023, arXiv:2211.10438, eq. 4).

Dynamic quantization gives every activation tensor one uint8 scale per call. BERT-family
activations have a few outlier channels (LayerNorm outputs, GELU outputs), so one scale wastes
most of the 8 bits on them; short inputs, whose embedding is dominated by the [CLS]/[SEP]
states, suffer most (measured: per-tensor dynamic int8 gave min cosine 0.956 on MiniLM, 30 sentences). Smoothing moves the
difficulty into the weights, which are quantized per channel:

    Y = X·W = (X·diag(s)⁻¹)·(diag(s)·W),   s_j = max|X_j|^α / max|W_j|^(1−α)

For each MatMul with a constant weight and each fused ``Attention`` node, a ``Mul`` by 1/s is
inserted on the activation input and the weight rows are scaled by s. In fp32 the graph is
unchanged (checked by the tests); the int8 graph quantizes an activation with flat channels.
α is tuned by ``tuning.py``; ``max|X_j|`` is calibrated on real texts (:func:`calibrate`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .export import OnnxModel, save_graph
from .targets import QuantConfig, Target

SMOOTHABLE = ("MatMul", "Attention")
SMOOTH_ALPHAS = (0.7, 0.6, 0.8)  # best first on MiniLM (measured: 0.7 > 0.6 > 0.8 > 0.5 on min cosine)


def _targets(graph) -> list:
    """Nodes whose input 0 is an activation and input 1 a constant weight [in_features, out_features]."""
    inits = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type in SMOOTHABLE and len(n.input) > 1 and n.input[1] in inits
            and n.input[0] not in inits]


def calibrate(model: OnnxModel, task: str, items: Sequence, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-channel max |activation| (float32 [in_features]) of every smoothable node's input, over real
    (non-pad) tokens of ``items`` (texts, or (text, text_pair) pairs for ranking).

    Items run in batches of similar length (sorted by characters): the maximum over real tokens does not
    depend on the order, and padding to the longest text of a batch is what cost the time (the built-in
    classification texts: 8,037 real tokens, 47,888 padded in their own order, 12,272 sorted)."""
    import onnx
    from onnx import helper

    from .inference import Predictor

    proto = onnx.load(str(model.path))
    acts = sorted({n.input[0] for n in _targets(proto.graph)})
    existing = {o.name for o in proto.graph.output}
    for name in acts:
        if name not in existing:
            proto.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = model.path.parent / "calibration.onnx"
    save_graph(proto, probe)
    try:
        predictor = Predictor(probe, model.model_dir, task)
        amax: dict[str, np.ndarray] = {}
        items = sorted(items, key=lambda x: len(x) if isinstance(x, str) else sum(map(len, x)))
        for i in range(0, len(items), batch_size):
            enc = predictor.encode(list(items[i:i + batch_size]))
            mask = enc.attention_mask.astype(bool)
            for name, value in zip(acts, predictor.session.run(acts, enc.arrays)):
                v = np.abs(value[mask] if value.ndim == 3 else value.reshape(-1, value.shape[-1])).max(axis=0)
                amax[name] = v if name not in amax else np.maximum(amax[name], v)
    finally:
        probe.unlink(missing_ok=True)
        (probe.parent / (probe.name + ".data")).unlink(missing_ok=True)
    return amax


def _fold_into_attention(node, producer: dict, consumers: dict, inits: dict, inv_scale: np.ndarray) -> bool:
    """Scale the V columns (and V bias) of the fused ``Attention`` node whose output 0 is ``node``'s input 0 and
    is read by ``node`` alone, by ``inv_scale`` [v_hidden]; True if it did (then no ``Mul`` is needed).

    Exact in fp32: attention's output channel j is softmax(QKᵀ)·V's column j, linear in V's column j, so
    diag(1/s) moves from the output into V's weight columns and bias. ``quantize_dynamic`` quantizes the
    Attention weight per column (``QAttention`` scale [3·hidden]), so the int8 graph quantizes the same
    numbers up to float rounding, one ``Mul`` over [batch, seq, hidden] fewer per layer.
    """
    from onnx import helper, numpy_helper

    att = producer.get(node.input[0])
    if (att is None or att.op_type != "Attention" or att.output[0] != node.input[0] or len(att.input) < 3
            or len(consumers.get(node.input[0], ())) != 1 or att.input[1] not in inits or att.input[2] not in inits):
        return False
    w = numpy_helper.to_array(inits[att.input[1]]).astype(np.float64)
    b = numpy_helper.to_array(inits[att.input[2]]).astype(np.float64)
    sizes = next((list(helper.get_attribute_value(a)) for a in att.attribute if a.name == "qkv_hidden_sizes"), None)
    q, k, v = sizes or [w.shape[1] // 3] * 3
    if v != inv_scale.shape[0] or w.shape[1] != q + k + v:
        return False
    w[:, q + k:] *= inv_scale[None, :]
    b[q + k:] *= inv_scale
    inits[att.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), att.input[1]))
    inits[att.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), att.input[2]))
    return True


def smooth(model: OnnxModel, out: str | Path, amax: dict[str, np.ndarray], alpha: float,
           fold: bool = True) -> OnnxModel:
    """Write ``out/model.onnx``: ``model`` with SmoothQuant scales of strength ``alpha`` (0 < α < 1).

    ``fold``: where the activation is a fused ``Attention`` node's output read by this MatMul alone (the
    attention output projection), 1/s goes into that Attention's V weights instead of a ``Mul`` node
    (:func:`_fold_into_attention`). LayerNorm and GELU outputs keep their ``Mul``: LayerNorm outputs also
    feed the residual, and GELU is not linear.

    Returns a new OnnxModel (stage unchanged, fp32) whose ``quantization`` records the smoothing.
    Scales are clipped to [1e-2, 1e3] so an all-zero channel cannot blow up a weight row.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(model.path))
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    targets = {n.name or n.output[0] for n in _targets(graph)}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    scaled: set[str] = set()
    nodes, producer = [], {}
    count = folded = 0
    for original in graph.node:
        node = onnx.NodeProto()
        node.CopyFrom(original)
        if (node.name or node.output[0]) in targets and node.input[0] in amax and node.input[1] not in scaled:
            w = numpy_helper.to_array(inits[node.input[1]])
            s = amax[node.input[0]].astype(np.float64) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
            s = np.clip(s, 1e-2, 1e3)
            name = f"{node.name or node.output[0]}_smooth"
            if fold and _fold_into_attention(node, producer, consumers, inits, 1.0 / s):
                folded += 1
            else:
                graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), name + "_inv_scale"))
                nodes.append(helper.make_node("Mul", [node.input[0], name + "_inv_scale"], [name + "_out"], name=name))
                node.input[0] = name + "_out"
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
            scaled.add(node.input[1])
            count += 1
        nodes.append(node)
        producer.update((o, node) for o in node.output)
    del graph.node[:]
    graph.node.extend(nodes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_graph(proto, out / "model.onnx")
    return replace(model, path=out / "model.onnx",
                   quantization={"smooth_alpha": alpha, "smoothed_nodes": count, "folded_into_attention": folded})


def phase1_configs(target: Target, head: Sequence[str] = ()) -> list[QuantConfig]:
    """The tuner's phase-1 candidates: the target's configuration, then the same with smoothing strengths α
    (``SMOOTH_ALPHAS``); ``head`` nodes stay fp32 in all.

    Op types (Attention, EmbedLayerNormalization, Gather) are varied node by node in phase 2.
    Targets without VNNI already use u8 weights (``targets.py``); ``reduce_range`` is tried only there.
    """
    base = target.quantization.model_copy(update={"nodes_to_exclude": tuple(head)}) if head else target.quantization
    configs = [base] + [base.model_copy(update={"smooth_alpha": a}) for a in SMOOTH_ALPHAS]
    if not target.has_vnni and target.isa.arch == "x86_64":
        configs.append(base.model_copy(update={"reduce_range": True, "weight_type": "int8"}))
    return configs


class SmoothedGraphs:
    """``fused`` smoothed at each α asked for, each graph made once (:func:`smooth`, in ``workdir/smooth-<α>``), from
    activation maxima calibrated once (:func:`calibrate`) on the first ``items`` built-in texts of ``task``
    (``evaldata.subset``). Called with α = None: ``fused`` itself."""

    def __init__(self, fused: OnnxModel, task: str, workdir: str | Path, items: int):
        self.fused, self.task, self.workdir, self.items = fused, task, Path(workdir), items
        self._amax: dict[str, np.ndarray] | None = None
        self._graphs: dict[float, OnnxModel] = {}

    def __call__(self, alpha: float | None) -> OnnxModel:
        from .evaldata import builtin, subset

        if alpha is None:
            return self.fused
        if alpha not in self._graphs:
            if self._amax is None:
                self._amax = calibrate(self.fused, self.task, subset(builtin(self.task), self.items).inputs())
            self._graphs[alpha] = smooth(self.fused, self.workdir / f"smooth-{alpha:g}", self._amax, alpha)
        return self._graphs[alpha]
