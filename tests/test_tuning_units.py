"""Tuner building blocks on hand-made graphs and arrays: which nodes can fall back, and the sensitivity error."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from multiverse.export import OnnxModel
from multiverse.quantize import quantize, quantized_op_counts
from multiverse.targets import QuantConfig
from multiverse.tuning import head_nodes, output_nmse, quantizable_nodes


def _graph_with_head(path):
    """x [1, 8] → MatMul (const W) → Gemm (const W, transB=1, like a PyTorch nn.Linear head) → y [1, 4]."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(4, np.float32), "b2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="body/MatMul"),
             helper.make_node("Gemm", ["h", "w2", "b2"], ["y"], name="head/Gemm", transB=1),
             helper.make_node("MatMul", ["h", "h_t"], ["z"], name="act/MatMul"),  # activation × activation: never quantized
             helper.make_node("Gather", ["h", "idx"], ["cls"], name="cls/Gather", axis=1)]  # gathers an activation
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                     helper.make_tensor_value_info("h_t", TensorProto.FLOAT, [8, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("cls", TensorProto.FLOAT, [1])],
        [w1, w2, b2, numpy_helper.from_array(np.array(0, np.int64), "idx")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return OnnxModel(path=path, model_dir=path.parent, stage="fused", opset=17)


def test_gemm_heads_are_listed_under_the_name_quantize_dynamic_gives_them(tmp_path):
    model = _graph_with_head(tmp_path / "model.onnx")
    config = QuantConfig(op_types=("MatMul", "Gather"))
    nodes = quantizable_nodes(model, config)
    assert nodes == ["body/MatMul", "head/Gemm_MatMul"]
    assert quantized_op_counts(quantize(model, tmp_path / "all", config).path) == {"MatMulInteger": 2}
    # Excluding the listed name really keeps the head in fp32 (the ORT rewrite renames it).
    kept = quantize(model, tmp_path / "head-fp32", config.model_copy(update={"nodes_to_exclude": ("head/Gemm_MatMul",)}))
    assert quantized_op_counts(kept.path) == {"MatMulInteger": 1}


def test_output_nmse_counts_real_tokens_only():
    ref = [np.array([[[1.0, 0.0], [9.0, 9.0]]])]            # [1 batch, 2 tokens, 2 dims]; token 2 is padding
    cand = [np.array([[[1.0, 1.0], [0.0, 0.0]]])]
    enc = [SimpleNamespace(attention_mask=np.array([[1, 0]]))]
    assert output_nmse(ref, cand, enc) == pytest.approx(1.0)  # (0² + 1²) / (1² + 0²)
    logits = [np.array([[2.0], [-2.0]])]                      # [batch, 1]: no mask applies
    assert output_nmse(logits, [np.array([[2.0], [-1.0]])], [None]) == pytest.approx(1 / 8)
    assert output_nmse(logits, logits, [None]) == 0.0


def test_head_nodes_are_pooled_gemms_and_matmuls_feeding_an_output(tmp_path):
    model = _graph_with_head(tmp_path / "model.onnx")
    assert head_nodes(model, QuantConfig(op_types=("MatMul",))) == ["head/Gemm_MatMul"]
    # Token classifier: encoder MatMul → Relu → classifier MatMul → bias Add → logits [1, 3, 5].
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("w", (8, 8)), ("wc", (8, 5)), ("bc", (5,)))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="enc/MatMul"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "wc"], ["c"], name="cls/MatMul"),
             helper.make_node("Add", ["c", "bc"], ["logits"], name="cls/Add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "tok.onnx")
    tok = OnnxModel(path=tmp_path / "tok.onnx", model_dir=tmp_path, stage="fused", opset=17)
    assert quantizable_nodes(tok, QuantConfig(op_types=("MatMul",))) == ["enc/MatMul", "cls/MatMul"]
    assert head_nodes(tok, QuantConfig(op_types=("MatMul",))) == ["cls/MatMul"]


def test_a_low_trial_budget_keeps_one_trial_for_the_fp32_fallback(tiny_checkpoints, tmp_path):
    from multiverse import evaldata, hub
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.targets import get_target
    from multiverse.tuning import tune

    ckpt = hub.resolve(str(tiny_checkpoints["text-classification"]))
    target = get_target("native")
    fused = fuse(export(ckpt, tmp_path / "fp32"), tmp_path / "fused", ckpt, target)
    data = evaldata.load(None, ckpt.task, limit=80)
    # tolerance 0: fp32 passes on the tiny classifier, no int8 candidate does (label flips on the built-in texts)
    _, report = tune(ckpt, fused, target, data, 0.0, tmp_path / "two", max_trials=2)
    assert [t.phase for t in report.trials] == ["baseline", "configurations", "fp32 fallback"]
    assert not report.trials[1].passed and report.sensitivity["node_output_nmse"]
    # a budget of one cannot hold both phases: the summary (stderr) and the reason (manifest) say so and what is needed
    _, report = tune(ckpt, fused, target, data, 0.0, tmp_path / "one", max_trials=1)
    assert [t.phase for t in report.trials] == ["baseline", "configurations"]
    assert report.chosen == 0 and report.sensitivity["trials_needed"] == 2
    for text in (report.summary(), report.to_dict()["reason"]):
        assert "fp32 fallback was skipped" in text and "--max-trials 2 or more" in text
