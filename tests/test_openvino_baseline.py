"""The OpenVINO + NNCF baseline of ``multiverse benchmark``: built from a tiny checkpoint, it agrees with the
PyTorch model through the same post-processing, is cached per checkpoint, runs in a real grid through the CLI,
and without the ``peers`` extra stops with the install command (openvino and nncf are in the test extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multiverse.benchmark.baselines import BASELINES, compare_accuracy, make_system
from multiverse.errors import MissingExtraError


def _short_texts(task: str, n: int = 60) -> list:
    """Built-in inputs that fit the tiny checkpoints' 128 positions (the vanilla pipeline does not truncate)."""
    from multiverse.benchmark.baselines import accuracy_texts

    def words(x):
        return sum(len(t.split()) for t in x) if isinstance(x, tuple) else len(x.split())

    return [x for x in accuracy_texts(task, limit=10**9) if words(x) < 40][:n]


@pytest.mark.parametrize("task, model_type", [("feature-extraction", "bert"), ("text-classification", "distilbert")])
def test_openvino_system_agrees_with_transformers_and_is_cached(task, model_type, tmp_path):
    from support import tiny_checkpoint

    from multiverse.benchmark.openvino_system import build_openvino

    ckpt = Path(getattr(tiny_checkpoint(task, tmp_path / "ckpt", model_type=model_type), "path", tmp_path / "ckpt"))
    ov_dir = tmp_path / "ov"
    ov = make_system("openvino", threads=1, bundle=None, checkpoint=ckpt, task=task, openvino_dir=ov_dir)
    info = json.loads((ov_dir / "multiverse-benchmark.json").read_text())
    assert info["inputs"][:2] == ["input_ids", "attention_mask"] and info["subset_size"] == 48
    assert ov.input_names == info["inputs"] and "nncf.quantize" in info["recipe"]
    assert build_openvino(ckpt, task, ov_dir)["cached"] is True
    ref = make_system("transformers", threads=1, bundle="unused", checkpoint=ckpt, task=task)
    texts = _short_texts(task)
    acc = compare_accuracy({"transformers": ref, "openvino": ov}, task, texts)["openvino"]
    assert acc["n"] == len(texts) >= 50
    if task == "feature-extraction":
        # int8 + bf16 on a random 2-layer model: close to PyTorch, not equal (measured mean 0.9996, min 0.992).
        assert acc["mean_cosine"] >= 0.99 and acc["min_cosine"] >= 0.95
    else:
        assert acc["label_agreement"] >= 0.85  # measured 0.95 (random head: many near-ties)
    bd = ov.breakdown(5)
    assert bd and bd["inference_ms"] > 0 and bd["tokenization_ms"] > 0


def test_without_the_peers_extra_the_baseline_names_the_install_command(monkeypatch):
    from support.extras import hide_distribution

    from multiverse.benchmark.options import plan

    hide_distribution(monkeypatch, "nncf")
    assert "openvino" in BASELINES
    with pytest.raises(MissingExtraError, match=r"nncf not installed\): pip install \"multiverse\[peers\]\"") as exc:
        plan(baselines=["transformers,openvino"])
    assert exc.value.exit_code == 2
    assert plan(baselines=["optimum"]).systems == ("multiverse", "optimum")


def test_cli_benchmark_with_the_openvino_baseline(tiny_bundles, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from multiverse.cli import app

    bundle = tiny_bundles["feature-extraction"]
    name = Path(json.loads((Path(bundle) / "multiverse.json").read_text())["source"]["local_path"]).name
    out = tmp_path / "report"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the benchmark's default work folder (spawned workers too)
    res = CliRunner().invoke(app, ["benchmark", str(bundle), "--cores", "1", "--seq-lens", "16", "--batch-sizes", "1",
                                   "--baseline", "transformers,openvino", "--min-runs", "3", "--min-seconds", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    rows = {r["system"]: r for r in rep["results"]}
    assert rows["openvino"]["status"] == "ok", rows["openvino"].get("reason")
    assert rows["openvino"]["stats"]["n"] >= 3 and rows["openvino"]["breakdown"]["inference_ms"] > 0
    assert rep["accuracy"]["openvino"]["mean_cosine"] >= 0.99
    from multiverse.benchmark.openvino_system import target_precision
    from multiverse.bundle import load

    # timed at the precision the bundle's target would run it (f32 where the target has no bf16)
    # timed at the precision the bundle's target runs it: f32 for a target without bf16, else the plugin's default
    expected = target_precision(load(bundle).required_flags)
    assert rep["accuracy"]["openvino"]["inference_precision"] == (expected or ov_default_precision())
    assert any(n.startswith("openvino ran ") and load(bundle).spec.target.name in n for n in rep["notes"])
    assert [s["baseline"] for s in rep["speedups"]] == ["transformers", "openvino"]
    assert (tmp_path / "home" / ".cache" / "multiverse" / "benchmark" / f"openvino-{name}" / "openvino_model.xml").is_file()


def ov_default_precision() -> str:
    from multiverse.extras import import_openvino

    core = import_openvino().Core()
    precision = core.get_property("CPU", "INFERENCE_PRECISION_HINT")  # as OpenVinoSystem.inference_precision reads it
    return precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)


def test_the_openvino_peer_runs_at_the_precision_of_the_bundles_target():
    from multiverse.benchmark.openvino_system import target_precision
    from multiverse.targets import get_target

    assert target_precision(get_target("icelake").isa.required_flags) == "f32"  # Ice Lake has no bf16 path
    assert target_precision(get_target("zen4").isa.required_flags) is None  # the plugin's default: bf16
    assert target_precision(get_target("sapphirerapids").isa.required_flags) is None  # AMX-INT8 CPUs have bf16
    assert target_precision(get_target("arm64").isa.required_flags, get_target("arm64").isa.arch) is None
