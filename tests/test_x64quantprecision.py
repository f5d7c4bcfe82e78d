"""``session.x64quantprecision=1`` on every s8-weight x86 target (issue 11 §5, PITFALLS.md).

Where VNNI is hidden from the process (valgrind, some hypervisors) an s8 bundle silently takes
the u8s8 ``VPMADDUBSW`` path, which saturates; the option makes ORT use the exact path. On a
host with VNNI it must change no output bit (timing: ``benchmarks/x64quantprecision.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from multiverse.bundle import Bundle
from multiverse.targets import load_targets

S8_X86 = sorted(n for n, t in load_targets().items() if t.isa.arch == "x86_64" and t.quantization.weight_type == "int8")


def test_the_s8_x86_targets_are_the_vnni_ones():
    assert {"icelake", "cascadelake", "sapphirerapids", "zen4"} <= set(S8_X86)


@pytest.mark.parametrize("name", S8_X86)
def test_every_s8_x86_target_sets_x64quantprecision(name, tmp_path):
    target = load_targets()[name]
    assert target.session.get("session.x64quantprecision") == "1"
    # ... and a bundle built for it asks for it when loaded (pipeline copies target.session into the manifest).
    manifest = {"target": {"name": name, "arch": "x86_64", "required_flags": [], "session": dict(target.session)}}
    assert Bundle(tmp_path, manifest).session_config()["session.x64quantprecision"] == "1"


def test_x64quantprecision_changes_no_output_bit_here(tiny_checkpoints, tmp_path):
    """On this host (VNNI, AMX) the option leaves every int8 output bit unchanged."""
    from multiverse import hub
    from multiverse.export import export
    from multiverse.fuse import fuse
    from multiverse.inference import Predictor
    from multiverse.quantize import quantize
    from multiverse.runtime import make_session
    from multiverse.targets import get_target, host_flags

    if "avx512_vnni" not in host_flags() and "avx_vnni" not in host_flags():
        pytest.skip("needs a VNNI host (without VNNI the option is expected to change outputs)")
    target = get_target("icelake")
    ckpt = hub.resolve(str(tiny_checkpoints["feature-extraction"]))
    fp32 = export(ckpt, tmp_path / "fp32", check=False)
    fused = fuse(fp32, tmp_path / "fused", ckpt, target, check=False)
    int8 = quantize(fused, tmp_path / "int8", target.quantization)
    assert int8.quantization["weight_type"] == "int8" and int8.quantization["quantized_ops"]
    p = Predictor(int8.path, int8.model_dir, "feature-extraction", threads=1)
    with_opt = make_session(int8.path, 1, {"session.x64quantprecision": "1"})
    texts = ["Thanks!", "Alice went to Paris with Bob", "the market report said profit growth " * 12, "a",
             "naïve café 😀 in Berlin?"]
    for batch in [[t] for t in texts] + [texts]:
        enc = p.encode(batch)
        a = p.session.run([p.output_name], enc.arrays)[0]
        b = with_opt.run([p.output_name], enc.arrays)[0]
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
