"""Targets are data: every recipe validates, native detection follows the flags, u8s8 never ships without VNNI."""

import pytest

from multiverse.errors import RecipeError
from multiverse.targets import (BF16_FLAG, PRECISION_FLAGS, detect_native, get_target, load_model_recipes, load_targets,
                                missing_flags)

REQUIRED = {"icelake", "cascadelake", "sapphirerapids", "skylake", "haswell", "zen4", "arm64"}


def test_required_targets_exist_and_validate():
    assert REQUIRED <= set(load_targets())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_no_u8s8_without_vnni(name):
    t = get_target(name)
    vnni = {"avx512_vnni", "avx_vnni"} & set(t.isa.required_flags)
    if t.isa.arch == "x86_64" and not vnni:
        # PITFALLS.md: u8s8 saturates in VPMADDUBSW without VNNI.
        assert t.quantization.weight_type == "uint8" or t.quantization.reduce_range
        assert t.session.get("session.x64quantprecision") == "1"


def test_native_detection_from_flags():
    avx2 = frozenset({"avx2", "fma", "sse4_2"})
    assert detect_native(avx2, "x86_64").name == "haswell"
    skx = avx2 | {"avx512f", "avx512bw"}
    assert detect_native(skx, "x86_64").name == "skylake"
    icx = skx | {"avx512_vnni", "vaes", "vpclmulqdq"}
    assert detect_native(icx, "x86_64").name == "icelake"
    spr = icx | {"amx_int8", "avx512_bf16"}
    assert detect_native(spr, "x86_64").name == "sapphirerapids"
    assert detect_native(frozenset({"asimd", "asimddp"}), "aarch64").name == "arm64"
    with pytest.raises(RecipeError):
        detect_native(frozenset(), "riscv64")


def test_only_targets_whose_cpus_all_have_bf16_get_bf16_inference():
    targets = load_targets()
    assert targets["zen4"].inference_precisions == ("f32", "bf16") and PRECISION_FLAGS["bf16"] == (BF16_FLAG,)
    for name in ("icelake", "cascadelake", "sapphirerapids", "skylake", "haswell", "zen3", "arm64"):
        assert targets[name].inference_precisions == ("f32",), name
    for t in targets.values():  # the precision follows the required flags, nothing else
        assert ("bf16" in t.inference_precisions) == (BF16_FLAG in t.isa.required_flags), t.name


def test_aliases_and_unknown_target():
    assert get_target("graviton2").name == "arm64"
    assert get_target("ICELAKE").name == "icelake"
    with pytest.raises(RecipeError, match="Known targets"):
        get_target("pentium4")


def test_missing_flags_names_arch_and_flags():
    t = get_target("icelake")
    assert missing_flags(t, frozenset({"avx2"}), "x86_64") == ["avx512f", "avx512bw", "avx512_vnni"]
    assert missing_flags(t, frozenset(), "aarch64")[0] == "arch:x86_64"


def test_bad_recipe_key_is_a_recipe_error(tmp_path):
    (tmp_path / "bad.yaml").write_text(
        "name: bad\ndescription: x\nisa: {arch: x86_64}\nquantization: {per_chanel: true}\n")
    with pytest.raises(RecipeError, match="per_chanel"):
        load_targets(str(tmp_path))


def test_model_recipes_include_distilbert_emotion():
    r = load_model_recipes()["distilbert-base-uncased-emotion"]
    assert r.model == "bhadresh-savani/distilbert-base-uncased-emotion"
    assert r.task == "text-classification"
