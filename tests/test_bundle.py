"""Bundle loading fails closed: hashes, schema, unsafe paths, ISA flags; inspect reports corruption."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from multiverse import bundle
from multiverse.cli import app
from multiverse.errors import BundleError, IsaMismatchError
from multiverse.inference import Predictor


@pytest.fixture
def copy(tiny_bundles, tmp_path):
    dest = tmp_path / "b"
    shutil.copytree(tiny_bundles["text-classification"], dest)
    return dest


def _rewrite_manifest(path, **changes):
    m = json.loads((path / bundle.MANIFEST).read_text())
    m.update(changes)
    (path / bundle.MANIFEST).write_text(json.dumps(m))


def test_corrupted_file_detected_by_inspect_and_loader(copy):
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 1
    assert "sha256 mismatch: model.onnx" in result.output
    with pytest.raises(BundleError, match="corrupted"):
        bundle.load(copy)


def test_inspect_intact_bundle(copy):
    result = CliRunner().invoke(app, ["inspect", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["intact"] and doc["host_can_run"] and doc["manifest"]["task"] == "text-classification"


def test_unknown_schema_and_unsafe_paths_refused(copy):
    _rewrite_manifest(copy, schema_version=99)
    with pytest.raises(BundleError, match="schema"):
        bundle.load(copy)
    _rewrite_manifest(copy, schema_version=bundle.SCHEMA_VERSION, files={"../../etc/passwd": "0" * 64, "model.onnx": "x"})
    with pytest.raises(BundleError, match="unsafe path"):
        bundle.load(copy)


def test_isa_mismatch_refused_unless_allowed(copy):
    m = json.loads((copy / bundle.MANIFEST).read_text())
    m["target"]["required_flags"] = ["avx512f", "made_up_flag"]
    (copy / bundle.MANIFEST).write_text(json.dumps(m))
    b = bundle.load(copy)
    with pytest.raises(IsaMismatchError, match="made_up_flag"):
        b.session_config()
    assert b.session_config(allow_isa_mismatch=True)["session.x64quantprecision"] == "1"
    assert Predictor.from_bundle(b, allow_isa_mismatch=True).predict(["fine"]).results


def test_write_is_atomic_on_failure(tmp_path, copy):
    with pytest.raises(BundleError, match="missing.onnx"):
        bundle.write(tmp_path / "new", model=tmp_path / "missing.onnx", model_dir=copy, manifest={"task": "x"},
                     readme="", dockerfile="")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
