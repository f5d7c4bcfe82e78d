"""Per-node sensitivity of an ONNX Runtime int8 candidate: which nodes the tuner's fp32 fallback keeps first.

Each quantizable node is quantized alone (:func:`multiverse.graphnodes.single_node_graphs`: the fp32 graph with
only that node's int8 subgraph from the candidate) and run on a subset of the eval data against the fp32 graph.
Two measures per node:

* ``output_nmse``: the normalised MSE of the raw model output, Σ(q − f)² / Σf² over real tokens (float32
  [batch, seq, dim] or [batch, labels]; Intel Neural Compressor 2.x ``mse``/``mse_v2`` strategies). Every task.
* ``flip_rate`` (classifiers, ``Handler.node_flip_rate``): the share of (eval margin, node logit error) pairs
  whose top-1 label flips. A classifier's gate counts labels, and the output MSE of a node says little about
  the labels it moves near the decision boundary.

Nodes are ranked by flip rate where the task has one (ties, e.g. nodes that flip nothing, by output NMSE), else by
output NMSE.
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
    order = sorted(nmse, key=lambda n: (-flip.get(n, 0.0), -nmse[n]))
    return {"order": order, "output_nmse": nmse, "flip_rate": flip}
