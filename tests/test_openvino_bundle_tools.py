"""An OpenVINO IR bundle (``optimize --runtime openvino``) through the tools a user points at it:
``multiverse benchmark`` (with ``--baseline openvino`` and ``--profile``: OpenVINO's per-layer counters, since
ONNX Runtime's profiler cannot see inside it) and ``multiverse serve --threads N`` (OpenVINO compiles with N
threads). The container image and the lean install are in ``test_image.py`` and ``test_lean_runtime.py``."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest

pytest.importorskip("openvino")

from serve_fixtures import ThreadServer  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from multiverse.benchmark import report  # noqa: E402
from multiverse.benchmark.profile import OPENVINO_PROFILE_NOTE, summarize_openvino_counters  # noqa: E402
from multiverse.cli import app  # noqa: E402


def _info(node_type: str, name: str, ms: float):
    return SimpleNamespace(node_type=node_type, node_name=name, real_time=timedelta(milliseconds=ms))


def test_openvino_counters_are_running_means_the_summary_takes_the_timed_runs_out_of():
    # fc1 takes 9 ms then 1 ms in the 2 warm-up inferences, 0.5 ms in each of the 4 timed ones; fc2 and ln 0.5 ms
    # always. OpenVINO reports running means since compile: fc1 (9 + 1) / 2 = 5 after warm-up, (10 + 4 × 0.5) / 6 = 2
    # after all; the timed runs' FullyConnected time is 0.5 + 0.5 = 1 ms per run.
    after_warmup = [_info("FullyConnected", "fc1", 5.0), _info("FullyConnected", "fc2", 0.5), _info("MVN", "ln", 0.5)]
    after_runs = [_info("FullyConnected", "fc1", 2.0), _info("FullyConnected", "fc2", 0.5),
                  _info("MVN", "ln", 0.5), _info("Parameter", "input_ids", 0.0)]
    s = summarize_openvino_counters(after_warmup, after_runs, warmup=2, runs=4, model_run_ms=[1.6, 1.5, 1.7, 1.5])
    assert [(o["op_type"], o["nodes"]) for o in s["ops"]] == [("FullyConnected", 2), ("MVN", 1)]  # 0 ms left out
    assert s["ops"][0]["ms"] == pytest.approx(1.0, abs=1e-3) and s["ops"][1]["ms"] == pytest.approx(0.5, abs=1e-3)
    assert s["kernel_ms"] == pytest.approx(1.5, abs=1e-3) and s["model_run_ms"] == pytest.approx(1.55)
    assert s["ops"][0]["share"] == pytest.approx(2 / 3, abs=1e-3)


def test_benchmark_an_openvino_bundle_with_the_openvino_baseline_and_a_profile(tiny_ov_bundle, tmp_path):
    pytest.importorskip("nncf")
    out = tmp_path / "bench"
    res = CliRunner().invoke(app, ["benchmark", str(tiny_ov_bundle), "--cores", "1", "--seq-lens", "16",
                                   "--batch-sizes", "1", "--baseline", "transformers", "--baseline", "openvino",
                                   "--min-runs", "2", "--min-seconds", "0", "--out", str(out), "--profile"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    report.validate_report(rep)
    assert {(r["system"], r["status"]) for r in rep["results"]} == {
        ("multiverse", "ok"), ("transformers", "ok"), ("openvino", "ok")}, rep["results"]
    assert {s["baseline"] for s in rep["speedups"]} == {"transformers", "openvino"}
    # The OpenVINO bundle's outputs are compared with PyTorch like any bundle's (tiny random encoder: no bar here).
    assert rep["accuracy"]["multiverse"]["n"] > 10 and "openvino" in rep["accuracy"]
    from multiverse.ovsession import openvino_version

    assert rep["bundle"]["runtime"] == {"name": "openvino", "version": openvino_version(),
                                        "version_built": openvino_version()}
    assert f"(openvino {openvino_version()})" in " ".join(res.output.split())  # the table title names the runtime
    prof = rep["profile"]
    assert prof["profiler"] == "openvino PERF_COUNT" and prof["note"] == OPENVINO_PROFILE_NOTE
    assert prof["seq_len"] == 16 and prof["end_to_end_ms"] > 0 and prof["kernel_ms"] > 0
    assert prof["ops"] and all(o["ms"] > 0 and o["nodes"] >= 1 for o in prof["ops"])
    # OpenVINO CPU plugin layer types: the int8 matmuls run as FullyConnected layers.
    assert any(o["op_type"].startswith("FullyConnected") for o in prof["ops"]), [o["op_type"] for o in prof["ops"]]
    assert f"--profile: {OPENVINO_PROFILE_NOTE}" in rep["notes"]
    assert "ONNX Runtime's profiler does not apply" in " ".join(res.output.split())


@pytest.mark.parametrize("threads", [1, 2])
def test_serve_threads_set_openvino_inference_threads(tiny_ov_bundle, threads):
    from multiverse.serve.app import create_app
    from multiverse.serve.settings import ServeSettings

    settings = ServeSettings(threads=threads)
    application = create_app(str(tiny_ov_bundle), settings)
    with ThreadServer(application, settings) as srv, srv.client() as c:
        srv.wait_ready()
        session = application.state.multiverse.predictor.session
        assert session.properties["INFERENCE_NUM_THREADS"] == str(threads)
        assert session.compiled.get_property("INFERENCE_NUM_THREADS") == threads  # what OpenVINO compiled with
        assert c.get("/info").json()["threads"] == threads
        assert c.post("/embed", json={"inputs": ["hello"]}).status_code == 200
