"""OpenVINO IR bundles: written, verified, inspected and run through the same Predictor as ONNX Runtime graphs.

The IR here is ``openvino.convert_model`` of the exported fp32 ONNX graph (what the tuner's OpenVINO candidates
start from), so its outputs must equal ONNX Runtime's on the same graph to float rounding.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("openvino")

from typer.testing import CliRunner  # noqa: E402

from multiverse import bundle  # noqa: E402
from multiverse.cli import app  # noqa: E402
from multiverse.inference import Predictor  # noqa: E402
from multiverse.targets import BF16_FLAG, host_flags  # noqa: E402

TEXTS = ["Thanks!", "OpenVINO runs the same graph as ONNX Runtime here.", "short", "a b c d e f g h i j k l m n o p"]


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    """task → (exported fp32 OnnxModel, OpenVINO fp32 IR path) for every task's tiny checkpoint."""
    import openvino as ov

    from multiverse import hub
    from multiverse.export import export

    out = tmp_path_factory.mktemp("ov")
    built = {}
    for task, path in tiny_checkpoints.items():
        fp32 = export(hub.resolve(str(path)), out / task / "fp32", check=False)
        ir = out / task / "ir" / "openvino_model.xml"
        ir.parent.mkdir(parents=True)
        ov.save_model(ov.convert_model(str(fp32.path)), str(ir), compress_to_fp16=False)
        built[task] = (fp32, ir)
    return built


def _manifest(task: str) -> dict:
    return {"task": task, "source": {"local_path": "/nowhere"}, "precision": "fp32",
            "target": {"name": "native", "arch": None, "required_flags": [], "session": {}}}


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification", "token-classification", "ranking"])
def test_ir_bundle_equals_onnx_runtime(exported, task, tmp_path):
    fp32, ir = exported[task]
    b = bundle.write(tmp_path / "b", model=ir, model_dir=fp32.model_dir, manifest=_manifest(task), readme="r",
                     dockerfile="d")
    assert b.spec.model_file == "model.xml" and (b.path / "model.bin").is_file()
    assert b.external_data() == ["model.bin"] and "model.bin" in b.manifest["files"]
    items = [(t, t[::-1]) for t in TEXTS] if task == "ranking" else TEXTS
    ort = Predictor(fp32.path, fp32.model_dir, task)
    ovp = Predictor.from_bundle(b)
    assert type(ovp.session).__name__ == "OpenVinoSession" and not ovp.per_row
    enc = ort.encode(items)
    np.testing.assert_allclose(ovp.run_batched(enc), ort.run_batched(enc), atol=2e-5)
    # a row's output does not depend on its neighbours (static graph, rows run together)
    together = ovp.run_batched(enc)
    for i, x in enumerate(items):
        alone = ovp.run_batched(ovp.encode([x]))[0]  # per token: [own length, ...]; else [labels]
        np.testing.assert_allclose(together[i][: alone.shape[0]], alone, atol=1e-5)

def _resealed(path, name):
    """Update ``name``'s sha256 in the manifest and reseal it (a buggy tool, not random damage: only the graph
    check can tell)."""
    m = json.loads((path / bundle.MANIFEST).read_text())
    m["files"][name] = bundle.sha256(path / name)
    (path / bundle.MANIFEST).write_text(json.dumps(bundle.seal(m)))


def test_inspect_proves_an_ir_loads_and_refuses_a_truncated_bin(exported, tmp_path):
    fp32, ir = exported["feature-extraction"]
    b = bundle.write(tmp_path / "b", model=ir, model_dir=fp32.model_dir, manifest=_manifest("feature-extraction"),
                     readme="r", dockerfile="d")
    result = CliRunner().invoke(app, ["inspect", str(b.path), "--json"])
    doc = json.loads(result.stdout)
    assert result.exit_code == 0 and doc["intact"] and doc["loads"] and doc["external_data"] == ["model.bin"]
    copy = tmp_path / "copy"
    shutil.copytree(b.path, copy)
    data = (copy / "model.bin").read_bytes()
    (copy / "model.bin").write_bytes(data[: len(data) // 2])
    problems = bundle.verify_files(copy)
    assert any("sha256 mismatch: model.bin" in p for p in problems)
    # One problem for the file, however many constants lie past its end (this IR has dozens), saying what it is.
    short = [p for p in problems if "model.bin" in p and "sha256" not in p]
    assert len(short) == 1 and len(short[0]) < 300, problems
    assert f"it has {len(data) // 2} bytes" in short[0] and "truncated" in short[0]
    _resealed(copy, "model.bin")
    with pytest.raises(bundle.BundleError) as info:
        bundle.load(copy)
    message = str(info.value)
    assert len(message) < 600 and "\n" not in message, message
    assert "truncated" in message and "Copy it again" in message and "multiverse optimize" in message
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "CORRUPTED" in text and "rebuild it with `multiverse optimize`" in text


def test_a_negative_ir_offset_is_reported_as_a_corrupted_graph(exported, tmp_path):
    import re

    fp32, ir = exported["feature-extraction"]
    b = bundle.write(tmp_path / "b", model=ir, model_dir=fp32.model_dir, manifest=_manifest("feature-extraction"),
                     readme="r", dockerfile="d")
    xml = (b.path / "model.xml").read_text()
    (b.path / "model.xml").write_text(re.sub(r'offset="(\d+)"', r'offset="-\1"', xml, count=1).replace(
        'offset="-0"', 'offset="-8"'))
    _resealed(b.path, "model.xml")
    problems = bundle.verify_files(b.path)
    assert len(problems) == 1, problems
    assert "model.xml gives 1 tensor(s) a negative offset or size" in problems[0] and "corrupted" in problems[0]
    assert "needs bytes -" not in problems[0]
    with pytest.raises(bundle.BundleError, match="rebuild it with `multiverse optimize`"):
        bundle.load(b.path)


def test_inspect_gives_small_ir_sizes_in_kb_or_mb_not_0_gb(exported, tmp_path):
    fp32, ir = exported["feature-extraction"]
    b = bundle.write(tmp_path / "b", model=ir, model_dir=fp32.model_dir, manifest=_manifest("feature-extraction"),
                     readme="r", dockerfile="d")
    result = CliRunner().invoke(app, ["inspect", str(b.path)])
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "GB" not in text, text
    assert f"model.bin {bundle.format_bytes((b.path / 'model.bin').stat().st_size)}" in text
    assert f"model.xml {bundle.format_bytes((b.path / 'model.xml').stat().st_size)}" in text


def test_format_bytes_picks_the_unit():
    assert [bundle.format_bytes(n) for n in (0, 812, 4_100, 17_400_000, 123_456_789, 2_240_000_000)] == [
        "0 B", "812 B", "4.10 KB", "17.4 MB", "123 MB", "2.24 GB"]


def test_compile_properties_default_to_f32_and_take_overrides():
    from multiverse.ovsession import compile_properties

    props = compile_properties(2, {"session.intra_op.allow_spinning": "0"})
    assert props == {"INFERENCE_NUM_THREADS": "2", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                     "ENABLE_CPU_PINNING": "NO"}
    assert compile_properties(1, {"openvino.INFERENCE_PRECISION_HINT": "bf16"})["INFERENCE_PRECISION_HINT"] == "bf16"


# ---- inference precision: bf16 only where the bundle says so and the CPU has it ----------------------------
ZEN4_FLAGS = ["avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]


def _bf16_bundle(exported, tmp_path, required_flags=ZEN4_FLAGS, precision="bf16"):
    """The feature-extraction IR written as a bundle whose manifest says OpenVINO validated it at ``precision``."""
    fp32, ir = exported["feature-extraction"]
    manifest = {**_manifest("feature-extraction"), "precision": "int8",
                "target": {"name": "zen4", "arch": "x86_64", "required_flags": list(required_flags), "session": {}},
                "quantization": {"runtime": "openvino", "mode": "static", "inference_precision": precision}}
    return bundle.write(tmp_path / f"b-{precision}", model=ir, model_dir=fp32.model_dir, manifest=manifest,
                        readme="r", dockerfile="d")


def _host_without_bf16(monkeypatch):
    from multiverse import targets

    flags = targets.host_flags() - {targets.BF16_FLAG, "amx_bf16"}
    monkeypatch.setattr(targets, "host_flags", lambda: flags | {"avx512f", "avx512bw", "avx512_vnni"})


@pytest.mark.parametrize("required_flags", [ZEN4_FLAGS, []], ids=["zen4-target", "target-without-the-flag"])
def test_a_bf16_bundle_refuses_a_host_without_bf16(exported, tmp_path, monkeypatch, required_flags):
    from multiverse.errors import IsaMismatchError
    from multiverse.ovsession import PRECISION_KEY

    b = _bf16_bundle(exported, tmp_path, required_flags)
    _host_without_bf16(monkeypatch)
    assert b.inference_precision == "bf16" and b.missing_flags() == ["avx512_bf16"]
    with pytest.raises(IsaMismatchError) as info:
        Predictor.from_bundle(b)
    message = str(info.value)
    assert "avx512_bf16" in message and "validated computing its non-int8 layers in bf16" in message
    assert "--target native" in message and "\n" not in message
    # --allow-isa-mismatch runs it, at f32 (said so in the message above), never asking OpenVINO for bf16
    assert PRECISION_KEY not in b.session_config(allow_isa_mismatch=True)
    assert Predictor.from_bundle(b, allow_isa_mismatch=True).session.precision == "f32"
    result = CliRunner().invoke(app, ["inspect", str(b.path), "--json"])
    doc = json.loads(result.stdout)
    assert doc["loads"] and not doc["host_can_run"] and doc["missing_flags"] == ["avx512_bf16"]


def test_an_openvino_session_asked_for_bf16_refuses_to_run_at_f32(exported, monkeypatch):
    """Whatever /proc/cpuinfo says: when OpenVINO compiles a bf16-validated IR at f32 (a CPU or process without
    bf16), the session is refused rather than run at a precision the gate did not validate."""
    from multiverse.errors import IsaMismatchError
    from multiverse.ovsession import PRECISION_KEY, OpenVinoSession

    _, ir = exported["feature-extraction"]
    monkeypatch.setattr(OpenVinoSession, "precision", property(lambda self: "f32"))
    with pytest.raises(IsaMismatchError, match="asks for OpenVINO inference precision bf16, and OpenVINO compiles it at f32"):
        OpenVinoSession(ir, 1, {PRECISION_KEY: "bf16"})
    assert OpenVinoSession(ir, 1, {}).properties["INFERENCE_PRECISION_HINT"] == "f32"


@pytest.mark.skipif(BF16_FLAG not in host_flags(), reason="this CPU has no AVX-512 BF16")
def test_a_bf16_bundle_compiles_in_bf16_where_the_cpu_has_it(exported, tmp_path):
    from multiverse.ovsession import PRECISION_KEY

    b16, b32 = _bf16_bundle(exported, tmp_path), _bf16_bundle(exported, tmp_path, precision="f32")
    assert b16.session_config() == {PRECISION_KEY: "bf16"} and b32.session_config() == {}
    p16, p32 = Predictor.from_bundle(b16), Predictor.from_bundle(b32)
    assert (p16.session.precision, p32.session.precision) == ("bf16", "f32")
    enc = p32.encode(TEXTS)
    a, b = p16.run_batched(enc), p32.run_batched(enc)
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(b).max()  # bf16 rounding: close, not equal
    text = " ".join(CliRunner().invoke(app, ["inspect", str(b16.path)]).output.split())
    assert "inference precision bf16" in text and "can run it" in text
    # serve's throughput mode adds OpenVINO's THROUGHPUT hint and keeps the bundle's precision
    from multiverse.serve.settings import ServeSettings
    from multiverse.serve.throughput import load_predictor

    served, _ = load_predictor(b16.path, ServeSettings(performance_hint="throughput"))
    assert served.session.precision == "bf16" and served.session.properties["PERFORMANCE_HINT"] == "THROUGHPUT"


def test_an_unknown_inference_precision_is_refused_by_the_schema(exported, tmp_path):
    with pytest.raises(bundle.BundleError, match="quantization.inference_precision"):
        _bf16_bundle(exported, tmp_path, precision="f16")
