"""A real benchmark run: tiny random checkpoint → bundle → 1 core × 1 length × 1 batch, with the transformers
baseline, through the library and through ``multiverse benchmark`` (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multiverse.benchmark import report
from multiverse.benchmark.runner import GridSpec, run_grid
from multiverse.timing import Budget

TINY_BUDGET = Budget(warmup_runs=1, min_runs=3, min_seconds=0.0, max_seconds=5.0, floor_runs=1)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from support import tiny_checkpoint
    from multiverse.errors import AccuracyGateError
    from multiverse.pipeline import optimize

    root = tmp_path_factory.mktemp("bench")
    ckpt = Path(getattr(tiny_checkpoint("text-classification", root / "ckpt"), "path", root / "ckpt"))
    try:
        b = optimize(str(ckpt), target="native", out=root / "bundles", overwrite=True, max_trials=1)
    except AccuracyGateError:
        b = optimize(str(ckpt), target="native", out=root / "bundles", overwrite=True, precision="fp32")
    return Path(b.path)


def test_real_1x1x1_run_with_the_transformers_baseline(tiny_bundle, tmp_path):
    spec = GridSpec(cores=[1, 4096], seq_lens=[8], batch_sizes=[1], systems=["multiverse", "transformers"],
                    budget=TINY_BUDGET, accuracy=True)
    rep = run_grid(tiny_bundle, spec)
    report.validate_report(rep)
    rows = {(r["system"], r["cores"]): r for r in rep["results"]}
    assert set(rows) == {("multiverse", 1), ("transformers", 1), ("multiverse", 4096), ("transformers", 4096)}
    for system in ("multiverse", "transformers"):
        r = rows[(system, 1)]
        assert r["status"] == "ok", r.get("reason")
        assert r["stats"]["n"] >= 3 and r["stats"]["p50_ms"] > 0 and r["cpus"] and len(r["cpus"]) == 1
        assert rows[(system, 4096)]["status"] == "skipped"
    bd = rows[("multiverse", 1)]["breakdown"]
    assert bd["inference_ms"] > 0 and bd["tokenization_ms"] >= 0
    assert [s["baseline"] for s in rep["speedups"]] == ["transformers"]
    assert rep["accuracy"]["multiverse"]["n"] > 10 and 0 <= rep["accuracy"]["multiverse"]["label_agreement"] <= 1
    assert rep["host"]["cpu"] and rep["versions"]["torch"]
    paths = report.write(rep, tmp_path / "out")
    assert paths["json"].is_file() and paths["csv"].is_file() and len(paths["png"]) == 3


def test_cli_benchmark_writes_the_report_and_prints_its_path(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from multiverse.cli import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["benchmark", str(tiny_bundle), "--cores", "1", "--seq-lens", "8,16",
                                   "--batch-sizes", "2", "--baseline", "none", "--min-runs", "2", "--min-seconds", "0",
                                   "--out", str(out), "--profile"])
    assert res.exit_code == 0, res.output
    assert str(out / "report.json") in res.stdout
    rep = json.loads((out / "report.json").read_text())
    report.validate_report(rep)
    assert [(r["seq_len"], r["batch_size"], r["status"]) for r in rep["results"]] == [(8, 2, "ok"), (16, 2, "ok")]
    assert rep["profile"]["ops"] and rep["profile"]["seq_len"] == 16 and rep["profile"]["end_to_end_ms"] > 0
    assert rep["profile"]["profiler"] == "onnxruntime" and not any(n.startswith("--profile") for n in rep["notes"])
    assert (out / "report.csv").read_text().startswith("system,cores,seq_len")
    import onnxruntime

    assert rep["bundle"]["runtime"] == {"name": "onnxruntime", "version": onnxruntime.__version__,
                                        "version_built": onnxruntime.__version__}


def test_cli_benchmark_rejects_bad_grids(tiny_bundle):
    from typer.testing import CliRunner

    from multiverse.cli import app

    res = CliRunner().invoke(app, ["benchmark", str(tiny_bundle), "--cores", "two"])
    assert res.exit_code == 2 and "--cores" in res.output
    res = CliRunner().invoke(app, ["benchmark", str(tiny_bundle), "--baseline", "tensorflow"])
    assert res.exit_code == 2


def test_a_system_that_cannot_be_built_fails_its_cells_not_the_run(tiny_bundle):
    spec = GridSpec(cores=[1], seq_lens=[8], batch_sizes=[1, 2], systems=["multiverse", "no-such-system"],
                    budget=TINY_BUDGET, accuracy=True)
    rep = run_grid(tiny_bundle, spec)
    report.validate_report(rep)
    rows = [(r["system"], r["batch_size"], r["status"]) for r in rep["results"]]
    assert rows == [("multiverse", 1, "ok"), ("no-such-system", 1, "error"),
                    ("multiverse", 2, "ok"), ("no-such-system", 2, "error")]
    bad = [r for r in rep["results"] if r["status"] == "error"]
    assert all(r["reason"].startswith("BenchmarkError: Unknown system 'no-such-system'") for r in bad)
    assert rep["accuracy"] == {} and any(n.startswith("accuracy comparison failed: BenchmarkError: Unknown system")
                                         for n in rep["notes"])
    assert rep["speedups"] == []


@pytest.mark.parametrize("args, why, fix", [
    (["--cores", "4096"], "needs 4096 physical cores", "--cores at most"),
    (["--seq-lens", "100000"], "sequence length 100000 exceeds the model's limit", "--seq-lens at most"),
])
def test_cli_benchmark_where_every_cell_is_skipped_is_a_usage_error(tiny_bundle, tmp_path, args, why, fix):
    """A grid this host or model cannot run at all exits 2 (a usage error, as a bad option value) before anything
    is built, saying why each cell was skipped and which option values work; no empty report is written."""
    from typer.testing import CliRunner

    from multiverse.cli import app

    out = tmp_path / "none"
    cmd = ["benchmark", str(tiny_bundle), "--seq-lens", "8", "--batch-sizes", "1", "--baseline", "none",
           "--no-accuracy", "--out", str(out), *args]
    res = CliRunner().invoke(app, cmd)
    text = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "Every benchmark cell would be skipped" in text and why in text and fix in text
    assert not (out / "report.json").exists()


def test_a_checkpoint_that_is_not_the_bundles_model_is_refused(tiny_bundle, tmp_path):
    """--checkpoint must be the model the bundle was built from: another one would time and compare a different
    network (a tiny 2-layer model against MiniLM gave a 0.1× "speedup" and no warning)."""
    from support import tiny_checkpoint

    from multiverse.errors import BenchmarkError

    other = Path(getattr(tiny_checkpoint("text-classification", tmp_path / "other", model_type="distilbert"), "path",
                         tmp_path / "other"))
    spec = GridSpec(cores=[1], seq_lens=[8], batch_sizes=[1], systems=["multiverse", "transformers"],
                    budget=TINY_BUDGET, accuracy=False)
    with pytest.raises(BenchmarkError, match="is not the model this bundle was built from"):
        run_grid(tiny_bundle, spec, checkpoint=other)
    with pytest.raises(BenchmarkError, match=r"/nope \(--checkpoint\) is not a folder"):
        run_grid(tiny_bundle, spec, checkpoint=tmp_path / "nope")
