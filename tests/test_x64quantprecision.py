"""s8 int8 bundles stay exact where the runtime lacks VNNI (issue 11 §5, PITFALLS.md).

Where VNNI is hidden from the process (valgrind, some hypervisors) ONNX Runtime takes the u8s8
``VPMADDUBSW`` path, which saturates, while ``/proc/cpuinfo`` still lists VNNI. Sessions are
therefore made with ``session.x64quantprecision=1`` whenever a probe GEMM run through this
process's ONNX Runtime saturates. Where VNNI works the option changes no output bit but costs
about 1.5× CPU time (``benchmarks/x64quantprecision.py``), so it is not set there.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

from multiverse import runtime
from multiverse.targets import host_flags

VNNI_HOST = bool({"avx512_vnni", "avx_vnni"} & host_flags())


def test_probe_model_is_the_documented_matmulinteger():
    """The embedded probe is exactly uint8 A [M, 64] × constant int8 B [64, 16] = 127 (rebuilt with onnx here)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "u8s8_probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, 64])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, 16])],
                              initializer=[numpy_helper.from_array(np.full((64, 16), 127, dtype=np.int8), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="multiverse")
    model.ir_version = 8
    assert zlib.decompress(base64.b64decode(runtime._U8S8_PROBE)) == model.SerializeToString()


@pytest.fixture(scope="module")
def tiny_int8(tiny_checkpoints, tmp_path_factory):
    """A tiny s8 per-channel int8 graph (icelake recipe), built with the pipeline's stages."""
    from multiverse import hub
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.quantize import quantize
    from multiverse.targets import get_target

    out = tmp_path_factory.mktemp("x64qp")
    target = get_target("icelake")
    ckpt = hub.resolve(str(tiny_checkpoints["feature-extraction"]))
    fp32 = export(ckpt, out / "fp32", check=False)
    int8 = quantize(fuse(fp32, out / "fused", ckpt, target, check=False), out / "int8", target.quantization)
    assert int8.quantization["weight_type"] == "int8" and int8.quantization["quantized_ops"]
    return int8


def _option(session) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry(runtime.X64_QUANT_PRECISION)
    except RuntimeError:
        return None


@pytest.mark.skipif(not VNNI_HOST, reason="needs a host whose runtime has VNNI")
def test_option_changes_no_output_bit_here_and_is_not_set(tiny_int8):
    """On this VNNI host the probe is exact, no session gets the option, and the option would
    change no bit of the int8 outputs."""
    from multiverse.inference import Predictor

    assert runtime.u8s8_gemm_saturates() is False
    p = Predictor(tiny_int8.path, tiny_int8.model_dir, "feature-extraction", threads=1)
    assert _option(p.session) is None
    with_opt = runtime.make_session(tiny_int8.path, 1, {runtime.X64_QUANT_PRECISION: "1"})
    assert _option(with_opt) == "1"
    texts = ["Thanks!", "Alice went to Paris with Bob", "the market report said profit growth " * 12, "a",
             "naïve café 😀 in Berlin?"]
    for batch in [[t] for t in texts] + [texts]:
        enc = p.encode(batch)
        a = p.session.run([p.output_name], enc.arrays)[0]
        b = with_opt.run([p.output_name], enc.arrays)[0]
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_sessions_get_the_option_when_the_runtime_saturates(tiny_int8, monkeypatch):
    """Every session (serve, validate, benchmark all use make_session) gets the option when the
    probe saturates, whatever the target recipe says; an explicit setting is kept."""
    monkeypatch.setattr(runtime, "u8s8_gemm_saturates", lambda: True)
    assert _option(runtime.make_session(tiny_int8.path, 1)) == "1"
    assert _option(runtime.make_session(tiny_int8.path, 1, {"session.intra_op.allow_spinning": "0"})) == "1"
    assert _option(runtime.make_session(tiny_int8.path, 1, {runtime.X64_QUANT_PRECISION: "0"})) == "0"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("valgrind") is None or not VNNI_HOST, reason="needs valgrind on a VNNI host")
def test_probe_detects_the_non_vnni_path_under_valgrind():
    """valgrind cannot execute AVX-512, so ORT takes the saturating AVX2 u8s8 path while
    /proc/cpuinfo still lists VNNI: the probe must say so (about 30 s)."""
    code = "from multiverse.runtime import u8s8_gemm_saturates as s; print('SATURATES', s())"
    out = subprocess.run(["valgrind", "--tool=none", "-q", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=600)
    assert "SATURATES True" in out.stdout, out.stdout + out.stderr[-2000:]
