"""``optimize --runtime``: OpenVINO + NNCF candidates go through the same gate, choice and bundle as ONNX Runtime's,
and an OpenVINO bundle serves every route with batch-invariant results."""

from __future__ import annotations

import json
from dataclasses import dataclass

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
from multiverse.targets import BF16_FLAG, host_flags  # noqa: E402
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
    # where the IR came from: the PyTorch model (the manifest's quantization.frontend), not the ONNX export
    said = " ".join(result.output.split())
    assert "none: an OpenVINO IR of the transformers model (OpenVINO's PyTorch frontend)" in said
    assert "OpenVINO's PyTorch frontend" in (b.path / "README.md").read_text()


@pytest.mark.parametrize("task", TASKS)
def test_openvino_results_do_not_depend_on_the_batch(task, ov_bundles):
    """Static int8 scales: a text alone vs next to long and short neighbours, through Predictor and /predict."""
    p = Predictor.from_bundle(ov_bundles[task])
    assert p.per_row  # static int8 IRs run one row per run (inference.computes_scales_per_run: FakeQuantize)
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


# ---- bf16 variants of the OpenVINO candidates (targets whose CPUs all have bf16) ---------------------------
@dataclass(frozen=True)
class _Model:
    """What ``openvino_bf16`` reads of a trial's model (an ``OnnxModel`` in the tuner)."""

    quantization: dict | None


def _bf16_tuner(target: str):
    from types import SimpleNamespace

    from multiverse.choice import Trial
    from multiverse.targets import get_target
    from multiverse.validate import Check, ValidationReport

    def trial(label, config, passed):
        v = ValidationReport("d", "text-classification", 1, "accuracy", 1.0, 1.0, 0.0, 0.01, passed,
                             (Check("c", 1.0, 0.9, passed),))
        return Trial(label, config, v, p50_ms=1.0, cpu_ms=1.0)

    ov = {"runtime": "openvino", "inference_precision": "f32"}
    trials = [trial("fp32", None, True), trial("ov static", {**ov, "mode": "static"}, True),
              trial("ov dynamic", {**ov, "mode": "dynamic"}, True), trial("plain", {"weight_type": "int8"}, True),
              trial("ov static sq=0.5", {**ov, "mode": "static", "smooth_quant_alpha": 0.5}, False),
              trial("ov ffn", {**ov, "mode": "static", "ignored_nodes": ["x"]}, True)]
    tuner = SimpleNamespace(target=get_target(target), trials=trials, notes=[], runs=[],
                            models=[_Model(t.config) for t in trials])
    tuner.progress = SimpleNamespace(info=tuner.notes.append)
    tuner.run = lambda label, model, config, phase: tuner.runs.append((label, model.quantization, config, phase))
    return tuner


def test_bf16_variants_of_passing_static_openvino_candidates_only_on_bf16_targets(monkeypatch):
    """Only static kinds that passed at f32 (dynamic g32 gained nothing at bf16 on MiniLM, benchmarks/ov_bf16.py)."""
    from multiverse import targets
    from multiverse.errors import IsaMismatchError
    from multiverse.ovtuning import openvino_bf16

    monkeypatch.setattr(targets, "host_flags", lambda: frozenset({"avx512f", "avx512_vnni", targets.BF16_FLAG}))
    for name in ("icelake", "skylake", "sapphirerapids"):  # no bf16 flag in the target: nothing built, nothing said
        tuner = _bf16_tuner(name)
        openvino_bf16(tuner, budget=12)
        assert tuner.runs == [] and tuner.notes == [], name
    tuner = _bf16_tuner("zen4")
    openvino_bf16(tuner, budget=12)
    assert [(label, phase) for label, *_, phase in tuner.runs] == [("ov static bf16", "openvino bf16"),
                                                                  ("ov ffn bf16", "openvino bf16")]
    for _, quantization, config, _ in tuner.runs:  # the same IR, compiled at bf16, recorded as such
        assert quantization == config and quantization["inference_precision"] == "bf16"
    assert tuner.models[1].quantization["inference_precision"] == "f32"  # the f32 trial's record is unchanged
    tuner = _bf16_tuner("zen4")
    openvino_bf16(tuner, budget=6)  # 5 int8 trials used: room for one more
    assert [label for label, *_ in tuner.runs] == ["ov static bf16"]
    monkeypatch.setattr(targets, "host_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    tuner = _bf16_tuner("zen4")
    openvino_bf16(tuner, budget=12)  # a zen4 build on a host without bf16 cannot validate a bf16 candidate
    assert tuner.runs == [] and "lacks avx512_bf16" in tuner.notes[0]
    monkeypatch.setattr(targets, "host_flags", lambda: frozenset({targets.BF16_FLAG}))
    tuner = _bf16_tuner("zen4")

    def compiled_at_f32(*args):  # what OpenVinoSession raises when OpenVINO compiles a bf16 request at f32
        raise IsaMismatchError("asks for OpenVINO inference precision bf16, and OpenVINO compiles it at f32")

    tuner.run = compiled_at_f32
    openvino_bf16(tuner, budget=12)  # the build goes on without bf16 candidates, and says why
    assert len(tuner.trials) == 6 and "bf16 candidates skipped: asks for" in tuner.notes[0]


@pytest.mark.skipif(BF16_FLAG not in host_flags(), reason="this CPU has no AVX-512 BF16")
@pytest.mark.parametrize("target", ["zen4", "icelake"])
def test_the_manifest_records_the_inference_precision_the_shipped_candidate_was_validated_at(tiny_checkpoints,
                                                                                              tmp_path, target):
    from multiverse.pipeline import optimize

    b = optimize(str(tiny_checkpoints["text-classification"]), target, out=tmp_path, runtime="openvino",
                 max_trials=2, tolerance=0.1)
    trials = b.manifest["tuning"]["trials"]
    precisions = [(t["config"] or {}).get("inference_precision") for t in trials]
    if target == "icelake":  # unchanged: no bf16 candidate, f32 everywhere
        assert precisions == [None, "f32"] and b.manifest["quantization"]["inference_precision"] == "f32"
    else:
        assert precisions == [None, "f32", "bf16"] and trials[2]["label"] == trials[1]["label"] + " bf16"
        assert trials[2]["validation"] and trials[2]["phase"] == "openvino bf16"
        shipped = trials[b.manifest["tuning"]["chosen"]]["config"]["inference_precision"]
        assert b.manifest["quantization"]["inference_precision"] == shipped
    p = Predictor.from_bundle(b)
    assert p.session.precision == b.inference_precision == b.manifest["quantization"]["inference_precision"]
