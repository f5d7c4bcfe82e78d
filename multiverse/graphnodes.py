"""Graph inspection for the tuner: which nodes dynamic int8 quantizes, which are the task head, and how far
a candidate's outputs are from the fp32 graph's (per-node sensitivity)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

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




def single_node_graphs(base: OnnxModel, quantized: OnnxModel, nodes: Sequence[str]) -> Iterator[tuple[str, object]]:
    """For each name in ``nodes`` (as :func:`quantizable_nodes` spells it): ``(name, ModelProto)`` of ``base`` (the
    fp32 graph) with only that node replaced by its int8 subgraph taken from ``quantized`` (``base`` quantized
    with every node of ``nodes`` included). Names not found in both graphs are skipped.

    Equal to ``quantize_dynamic`` with every other node excluded: dynamic quantization rewrites each node on
    its own (the activation's ``DynamicQuantizeLinear`` computes one scale from that tensor alone; weights are
    quantized per node), so the subgraph that computes the node's outputs in ``quantized``, walked back to
    tensors ``base`` also has, is what quantizing that node alone gives (checked against ``quantize_dynamic`` by
    the tests). One quantization instead of one per node: for 25 nodes of MiniLM, 1 s instead of 30 s.
    """
    import onnx

    fp32 = onnx.load(str(base.path))
    q = onnx.load(str(quantized.path))
    producer = {o: n for n in q.graph.node for o in n.output}
    position = {id(n): k for k, n in enumerate(q.graph.node)}  # quantize_dynamic writes a topologically sorted graph
    q_inits = {i.name: i for i in q.graph.initializer}
    b_inits = {i.name for i in fp32.graph.initializer}
    by_name = {n.name: n for n in fp32.graph.node if n.name}
    for name in nodes:
        node = by_name.get(name) or by_name.get(name.removesuffix("_MatMul"))
        if node is None:
            continue
        have = ({i.name for i in fp32.graph.input} | b_inits
                | {o for n in fp32.graph.node if n is not node for o in n.output})
        sub, inits, todo, seen = [], set(), list(node.output), set()
        while todo:
            t = todo.pop()
            if not t or t in seen or (t in have and t not in node.output):
                continue
            seen.add(t)
            if t in q_inits:
                inits.add(t)
                continue
            p = producer.get(t)
            if p is None:
                break
            if all(p is not s for s in sub):
                sub.append(p)
                todo.extend(p.input)
        else:
            sub.sort(key=lambda n: position[id(n)])
            yield name, _replace_node(fp32, node, sub, [q_inits[i] for i in sorted(inits - b_inits)])


def _replace_node(proto, node, sub: list, inits: list):
    """A copy of ``proto`` with ``node`` replaced by ``sub`` (in topological order) plus ``inits``; the node's
    fp32 weights that nothing else reads are dropped."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = list(out.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.name == node.name and list(n.output) == list(node.output))
    new = nodes[:at] + sub + nodes[at + 1:]
    used = {i for n in new for i in n.input}
    keep = [i for i in out.graph.initializer if i.name in used]
    del out.graph.node[:]
    out.graph.node.extend(new)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + inits)
    return out


def graph_bytes(proto, folder: Path) -> bytes | Path:
    """What :func:`multiverse.runtime.make_session` opens for an in-memory graph: its serialized bytes, or,
    when it is over ``EXTERNAL_DATA_BYTES`` (protobuf's 2 GB limit), ``folder/model.onnx`` written with
    external data (:func:`multiverse.export.save_graph`)."""
    from .export import EXTERNAL_DATA_BYTES, proto_bytes, save_graph

    if proto_bytes(proto) <= EXTERNAL_DATA_BYTES:
        return proto.SerializeToString()
    folder.mkdir(parents=True, exist_ok=True)
    return save_graph(proto, folder / "model.onnx")
