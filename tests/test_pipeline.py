"""The whole pipeline on tiny checkpoints of every task, the export check and the gate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from multiverse import bundle, hub
from multiverse.errors import AccuracyGateError, ExportError, UsageError
from multiverse.export import check_against_reference, export
from multiverse.inference import Predictor
from multiverse.pipeline import optimize
from support import TASKS, tiny_checkpoint

SAMPLE = {"feature-extraction": ["Hello world", "A much longer sentence about Paris and London."],
          "text-classification": ["great movie", "terrible book about the market"],
          "token-classification": ["alice went to paris with bob", "google bought nokia"],
          "ranking": [["who won", "chelsea won the game"], ["who won", "the market fell"]]}


@pytest.mark.parametrize("task", TASKS)
def test_tiny_task_end_to_end(task, tiny_bundles, tiny_checkpoints):
    b = bundle.load(tiny_bundles[task])
    m = b.manifest
    assert m["task"] == task and m["schema_version"] == bundle.SCHEMA_VERSION
    # 2-layer model: every fusion family matches the layer count.
    assert m["fusion"]["families"]["Attention"] == 2
    assert m["fusion"]["families"]["SkipLayerNormalization"] == 4
    assert m["validation"]["passed"] and m["validation"]["n"] >= 30
    assert m["source"]["local_path"] == str(tiny_checkpoints[task].resolve())
    assert m["export"]["max_abs_diff"] <= 1e-4
    assert {"model.onnx", "tokenizer.json", "config.json", "README.md", "Dockerfile"} <= set(m["files"])
    trials = m["tuning"]["trials"]
    assert trials[0]["config"] is None and any(t["config"] for t in trials)  # fp32 and int8 were both tried
    for t in trials:
        assert t["p50_ms"] > 0 and t["validation"]["metric"] == m["validation"]["metric"]
    passing = [t for t in trials if t["validation"]["passed"]]
    # compared by CPU time after interleaved re-timing (5 rounds), but for passing trials over RETIME_SPAN x the
    # cheapest one's CPU time; a re-timing compares at least two
    retimed = [t for t in passing if t["cpu_rounds_ms"]]
    assert len(retimed) != 1
    for t in retimed:
        assert len(t["cpu_rounds_ms"]) == 5 and t["cpu_ms"] > 0 and min(t["cpu_rounds_ms"]) > 0
    # served latency at the short length for every re-timed trial, or (other processes kept the CPUs busy) for none
    served = {tuple(t["served_ms_by_len"]) for t in retimed}
    assert served <= {(), ("16",)} and len(served) <= 1
    assert all(v > 0 for t in retimed for v in t["served_ms_by_len"].values())
    clock = m["tuning"]["latency"]["served_clock"]  # the manifest says whether it was kept, and why
    if retimed:
        assert clock["kept"] == (served == {("16",)}) and isinstance(clock["realtime"], bool)
    # The bundle serves: predictions come back in the task's shape.
    out = Predictor.from_bundle(b).predict(SAMPLE[task]).results
    assert len(out) == 2
    if task == "feature-extraction":
        assert np.allclose(np.linalg.norm(np.asarray(out), axis=1), 1, atol=1e-5)
    elif task == "text-classification":
        assert out[0][0]["label"] in {"negative", "neutral", "positive"}
    elif task == "token-classification":
        for text, ents in zip(SAMPLE[task], out):
            assert all(e["word"] == text[e["start"]:e["end"]] for e in ents)
    else:
        assert all(0 <= s <= 1 for s in out)


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_other_architectures_fuse_and_validate(model_type, tmp_path):
    ckpt = tiny_checkpoint("text-classification", tmp_path / "ckpt", model_type=model_type)
    b = optimize(str(ckpt), "native", out=tmp_path / "out", precision="fp32")
    assert b.manifest["fusion"]["families"]["Attention"] == 2
    assert b.manifest["precision"] == "fp32" and b.passed


def test_export_check_catches_damaged_graph(tiny_checkpoints, tmp_path):
    ckpt = hub.resolve(str(tiny_checkpoints["text-classification"]))
    good = export(ckpt, tmp_path / "fp32")
    assert good.max_abs_diff <= 1e-4
    model = onnx.load(str(good.path))
    inits = {i.name: i for i in model.graph.initializer}
    matmul = next(n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits)
    victim = inits[matmul.input[1]]
    w = numpy_helper.to_array(victim).copy()
    w *= 1.02  # a 2 % error in the first projection (random tiny models barely react to single columns)
    victim.CopyFrom(numpy_helper.from_array(w, victim.name))
    onnx.save(model, str(good.path))
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        check_against_reference(ckpt, good, 1e-4)


def test_impossible_tolerance_fails_the_gate_and_writes_nothing(tiny_checkpoints, tmp_path):
    with pytest.raises(AccuracyGateError, match="mean_cosine") as info:
        optimize(str(tiny_checkpoints["feature-extraction"]), "native", out=tmp_path, tolerance=0.0)
    assert info.value.exit_code == 3
    assert info.value.report.best_trial() is not None
    assert list(tmp_path.iterdir()) == []  # no bundle, no temp folder


def test_tolerance_only_fp32_meets_ships_fp32(tiny_checkpoints, tmp_path):
    b = optimize(str(tiny_checkpoints["text-classification"]), "native", out=tmp_path, tolerance=0.0)
    assert b.manifest["precision"] == "fp32"
    assert b.manifest["tuning"]["reason"].startswith("fp32 shipped")


def test_precision_int8_without_a_passing_int8_candidate_fails_the_gate(tiny_checkpoints, tmp_path):
    # tolerance 0: fp32 passes on the classifier (test above), no int8 candidate does.
    with pytest.raises(AccuracyGateError) as info:
        optimize(str(tiny_checkpoints["text-classification"]), "native", out=tmp_path, tolerance=0.0, precision="int8",
                 max_trials=1)
    best = info.value.report.best_trial()
    assert info.value.exit_code == 3 and best.config is not None  # the message names the best int8 trial
    assert best.label in str(info.value) and list(tmp_path.iterdir()) == []
    # the one trial went to phase 1, so the report says why no fp32 fallback was tried
    assert "--max-trials 2 or more" in info.value.report.sensitivity["skipped"]


def test_keep_failed_writes_a_bundle_marked_failed(tiny_checkpoints, tmp_path):
    with pytest.raises(AccuracyGateError, match="kept at"):
        optimize(str(tiny_checkpoints["feature-extraction"]), "native", out=tmp_path, tolerance=0.0,
                 keep_failed=True, precision="fp32")
    (folder,) = tmp_path.iterdir()
    b = bundle.load(folder)
    assert not b.passed and b.manifest["validation"]["passed"] is False


def test_existing_output_refused_before_work(tiny_bundles, tiny_checkpoints):
    folder = tiny_bundles["ranking"]
    before = sorted(p.name for p in folder.parent.iterdir())
    with pytest.raises(UsageError, match="--overwrite"):
        optimize(str(tiny_checkpoints["ranking"]), "native", out=folder.parent)
    assert sorted(p.name for p in folder.parent.iterdir()) == before
    assert bundle.verify_files(folder) == []


def test_labelled_eval_file(tiny_checkpoints, tmp_path):
    rows = [{"text": t, "label": lbl} for t, lbl in
            [("great movie", "positive"), ("terrible book", "negative"), ("the market", "neutral")] * 10]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    b = optimize(str(tiny_checkpoints["text-classification"]), "native", out=tmp_path / "o", eval_data=str(path),
                 precision="fp32")
    v = b.manifest["validation"]
    assert v["metric"] == "accuracy" and v["dataset"] == str(path) and v["n"] == 30
