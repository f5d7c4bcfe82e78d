"""OpenVINO int8 candidates (``multiverse.ovquant``) on a tiny exported encoder: the IR keeps the ONNX names,
loads and runs on OpenVINO's CPU plugin close to the fp32 ONNX graph, nodes named in ``ignored_nodes`` stay fp32,
NNCF writes nothing to stdout, and without openvino/nncf the install command is named."""

from __future__ import annotations

import os

import numpy as np
import pytest

from multiverse.errors import MissingExtraError, QuantizationError
from multiverse.ovquant import OvInt8Config

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    from support import tiny_checkpoint

    from multiverse import hub
    from multiverse.export import export

    root = tmp_path_factory.mktemp("ovquant")
    ckpt = hub.from_folder(tiny_checkpoint("feature-extraction", root / "ckpt"), task="feature-extraction")
    return export(ckpt, root / "fp32", check=False)


@pytest.fixture(scope="module")
def texts():
    from multiverse import evaldata

    return [t for t in evaldata.builtin("feature-extraction").texts if len(t.split()) < 60]


def _batches(model, texts):
    from multiverse.tasks import TextTokenizer

    tok = TextTokenizer(model.model_dir)
    return [tok.encode([t], NAMES) for t in texts]


def _embeddings(model, encs) -> np.ndarray:
    """Pooled embeddings [n, 32] of the fp32 ONNX graph (ONNX Runtime) or of an IR (OpenVINO, f32 precision)."""
    import json

    from multiverse.tasks import make_handler

    handler = make_handler("feature-extraction", model.model_dir, json.loads((model.model_dir / "config.json").read_text()))
    if model.path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
        return np.concatenate([handler.vectors(sess.run(["last_hidden_state"], e.arrays)[0], e) for e in encs])
    import openvino as ov

    compiled = ov.Core().compile_model(str(model.path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    return np.concatenate([handler.vectors(request.infer(e.arrays)[compiled.output("last_hidden_state")], e)
                           for e in encs])


def test_label_names_each_knob():
    assert OvInt8Config().label() == "ov s8 static"
    assert OvInt8Config(smooth_quant_alpha=0.5, ignored_nodes=("a", "b")).label() == "ov s8 static sq=0.5 (2 fp32)"
    assert OvInt8Config(preset="mixed", smooth_quant_alpha=-1, fast_bias_correction=False,
                        ignored_types=("MatMul",)).label() == "ov s8 static mixed sq off full-bc -MatMul"
    assert OvInt8Config(mode="dynamic").label() == "ov s8 dynamic g32"
    assert OvInt8Config(mode="dynamic", dynamic_group_size=64, ignored_nodes=("a",)).label() == "ov s8 dynamic g64 (1 fp32)"
    with pytest.raises(ValueError, match="mode static only"):
        OvInt8Config(mode="dynamic", smooth_quant_alpha=0.5)
    with pytest.raises(ValueError):
        OvInt8Config(bogus=1)
    with pytest.raises(ValueError):
        OvInt8Config(smooth_quant_alpha=1.5)


def test_convert_keeps_the_onnx_input_and_output_names(fp32):
    from multiverse.ovquant import convert, node_names

    model = convert(fp32.path)
    assert [p.get_any_name() for p in model.inputs] == list(NAMES)
    assert "last_hidden_state" in model.outputs[0].get_names()
    names = node_names(model)
    # 2 layers × (query, key, value, attention output, intermediate, output) weight MatMuls, ONNX names kept
    assert len(names) == 12 and names[0] == "/encoder/layer.0/attention/self/query/MatMul", names


def test_quantized_ir_runs_close_to_fp32_and_keeps_ignored_nodes_fp32(fp32, texts, tmp_path, capfd):
    import openvino as ov

    from multiverse.ovquant import int8_nodes, node_names, quantize_ov

    encs = _batches(fp32, texts)
    calibration = [e.arrays for e in encs[::3]]
    names = node_names(fp32)
    kept = (names[0], names[-1])
    q = quantize_ov(fp32, tmp_path / "ov", OvInt8Config(ignored_nodes=kept), calibration)
    assert capfd.readouterr().out == ""  # NNCF's progress bars and log lines went to stderr
    assert q.path == tmp_path / "ov" / "model.xml" and (tmp_path / "ov" / "model.bin").is_file()
    assert q.stage == "int8" and q.model_dir == fp32.model_dir
    info = q.quantization
    assert info["runtime"] == "openvino" and info["ignored_nodes"] == list(kept)
    assert info["calibration_size"] == len(calibration) and info["quantized_ops"]["FakeQuantize"] > 0
    assert set(int8_nodes(q.path)) == set(names) - set(kept) and info["quantized_ops"]["int8_nodes"] == 10
    ov.Core().compile_model(str(q.path), "CPU")  # loads with the default (bf16 where the CPU has it) precision
    ref, got = _embeddings(fp32, encs), _embeddings(q, encs)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    # Static int8 of a random 2-layer, hidden-32 encoder, 264 short built-in texts (a third of them calibrated on),
    # f32 precision: measured mean 0.9996, min 0.989. The bound leaves room for other CPUs' kernels and still fails
    # on a broken graph (wrong scales, inputs or outputs give cosines far below 0.9).
    assert cos.mean() >= 0.995 and cos.min() >= 0.97, (cos.mean(), cos.min())


def test_dynamic_mode_has_int8_weights_and_records_the_group_size(fp32, texts, tmp_path):
    import openvino as ov

    from multiverse.ovquant import int8_nodes, node_names, quantize_ov

    given = [e.arrays for e in _batches(fp32, texts[:4])]  # data-free: unused, and the manifest says so
    q = quantize_ov(fp32, tmp_path / "dyn", OvInt8Config(mode="dynamic", dynamic_group_size=16), given)
    assert q.quantization["mode"] == "dynamic" and q.quantization["quantized_ops"].get("FakeQuantize", 0) == 0
    assert q.quantization["calibration_size"] == 0
    assert int8_nodes(q.path) == node_names(fp32)
    core = ov.Core()
    model = core.read_model(str(q.path))
    assert model.get_rt_info(["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"]).astype(str) == "16"
    assert int(core.compile_model(model, "CPU").get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 16
    encs = _batches(fp32, texts[:60])
    ref, got = _embeddings(fp32, encs), _embeddings(q, encs)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() >= 0.99, cos.min()  # int8 weights, activations quantized per 16 channels at run time


def test_bad_calibration_or_unknown_node_is_a_quantization_error(fp32, tmp_path):
    from multiverse.ovquant import quantize_ov

    with pytest.raises(QuantizationError, match="calibration inputs"):
        quantize_ov(fp32, tmp_path / "a", OvInt8Config(), [])
    one = [{k: np.ones((1, 4), np.int64) for k in NAMES}]
    with pytest.raises(QuantizationError, match="node_names"):
        quantize_ov(fp32, tmp_path / "b", OvInt8Config(ignored_nodes=("/no/such/MatMul",)), one)


def test_without_openvino_or_nncf_the_install_command_is_named(fp32, tmp_path, monkeypatch):
    from support.extras import hide_distribution

    from multiverse.ovquant import quantize_ov

    hide_distribution(monkeypatch, "nncf")
    with pytest.raises(MissingExtraError, match=r"nncf not installed\): pip install") as exc:
        quantize_ov(fp32, tmp_path, OvInt8Config(), [])
    assert exc.value.exit_code == 2


TELEMETRY_PROBE = """
import multiprocessing, sys
started = []
start = multiprocessing.Process.start
multiprocessing.Process.start = lambda self: (started.append(self._target), start(self))[1]
from multiverse.ovquant import OvInt8Config, convert, node_names, quantize_ov
from multiverse.export import OnnxModel
from pathlib import Path
fp32 = OnnxModel(path=Path(sys.argv[1]), model_dir=Path(sys.argv[1]).parent, stage="fp32", opset=18)
model = convert(fp32.path)
feeds = [{i.get_any_name(): __import__("numpy").ones((1, 8), dtype="int64") for i in model.inputs}]
quantize_ov(fp32, sys.argv[2], OvInt8Config(), feeds)
print(len(started))
"""


def test_openvino_and_nncf_send_no_telemetry(fp32, tmp_path):
    """openvino-telemetry forks a process per event (openvino's import, each conversion, each NNCF call) to send it
    to Google Analytics; offline such a child hung a build at exit. A fresh interpreter converts and quantizes with
    none started."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CI", "NNCF_CI")}
    proc = subprocess.run([sys.executable, "-c", TELEMETRY_PROBE, str(fp32.path), str(tmp_path / "q")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "0", proc.stdout[-2000:] + proc.stderr[-2000:]
