"""Per-node sensitivity of an ONNX Runtime int8 candidate: which nodes the tuner's fp32 fallback keeps first.

Each quantizable node is quantized alone (:func:`multiverse.graphnodes.single_node_graphs`: the fp32 graph with
only that node's int8 subgraph from the candidate) and run on a subset of the eval data against the fp32 graph.
Two measures per node:

* ``output_nmse``: the normalised MSE of the raw model output, Σ(q − f)² / Σf² over real tokens (float32
  [batch, seq, dim] or [batch, labels]; Intel Neural Compressor 2.x ``mse``/``mse_v2`` strategies). Every task.
* ``flip_rate`` (classifiers, ``Handler.node_flip_rate``): the share of (eval margin, node logit error) pairs
  whose top-1 label flips. A classifier's gate counts labels.

Order (:func:`rank_nodes`): for classifiers by flip rate² per multiply-accumulate the node runs per token
(:func:`node_macs`), the label flips removed per unit of fp32 compute; for other tasks by output NMSE.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .graphnodes import graph_bytes, output_nmse, single_node_graphs
from .runtime import make_session
from .tasks import get_task


def node_sensitivity(fp32, base, quantized, nodes: Sequence[str], batches: Sequence, reference_values, *,
                     task: str, threads: int | None, session: dict, workdir: Path, progress) -> dict:
    """Measure every node of ``nodes`` quantized alone.

    Args:
        fp32: the fp32 graph's ``Predictor`` (its ``run`` and ``output_name``).
        base, quantized: the graph the candidate quantized (fp32, maybe smoothed) and the candidate
            (``OnnxModel``); single-node graphs are cut from ``quantized``.
        batches: tokenized subset of the eval data (``Encoded`` batches).
        reference_values: the PyTorch reference's ``TaskOutputs.values`` on the whole eval set (classifiers:
            float32 [n, num_labels] logits, the margins of :func:`node_flip_rate`).
        workdir: scratch folder for the single-node graphs (removed after).
    Returns ``{"order": [node, ...] most sensitive first, "output_nmse": {node: float}, "flip_rate": {node: float}}``
    (``flip_rate`` empty for tasks without one).
    """
    flips = getattr(get_task(task), "node_flip_rate", None)
    reference = [fp32.run(enc) for enc in batches]
    nmse, flip = {}, {}
    for k, (node, proto) in enumerate(single_node_graphs(base, quantized, nodes), 1):
        progress.activity(f"measuring the sensitivity of node {k}/{len(nodes)} ({node})")
        sess = make_session(graph_bytes(proto, workdir), threads, session)
        outs = [sess.run([fp32.output_name], e.arrays)[0] for e in batches]
        nmse[node] = output_nmse(reference, outs, batches)
        if flips is not None:
            errors = np.concatenate([o - r for o, r in zip(outs, reference)]).reshape(-1, np.shape(reference_values)[-1])
            flip[node] = flips(reference_values, errors)
    shutil.rmtree(workdir, ignore_errors=True)
    return {"order": rank_nodes(nmse, flip, node_macs(base, nodes)), "output_nmse": nmse, "flip_rate": flip}


def node_macs(model, nodes: Sequence[str]) -> dict[str, int]:
    """Multiply-accumulates per token of each of ``nodes`` (names as ``graphnodes.quantizable_nodes`` spells
    them) in ``model`` (``OnnxModel``): the element count of its constant weight for ``MatMul``, ``Gemm``
    (listed as ``<gemm>_MatMul``) and ``Attention`` (the packed QKV weight); 0 for the others
    (``EmbedLayerNormalization``, ``Gather``: table look-ups, no arithmetic int8 could speed up)."""
    import onnx

    graph = onnx.load(str(model.path), load_external_data=False).graph
    weights = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    macs = {}
    for n in graph.node:
        name = f"{n.name}_MatMul" if n.op_type == "Gemm" else n.name
        if name in nodes:
            heavy = n.op_type in ("MatMul", "Gemm", "Attention") and len(n.input) > 1
            macs[name] = weights.get(n.input[1], 0) if heavy else 0
    return macs


def rank_nodes(output_nmse: dict[str, float], flip_rate: dict[str, float],
               macs: dict[str, int] | None = None) -> list[str]:
    """Node names of ``output_nmse``, most worth keeping in fp32 first.

    With ``flip_rate`` (classifiers): by ``flip_rate² / macs`` (``macs`` per token, :func:`node_macs`, floored
    at 1 % of the largest so that look-ups rank by flips among themselves; missing: equal cost), ties by output
    NMSE. Why the square and the cost: for small errors a flip rate grows with the margin error's standard
    deviation, and independent node errors add in variance, so keeping node i in fp32 removes about
    flip_rate_i² of the squared flip rate, while its fp32 GEMM costs in proportion to its MACs (a greedy
    knapsack). Measured on a weak 2-class head (BBC, frozen MiniLM, SmoothQuant α 0.8, head fp32): by flip rate
    alone the fallback first passed the gate with 5 FFN output projections and the embeddings in fp32, 1.55x /
    1.97x fp32's CPU speed at 128 / 16 tokens; by flips² per MAC with 3 FFN outputs, 2 attention outputs and the
    embeddings, 1.64x / 2.27x (interleaved, load 9.3-10.1), held-out label agreement 0.9906 vs 0.9929.
    Without ``flip_rate`` (other tasks): by output NMSE."""
    if not flip_rate:
        return sorted(output_nmse, key=lambda n: -output_nmse[n])
    cost = dict.fromkeys(output_nmse, 1) if not macs else {n: macs.get(n, max(macs.values())) for n in output_nmse}
    floor = max(1e-12, 0.01 * max(cost.values(), default=1))
    return sorted(output_nmse, key=lambda n: (-flip_rate.get(n, 0.0) ** 2 / max(cost[n], floor), -output_nmse[n]))
