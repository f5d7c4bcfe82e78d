"""The expected label agreement of text-classification's gate: the flip rate from every (margin, error) pair."""

from __future__ import annotations

import re

import numpy as np
import pytest

from multiverse.evaldata import EvalSet
from multiverse.tasks.text_classification import expected_flip_rate
from multiverse.validate import TaskOutputs, score

CONFIG = {"id2label": {"0": "neg", "1": "pos"}}


def test_every_error_is_tried_on_every_margin():
    ref = np.array([[0.05, 0], [5, 0], [0, 5], [0, 5]])      # margins 0.05, 5, 5, 5 (classes 0, 0, 1, 1)
    cand = ref + np.array([[0, 0], [-0.1, 0], [0, 0], [0, 0]])  # only example 1 moves, by 0.1 toward class 1
    p, se = expected_flip_rate(ref, cand)
    assert (ref.argmax(1) == cand.argmax(1)).all()  # no observed flip
    assert p == pytest.approx(1 / 16)  # the one error flips the one near-boundary margin: 1 of 16 pairs
    # row means a = (1/4, 0, 0, 0), column means b = (0, 1/4, 0, 0): var 1/64 − 1/256 = 3/256 each, n = m = 4
    assert se == pytest.approx(np.sqrt(2 * (3 / 256) / 4))
    assert expected_flip_rate(ref, ref) == (0.0, 0.0)


def test_multiclass_flip_needs_some_class_to_overtake_the_top_one():
    ref = np.array([[3.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    cand = ref + np.array([[0.0, 0.0, 2.5], [0.0, 0.0, 0.0]])  # lifts class 2 by 2.5: over class 0's margin 3? no
    assert expected_flip_rate(ref, cand)[0] == 0.0
    cand = ref + np.array([[0.0, 0.0, 3.5], [0.0, 0.0, 0.0]])  # by 3.5 > 3: example 0 flips; example 1 (top 2) gains
    assert expected_flip_rate(ref, cand)[0] == pytest.approx(1 / 4)


def test_many_examples_use_a_seeded_subset_of_errors_and_match_the_observed_rate():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3000, 4))
    cand = ref + rng.normal(scale=0.05, size=ref.shape)
    p, se = expected_flip_rate(ref, cand, max_pairs=1_000_000)  # 333 errors per margin
    assert p == expected_flip_rate(ref, cand, max_pairs=1_000_000)[0]
    observed = float((ref.argmax(1) != cand.argmax(1)).mean())
    assert abs(p - observed) < 4 * se + 0.005 and 0 < se < 0.005


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="num_labels"):
        expected_flip_rate(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="num_labels"):
        expected_flip_rate(np.zeros((0, 2)), np.zeros((0, 2)))


def _near_boundary_case(n_near: int = 10, n_far: int = 90):
    """Logits where no example flips but 1 % of (margin, error) pairs do: 10 % of the examples sit 0.05 from the
    boundary, and 10 % of the others move 0.1 toward the other class."""
    ref = np.zeros((n_near + n_far, 2), np.float32)
    ref[:n_near, 0] = 0.05
    ref[n_near:, 0] = np.where(np.arange(n_far) % 2 == 0, 5.0, -5.0)
    cand = ref.copy()
    cand[n_near:n_near + 10, 0] -= 0.1
    return ref, cand


def test_gate_fails_a_candidate_whose_flips_are_expected_but_not_seen():
    ref, cand = _near_boundary_case()
    labels = tuple("neg" if r[0] > r[1] else "pos" for r in ref)
    data = EvalSet("t", "text-classification", texts=tuple(str(i) for i in range(len(ref))), labels=labels)
    r = score(data, TaskOutputs(ref), TaskOutputs(cand), CONFIG, tolerance=0.004)
    assert r.details["label_agreement"] == 1.0 and r.relative_loss == 0.0
    assert r.details["expected_label_agreement"] == pytest.approx(0.99)  # 10 % of margins × 10 % of errors
    assert not r.passed
    assert r.failure().startswith("expected_label_agreement 0.9900 vs required 0.9920")
    assert r.gate_loss == pytest.approx(0.005)  # the expected flip rate over the 2 flips per τ that labels allow
    assert score(data, TaskOutputs(ref), TaskOutputs(cand), CONFIG, tolerance=0.005).passed  # bar 0.99
    doc = r.to_dict()  # the manifest's validation record
    assert [c["name"] for c in doc["checks"]][-1] == "expected_label_agreement"
    assert "logit margin" in doc["details"]["expected_label_agreement_method"]
    unlabelled = EvalSet("t", "text-classification", texts=data.texts)
    r = score(unlabelled, TaskOutputs(ref), TaskOutputs(cand), CONFIG, tolerance=0.01)  # without labels the bar is 1 − τ
    assert r.checks[-1].threshold == pytest.approx(0.99) and r.checks[-1].loss == pytest.approx(0.01) and r.passed


def test_validate_prints_the_expected_agreement_and_what_it_is(tiny_bundles):
    import json

    from typer.testing import CliRunner

    from multiverse.cli import app

    manifest = json.loads((tiny_bundles["text-classification"] / "multiverse.json").read_text())
    # the shipped candidate's record in the manifest (fp32 here: int8 is not faster than fp32 at hidden size 32)
    assert {c["name"]: c["passed"] for c in manifest["validation"]["checks"]}["expected_label_agreement"]
    assert manifest["validation"]["details"]["expected_label_agreement_se"] >= 0

    r = CliRunner().invoke(app, ["validate", str(tiny_bundles["text-classification"])])
    assert r.exit_code == 0, r.output
    row = next(line for line in r.stdout.splitlines() if "expected_label_agreement " in line)
    assert re.search(r"expected_label_agreement\s*│\s*(0\.99[0-9]{2}|1\.0000)\s*│\s*0\.9900\s*│\s*pass", row), row
    note = " ".join(r.stdout.split("└")[-1].split())  # below the table, whole
    assert "expected_label_agreement_method: expected_label_agreement is the agreement expected on new inputs" in note


def test_node_flip_rate_pairs_every_eval_margin_with_every_node_error():
    from multiverse.tasks.text_classification import Handler, node_flip_rate

    ref = np.array([[0.05, 0.0], [5.0, 0.0], [0.0, 0.2], [0.0, 5.0]])  # margins 0.05, 5, 0.2, 5
    errors = np.array([[-0.1, 0.0], [0.0, 0.0]])  # a node's error on two other inputs: one lifts class 1 by 0.1
    # the 0.1 push flips example 0 (margin 0.05 toward class 1) only: 1 of 8 pairs; example 2 (class 1) gains
    assert node_flip_rate(ref, errors) == pytest.approx(1 / 8)
    assert Handler.node_flip_rate(ref, errors) == node_flip_rate(ref, errors)
    assert node_flip_rate(ref, np.zeros((3, 2))) == 0.0
    with pytest.raises(ValueError, match="num_labels"):
        node_flip_rate(ref, np.zeros((2, 3)))


def test_fallback_ranks_nodes_by_label_flips_squared_per_mac_then_by_output_nmse():
    from multiverse.sensitivity import rank_nodes

    nmse = {"ffn_out": 0.02, "embed": 0.001, "attn": 0.005, "ffn_in": 0.0001}
    flips = {"ffn_out": 0.001, "embed": 0.004, "attn": 0.0, "ffn_in": 0.0}
    assert rank_nodes(nmse, flips) == ["embed", "ffn_out", "attn", "ffn_in"]  # equal costs: flips, then NMSE
    assert rank_nodes(nmse, {}) == ["ffn_out", "attn", "embed", "ffn_in"]  # tasks without labels: output NMSE
    flips = {"ffn_out": 0.01, "attn": 0.006, "embed": 0.002, "ffn_in": 0.0}
    macs = {"ffn_out": 4, "attn": 1, "embed": 0, "ffn_in": 4}  # floor 0.04: embed 1e-4, attn 3.6e-5, ffn_out 2.5e-5
    assert rank_nodes(nmse, flips, macs) == ["embed", "attn", "ffn_out", "ffn_in"]


def test_node_macs_counts_constant_weights_of_gemm_like_nodes_only(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from multiverse.export import OnnxModel
    from multiverse.sensitivity import node_macs

    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.0] * 12)
    g = helper.make_tensor("g", TensorProto.FLOAT, [3, 2], [0.0] * 6)
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 4], [0.0] * 40)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["x"], name="embed"),
         helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
         helper.make_node("Gemm", ["h", "g"], ["y"], name="head")],
        "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w, g, table])
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    model = OnnxModel(path=tmp_path / "model.onnx", model_dir=tmp_path, stage="fp32", opset=17)
    assert node_macs(model, ["embed", "dense", "head_MatMul"]) == {"embed": 0, "dense": 12, "head_MatMul": 6}
