"""``optimize --runtime``: OpenVINO + NNCF candidates go through the same gate, choice and bundle as ONNX Runtime's,
and an OpenVINO bundle serves every route with batch-invariant results."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from serve_fixtures import ThreadServer  # noqa: E402
from test_batch_invariance import TARGETS, _item, _neighbours, max_abs_diff  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from multiverse import bundle, container  # noqa: E402
from multiverse.cli import app  # noqa: E402
from multiverse.inference import Predictor  # noqa: E402
from multiverse.serve.app import create_app  # noqa: E402
from multiverse.serve.settings import ServeSettings  # noqa: E402
from multiverse.tasks import TASKS, get_task  # noqa: E402


@pytest.fixture(scope="module")
def ov_bundles(tiny_ov_bundles):
    """task → bundle built with ``--runtime openvino`` (conftest's session-wide ``tiny_ov_bundles``)."""
    return tiny_ov_bundles


def test_an_openvino_bundle_records_its_runtime_and_pins_it(ov_bundles):
    b = ov_bundles["feature-extraction"]
    m = b.manifest
    assert b.spec.model_file == "model.xml" and b.external_data() == ["model.bin"] and b.passed
    assert m["runtime"]["engine"]["name"] == "openvino" and m["runtime"]["engine"]["version"]
    assert m["quantization"]["runtime"] == "openvino" and m["quantization"]["quantized_ops"]["int8_nodes"] > 0
    assert m["quantization"]["frontend"] == "pytorch"  # the tuner converted the PyTorch model (ovfrontend)
    assert m["precision"] == "int8" and 0 < m["int8_weight_fraction"] <= 1
    pins = container.read_requirements(b.path / container.REQUIREMENTS)
    assert pins["openvino"] == m["runtime"]["engine"]["version"] and "onnxruntime" in pins
    assert m["tuning"]["reason"].startswith("--runtime openvino: ") and "speed vs fp32: " in m["tuning"]["reason"]
    chosen = m["tuning"]["trials"][m["tuning"]["chosen"]]
    assert chosen["phase"] == "openvino" and chosen["label"].startswith("ov ")
    assert "(openvino " in (b.path / "README.md").read_text() and "model.xml" in (b.path / "README.md").read_text()
    result = CliRunner().invoke(app, ["inspect", str(b.path)])
    assert result.exit_code == 0, result.output
    assert "OpenVINO" in result.output and "ov s8 static" in result.output
    assert "none: an OpenVINO IR of the unfused export" in " ".join(result.output.split())


@pytest.mark.parametrize("task", TASKS)
def test_openvino_results_do_not_depend_on_the_batch(task, ov_bundles):
    """Static int8 scales: a text alone vs next to long and short neighbours, through Predictor and /predict."""
    p = Predictor.from_bundle(ov_bundles[task])
    assert not p.per_row  # rows run together: nothing in the graph depends on the other rows
    with ThreadServer(create_app(p, ServeSettings(max_run_tokens=64, batch_tokens=4096))) as srv, srv.client() as c:
        srv.wait_ready()
        assert c.get("/models").json()["data"][0]["backend"] == "multiverse-openvino"
        for text in TARGETS:
            item, items = _item(task, text), _neighbours(task, text)
            alone = p.predict([item]).results[0]
            assert max_abs_diff(p.predict(items).results[1], alone) <= 1e-4, (task, text)
            body = lambda x: list(x) if isinstance(x, tuple) else x  # noqa: E731
            got = c.post("/predict", json={"inputs": [body(x) for x in items]})
            assert got.status_code == 200, got.text
            alone_http = p.predict([item], get_task(task).http_defaults).results[0]  # TEI's defaults over HTTP
            assert max_abs_diff(got.json()[1], alone_http) <= 1e-4, (task, text)


def test_runtime_usage_errors_exit_2_before_any_work(tiny_checkpoints, tmp_path):
    ckpt = str(tiny_checkpoints["feature-extraction"])
    for args, says in ((["--runtime", "tensorrt"], "choose auto, onnxruntime, openvino"),
                       (["--runtime", "openvino", "--precision", "fp32"], "--runtime onnxruntime")):
        result = CliRunner().invoke(app, ["optimize", ckpt, "--out", str(tmp_path), *args])
        assert result.exit_code == 2 and says in result.output, result.output
    assert not any(tmp_path.iterdir())


def test_auto_without_openvino_says_so_and_ships_onnx(tiny_checkpoints, tmp_path, monkeypatch):
    from multiverse import ovtuning
    from multiverse.pipeline import optimize

    monkeypatch.setattr(ovtuning, "missing_distributions", lambda names: ["nncf"])
    notes = []

    class Recorder:
        def __getattr__(self, name):
            from multiverse.progress import Progress

            return getattr(Progress(), name)

        def info(self, message):
            notes.append(message)

    b = optimize(str(tiny_checkpoints["text-classification"]), "native", out=tmp_path, max_trials=1,
                 progress=Recorder())
    assert b.spec.model_file == "model.onnx" and b.manifest["runtime"]["engine"]["name"] == "onnxruntime"
    assert any("OpenVINO candidates skipped (nncf not installed" in n for n in notes), notes
    assert json.loads((b.path / "multiverse.json").read_text())["runtime"]["engine"]["version"]
    with pytest.raises(Exception, match="needs nncf"):
        optimize(str(tiny_checkpoints["text-classification"]), "native", out=tmp_path / "x", runtime="openvino")
    assert not (tmp_path / "x").exists()
    assert bundle.load(b.path).passed
    assert np.isfinite(Predictor.from_bundle(b).predict(["a"]).results[0][0]["score"])
