"""The base install is the serving runtime: no build stack on the serving path, and a one-line hint without it.

1. In a subprocess of the test venv (which has the build stack installed), importing the serving
   path and loading and running a bundle leaves torch, transformers, optimum, onnx,
   neural-compressor, sentence-transformers and datasets out of ``sys.modules``.
2. The wheel installed without extras in a fresh venv: ``multiverse serve BUNDLE`` answers, and
   ``multiverse optimize`` / ``validate`` / the library's ``multiverse.optimize`` fail with one
   line naming ``pip install "multiverse[optimize]"`` (exit code 2). OpenVINO is not in it.
3. An OpenVINO IR bundle's own ``requirements.txt`` plus the wheel (``--no-deps``), as its README and the
   image install it, in a fresh venv: ``multiverse serve`` answers for it, without the build stack or NNCF.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest

from multiverse.extras import HINT
from multiverse.image import BUILD_STACK, build_wheel

FORBIDDEN = ("torch", "transformers", "optimum", "onnx", "neural_compressor", "sentence_transformers", "datasets")

PROBE = """
import json, sys
from pathlib import Path
import multiverse, multiverse.cli, multiverse.serve, multiverse.inference, multiverse.image, multiverse.runtime
from multiverse.serve.app import create_app
from multiverse.serve.server import serve
from multiverse.bundle import load
import uvicorn
b = load(sys.argv[1])
p = multiverse.Predictor.from_bundle(b, threads=1)
p.predict(["hello world", "a second text"])
create_app(b)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in %r)))
""" % (FORBIDDEN,)


def test_serving_path_imports_no_build_stack(tiny_bundles):
    for task in ("feature-extraction", "token-classification"):
        out = subprocess.run([sys.executable, "-c", PROBE, str(tiny_bundles[task])], check=True,
                             capture_output=True, text=True, timeout=120).stdout
        assert json.loads(out.strip().splitlines()[-1]) == [], task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lean_venv(tmp_path_factory) -> Path:
    """A fresh venv with the Multiverse wheel installed without extras (pip resolves the base install)."""
    wheel = build_wheel()
    env_dir = tmp_path_factory.mktemp("lean") / "venv"
    venv.create(env_dir, with_pip=True)
    done = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir


def test_lean_install_has_no_build_stack(lean_venv):
    out = subprocess.run([str(lean_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    names = {d["name"].lower().replace("_", "-") for d in json.loads(out)}
    assert "onnxruntime" in names and "fastapi" in names and "multiverse" in names
    assert not names & set(BUILD_STACK), names & set(BUILD_STACK)
    assert "openvino" not in names  # only an OpenVINO bundle's requirements.txt (or the openvino extra) adds it


@pytest.mark.parametrize("args", [["optimize", "--target", "native"], ["validate", "BUNDLE"]])
def test_lean_install_build_commands_fail_with_one_line(lean_venv, tiny_bundles, args, tmp_path):
    args = [str(tiny_bundles["feature-extraction"]) if a == "BUNDLE" else a for a in args]
    done = subprocess.run([str(lean_venv / "bin" / "multiverse"), *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and HINT in lines[0], done.stderr
    assert done.stdout == ""


def test_lean_install_library_optimize_says_what_to_install(lean_venv):
    done = subprocess.run([str(lean_venv / "bin" / "python"), "-c", "import multiverse; multiverse.optimize"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "MissingExtraError" in done.stderr and HINT in done.stderr


def _serves_one_embedding(env_dir: Path, bundle: Path, tmp_path: Path) -> None:
    """``multiverse serve`` of ``env_dir`` answers ``/embed`` for ``bundle`` (hidden size 32), then exits 0 on SIGTERM.
    PYTHONPATH is dropped so the venv runs its installed copy, not a source checkout."""
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([str(env_dir / "bin" / "multiverse"), "serve", str(bundle), "--host", "127.0.0.1",
                             "--port", str(port), "--threads", "1"], stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/embed", data=json.dumps({"inputs": ["hello"]}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            emb = json.loads(r.read())
        assert len(emb) == 1 and len(emb[0]) == 32  # tiny checkpoint: hidden size 32
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        log.close()


def test_lean_install_serves_a_bundle(lean_venv, tiny_bundles, tmp_path):
    _serves_one_embedding(lean_venv, tiny_bundles["feature-extraction"], tmp_path)


@pytest.fixture(scope="module")
def ov_lean_venv(tiny_ov_bundle, tmp_path_factory) -> Path:
    """A fresh venv with an OpenVINO bundle's ``requirements.txt``, then the wheel ``--no-deps`` (the image's steps)."""
    wheel = build_wheel()
    env_dir = tmp_path_factory.mktemp("lean-ov") / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    for args in (["-r", str(tiny_ov_bundle / "requirements.txt")], ["--no-deps", str(wheel)]):
        done = subprocess.run([py, "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    return env_dir


def test_openvino_bundle_serves_from_its_requirements_and_the_wheel(ov_lean_venv, tiny_ov_bundle, tmp_path):
    out = subprocess.run([str(ov_lean_venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    names = {d["name"].lower().replace("_", "-") for d in json.loads(out)}
    assert {"openvino", "onnxruntime", "multiverse"} <= names
    assert not names & {*BUILD_STACK, "nncf"}, names & {*BUILD_STACK, "nncf"}
    _serves_one_embedding(ov_lean_venv, tiny_ov_bundle, tmp_path)
