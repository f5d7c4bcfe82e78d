"""Graph inspection for the tuner: which nodes dynamic int8 quantizes, which are the task head, and how far
a candidate's outputs are from the fp32 graph's (per-node sensitivity)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .export import OnnxModel
from .targets import QuantConfig


def head_nodes(model: OnnxModel, config: QuantConfig) -> list[str]:
    """The task head among :func:`quantizable_nodes`: Gemm-derived nodes (they act on the pooled
    [batch, hidden] vector: pooler, sequence classifier) and MatMuls whose output reaches a graph
    output through bias ``Add`` nodes only (token classifier). Empty for a bare encoder.

    Why they stay fp32 by default: they hold well under 1 % of the FLOPs at any sequence length,
    and their error reaches the logits unaveraged. Measured on the BBC cross-encoder fixture
    (normalised output MSE with one node quantized alone): pooler 0.36, next node 0.008; the BBC
    classifier's held-out label agreement went from 98.6 % to 100 % with its head in fp32.
    """
    import onnx

    graph = onnx.load(str(model.path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches_output(tensor: str) -> bool:
        if tensor in outputs:
            return True
        nxt = consumers.get(tensor, [])
        return len(nxt) == 1 and nxt[0].op_type == "Add" and reaches_output(nxt[0].output[0])

    by_name = {n.name: n for n in graph.node if n.name}
    head = []
    for name in quantizable_nodes(model, config):
        node = by_name.get(name)
        if node is None and name.endswith("_MatMul"):  # Gemm, listed under its quantize_dynamic name
            head.append(name)
        elif node is not None and node.op_type == "MatMul" and reaches_output(node.output[0]):
            head.append(name)
    return head


def quantizable_nodes(model: OnnxModel, config: QuantConfig) -> list[str]:
    """Names, as ``nodes_to_exclude`` must spell them, of the nodes ``config`` would quantize: op types in
    ``config.op_types``; MatMuls and Gemms only with a constant weight, Gathers only of a constant table.

    ``quantize_dynamic`` first rewrites every Gemm with alpha = beta = 1 and transA = 0 into
    ``MatMul`` (+ ``Add``) named ``<gemm>_MatMul`` and then quantizes it as a MatMul
    (``onnxruntime.quantization.onnx_model.ONNXModel.replace_gemm_with_matmul``); classifier and
    pooler heads exported from PyTorch ``nn.Linear`` on a 2-D input are such Gemms, so they are
    listed under that name (else they are quantized and can never fall back to fp32).
    """
    import onnx

    graph = onnx.load(str(model.path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names = []
    for n in graph.node:
        if not n.name:
            continue
        const_b = len(n.input) > 1 and n.input[1] in inits
        if n.op_type == "Gather" and n.input[0] not in inits:  # an activation gather (e.g. [CLS]) has no weight
            continue
        if n.op_type == "Gemm" and "MatMul" in config.op_types and const_b:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            if attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and attrs.get("transA", 0) == 0:
                names.append(f"{n.name}_MatMul")
        elif n.op_type in config.op_types and (n.op_type != "MatMul" or const_b):
            names.append(n.name)
    return names


def output_nmse(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], batches: Sequence) -> float:
    """:func:`multiverse.metrics.nmse` over batches of raw outputs; rank-3 outputs [batch, seq, dim] count real
    tokens only (``batches[i].attention_mask`` int64 [batch, seq]). 0 = identical."""
    from .metrics import nmse

    refs, cands = [], []
    for r, c, enc in zip(reference, candidate, batches):
        r, c = np.asarray(r), np.asarray(c)
        if r.ndim == 3:
            mask = enc.attention_mask.astype(bool)
            r, c = r[mask], c[mask]
        refs.append(r.reshape(-1))
        cands.append(c.reshape(-1))
    return nmse(np.concatenate(refs), np.concatenate(cands))


