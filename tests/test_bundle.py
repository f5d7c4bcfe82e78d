"""Bundle loading fails closed: hashes, schema, unsafe paths, ISA flags; inspect reports corruption."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time

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
    """Edit the manifest on purpose and reseal it (as someone able to rewrite the bundle could)."""
    _edit(path, lambda m: m.update(changes), reseal=True)


def _edit(path, edit, *, reseal=False):
    m = json.loads((path / bundle.MANIFEST).read_text())
    edit(m)
    if reseal:
        m = bundle.seal(m)
    (path / bundle.MANIFEST).write_text(json.dumps(m))


def _one_line_error(text: str) -> str:
    """The ``error:`` line of CLI output; fails unless it is the only error line and no traceback was printed."""
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _serve_error(path, *args) -> str:
    out = subprocess.run([sys.executable, "-m", "multiverse.cli", "serve", str(path), "--port", "0", *args],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 1 and "Uvicorn running" not in out.stderr, (out.returncode, out.stderr)
    return _one_line_error(out.stderr)


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
    # the graph's size in a unit that fits it (a tiny ONNX graph is some hundred KB, not "0.00 GB")
    text = " ".join(CliRunner().invoke(app, ["inspect", str(copy)]).output.split())
    assert f"model.onnx {bundle.format_bytes((copy / 'model.onnx').stat().st_size)}" in text and " GB" not in text


def test_unknown_schema_and_unsafe_paths_refused(copy):
    _rewrite_manifest(copy, schema_version=99)
    with pytest.raises(BundleError, match="schema"):
        bundle.load(copy)
    _rewrite_manifest(copy, schema_version=bundle.SCHEMA_VERSION, files={"../../etc/passwd": "0" * 64, "model.onnx": "x"})
    with pytest.raises(BundleError, match="unsafe path"):
        bundle.load(copy)


def test_isa_mismatch_refused_unless_allowed(copy):
    _edit(copy, lambda m: m["target"].update(required_flags=["avx512f", "made_up_flag"]), reseal=True)
    b = bundle.load(copy)
    with pytest.raises(IsaMismatchError, match="made_up_flag"):
        b.session_config()
    assert b.session_config(allow_isa_mismatch=True)["session.x64quantprecision"] == "1"
    assert Predictor.from_bundle(b, allow_isa_mismatch=True).predict(["fine"]).results


def test_an_onnx_runtime_bundle_records_no_inference_precision_and_asks_for_none(copy):
    b = bundle.load(copy)
    assert b.inference_precision == "f32" and not any("INFERENCE_PRECISION" in k for k in b.session_config())
    _edit(copy, lambda m: m.update(quantization={**(m.get("quantization") or {}), "inference_precision": "f16"}),
          reseal=True)
    with pytest.raises(BundleError, match="quantization.inference_precision"):
        bundle.load(copy)


def test_write_is_atomic_on_failure(tmp_path, copy):
    with pytest.raises(BundleError, match="missing.onnx"):
        bundle.write(tmp_path / "new", model=tmp_path / "missing.onnx", model_dir=copy, manifest={"task": "x"},
                     readme="", dockerfile="")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# ------------------------------------------------------------------ issue 14 item 4: the manifest is protected
def test_manifest_digest_is_shown_and_can_be_pinned(copy):
    digest = hashlib.sha256((copy / bundle.MANIFEST).read_bytes()).hexdigest()
    result = CliRunner().invoke(app, ["inspect", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["manifest_sha256"] == digest and doc["loads"] and doc["intact"]
    result = CliRunner().invoke(app, ["inspect", str(copy), "--expect-sha256", digest])
    assert result.exit_code == 0 and "matches --expect-sha256" in result.output, result.output
    assert bundle.load(copy, expect_manifest_sha256=digest.upper()).manifest_sha256 == digest


def test_serving_a_bundle_that_failed_its_gate_logs_a_warning(copy, caplog):
    """A bundle written with --keep-failed was served without a word (``multiverse image`` warns about it)."""
    from fastapi.testclient import TestClient

    from multiverse.serve.app import create_app

    _edit(copy, lambda m: m["validation"].update(passed=False), reseal=True)
    with caplog.at_level("INFO", logger="multiverse.serve"), TestClient(create_app(str(copy))) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("FAILED its accuracy gate" in m and str(copy) in m for m in warned), caplog.text
    _edit(copy, lambda m: m["validation"].update(passed=True), reseal=True)
    caplog.clear()
    with caplog.at_level("INFO", logger="multiverse.serve"), TestClient(create_app(str(copy))) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "model ready" in caplog.text and "FAILED" not in caplog.text


def test_tampered_task_is_refused_and_a_pinned_digest_catches_a_resealed_one(copy):
    digest = bundle.manifest_sha256(copy)
    _edit(copy, lambda m: m.update(task="feature-extraction"))  # hand edit: the content digest no longer matches
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 1 and "changed after the bundle was written" in _one_line_error(result.output)
    with pytest.raises(BundleError, match="changed after the bundle was written"):
        Predictor.from_bundle(copy)
    # Someone able to rewrite the bundle can recompute the content digest; the digest pinned outside cannot be.
    _edit(copy, lambda m: None, reseal=True)
    with pytest.raises(BundleError, match="not the pinned"):
        bundle.load(copy, expect_manifest_sha256=digest)
    result = CliRunner().invoke(app, ["inspect", str(copy), "--expect-sha256", digest])
    assert result.exit_code == 1 and "not the pinned" in _one_line_error(result.output)
    assert "not the pinned" in _serve_error(copy, "--manifest-sha256", digest)


def test_removed_files_entry_is_refused(copy):
    _edit(copy, lambda m: m["files"].pop("tokenizer.json"))
    with pytest.raises(BundleError, match="`files`: does not list tokenizer.json"):
        bundle.load(copy)
    _edit(copy, lambda m: None, reseal=True)  # resealed: the schema still requires what every loader reads
    with pytest.raises(BundleError, match="`files`: does not list tokenizer.json"):
        Predictor.from_bundle(copy)
    _edit(copy, lambda m: m["files"].update({"tokenizer.json": bundle.sha256(copy / "tokenizer.json")}), reseal=True)
    bundle.load(copy)
    # an optional file the tokenizer reads when present, dropped from `files`: present but unlisted, so refused
    _edit(copy, lambda m: m["files"].pop("tokenizer_config.json"), reseal=True)
    with pytest.raises(BundleError, match="unlisted file: tokenizer_config.json"):
        Predictor.from_bundle(copy)


def test_unlisted_file_is_refused(copy):
    (copy / "1_Pooling").mkdir()
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 1 and "unlisted file: 1_Pooling/config.json" in result.output, result.output
    with pytest.raises(BundleError, match="unlisted file: 1_Pooling/config.json"):
        bundle.load(copy)


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.update(task="summarization"), "`task`"),
    (lambda m: m.update(max_sequence_length="512"), "`max_sequence_length`"),
    (lambda m: m.pop("target"), "`target`"),
    (lambda m: m["target"].update(required_flags="avx2"), "`target.required_flags`"),
    (lambda m: m["files"].update({"model.onnx": 42}), "`files.model.onnx`"),
    (lambda m: m.pop("content_sha256"), "`content_sha256`"),
], ids=["unknown-task", "wrong-type", "missing-key", "wrong-nested-type", "bad-digest", "no-content-digest"])
def test_schema_invalid_manifest_fails_with_one_line(copy, edit, key):
    _edit(copy, edit, reseal=key != "`content_sha256`")
    with pytest.raises(BundleError) as info:
        Predictor.from_bundle(copy)
    assert key in str(info.value) and "\n" not in str(info.value) and "Rebuild" in str(info.value)
    result = CliRunner().invoke(app, ["inspect", str(copy)])
    assert result.exit_code == 1 and key in _one_line_error(result.output)


def test_serve_refuses_a_schema_invalid_manifest_with_one_line(copy):
    _edit(copy, lambda m: m.update(max_sequence_length="512"), reseal=True)
    assert "`max_sequence_length`" in _serve_error(copy)


def test_module_folder_outside_the_bundle_is_refused(tiny_bundles, tmp_path):
    """modules.json names the folders pooling/Dense configs are read from: one outside the bundle is never read."""
    dest = tmp_path / "b"
    shutil.copytree(tiny_bundles["feature-extraction"], dest)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = json.loads((dest / "modules.json").read_text())
    for module in modules:
        if module["type"].endswith("Pooling"):
            module["path"] = "../elsewhere"
    (dest / "modules.json").write_text(json.dumps(modules))
    _edit(dest, lambda m: m["files"].update({"modules.json": bundle.sha256(dest / "modules.json")}), reseal=True)
    for verify in (True, False):
        with pytest.raises(BundleError, match="module folder '../elsewhere'"):
            Predictor.from_bundle(dest, verify=verify)


# ------------------------------------------------------------------ the bundle's README.md, written with the bundle
def _table(text: str) -> list[list[str]]:
    """The README's candidates table as rows of cells, header first (the separator row dropped)."""
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


@pytest.mark.parametrize("task", ["feature-extraction", "text-classification"])
def test_readme_marks_the_shipped_candidate_with_rounded_p50_and_every_check(tiny_bundles, task):
    b = bundle.load(tiny_bundles[task])
    m, text = b.manifest, (b.path / "README.md").read_text()
    assert not re.search(r"\]\(https?://[^/)\s]*/?\)", text), text  # no link to a bare host (a placeholder)
    header, *rows = _table(text)
    trials = [t for t in m["tuning"]["trials"] if t.get("validation")]
    assert len(rows) == len(trials) >= 2
    p50 = header.index("p50 ms")
    assert [row[p50] for row in rows] == [f"{t['p50_ms']:.2f}" for t in trials]
    chosen = m["tuning"]["trials"][m["tuning"]["chosen"]]
    assert [row[0] for row in rows if "shipped" in row[0]] == [f"**{chosen['label']}** (shipped)"]
    cpu = header.index("CPU ms")  # what the choice compares, and why it shipped
    assert [row[cpu] for row in rows] == [f"{t['cpu_ms']:.2f}" if t.get("cpu_ms") is not None else "-" for t in trials]
    assert f"Why this candidate: {m['tuning']['reason']}." in text
    v = m["validation"]
    assert header[1] == v["metric"]
    if task == "feature-extraction":  # min cosine is gated too: shown beside mean cosine, in the summary and per row
        assert header[1:3] == ["mean_cosine", "min_cosine"]
        check = next(c for c in v["checks"] if c["name"] == "min_cosine")
        assert f"min_cosine {check['value']:.4f} (threshold {check['threshold']:.4f}: pass)" in text
        row = next(row for row in rows if "shipped" in row[0])
        assert row[2] == f"{check['value']:.4f}"
    else:
        assert "min_cosine" not in text
    pins = m["runtime"]["requirements"]
    assert f"onnxruntime=={pins['onnxruntime']}" in (b.path / "requirements.txt").read_text().splitlines()
    assert "pip install --no-deps multiverse-*.whl" in text  # Multiverse is not on PyPI


def test_write_derives_readme_dockerfile_and_requirements_from_the_manifest(tiny_bundles, tmp_path):
    src = bundle.load(tiny_bundles["ranking"])
    manifest = {k: v for k, v in src.manifest.items() if k not in ("schema_version", "model_file", "files", bundle.DIGEST_KEY)}
    manifest["runtime"] = {**manifest["runtime"], "requirements": {"onnxruntime": "9.9.9"}}
    manifest["tuning"] = {**manifest["tuning"], "chosen": None}  # a failed bundle kept with --keep-failed
    b = bundle.write(tmp_path / "copy", model=src.model_path, model_dir=src.path, manifest=manifest)
    assert (b.path / "requirements.txt").read_text().splitlines()[-1] == "onnxruntime==9.9.9"
    assert "ARG BASE_IMAGE=" in (b.path / "Dockerfile").read_text()
    text = (b.path / "README.md").read_text()
    assert text.startswith("# copy\n") and "onnxruntime 9.9.9" in text
    assert "(shipped)" not in text and "none passed the gate" in text


def test_fused_ops_says_which_openvino_frontend_read_the_model():
    from multiverse.bundle_writer import fused_ops

    ov = {"runtime": {"engine": {"name": "openvino"}}, "fusion": {"families": {}}}
    assert fused_ops({**ov, "quantization": {"frontend": "pytorch"}}) == (
        "none: an OpenVINO IR of the transformers model (OpenVINO's PyTorch frontend); OpenVINO fuses when it compiles")
    assert "of the unfused ONNX export;" in fused_ops({**ov, "quantization": {"frontend": "onnx"}})
    ort = {"runtime": {"engine": {"name": "onnxruntime"}}, "fusion": {"families": {"Attention": 6, "Gelu": 6}}}
    assert fused_ops(ort) == "Attention 6, Gelu 6"
