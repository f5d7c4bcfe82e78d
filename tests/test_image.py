"""`multiverse image`: bundle → OCI image → running container that answers like the host.

The end-to-end test uses a real container engine (podman here). On the project's machines no image
registry is reachable, so the base image is ``localhost/debian-python:bookworm`` built by
``.ci/base-image.sh`` (``$MULTIVERSE_TEST_BASE_IMAGE`` overrides it), and this host's builder and
run flags (runc, host network, ulimits, the host's certificates and pip configuration) come from
``$MULTIVERSE_TEST_ENGINE_ARGS`` / ``$MULTIVERSE_TEST_CONTAINER_ARGS`` (defaults below): the test passes
them to ``multiverse image`` through ``$MULTIVERSE_BUILDER_ARGS``; ``multiverse image`` itself has no
such defaults. Without an engine or base image the container tests skip with the reason,
except under CI (``CI`` set), where they fail: CI must not pass by skipping them.

The bad-input and ``--dockerfile-only`` tests need no engine. The container tests run once per runtime: the
ONNX bundle and an OpenVINO IR bundle (``optimize --runtime openvino``), whose ``requirements.txt`` adds
``openvino``; both images share the base and wheel layers, the IR image builds in about 40 s more.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from multiverse.image import BUILD_STACK, find_builder, read_requirements

BASE_IMAGE = os.environ.get("MULTIVERSE_TEST_BASE_IMAGE", "localhost/debian-python:bookworm")
# This host's quirks (PITFALLS.md "Containers on these machines"): crun fails on its hybrid cgroups, so runc;
# no bridge networking, so the host network; pip inside needs the host's certificates and pip configuration.
ENGINE_ARGS = shlex.split(os.environ.get("MULTIVERSE_TEST_ENGINE_ARGS", "--runtime runc"))  # before `run`
CONTAINER_ARGS = shlex.split(os.environ.get(
    "MULTIVERSE_TEST_CONTAINER_ARGS",
    "--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 -v /etc/ssl/certs:/etc/ssl/certs:ro"
    + (" -v /etc/pip.conf:/etc/pip.conf:ro" if Path("/etc/pip.conf").is_file() else "")))
BUILDER_ARGS = ENGINE_ARGS + CONTAINER_ARGS  # `podman build` takes --runtime as a build flag too
TAG = "localhost/multiverse-test/tiny-fe:latest"
TAGS = {"onnxruntime": TAG, "openvino": "localhost/multiverse-test/tiny-fe-ov:latest"}
#: Container vs host Predictor, max |difference|: ORT and OpenVINO on the same CPU run the same kernels.
SERVE_TOLERANCE = {"onnxruntime": 1e-6, "openvino": 1e-5}
TEXTS = ["Hello world", "The naïve café owner served crème brûlée.", "a", "A longer text. " * 40]


def run_cli(*args, env=None, timeout=1800, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "multiverse.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "300", **(env or {})})


# --------------------------------------------------------------------------- no engine needed

def test_dockerfile_only_writes_the_context(tiny_bundles, tmp_path):
    bundle = tiny_bundles["feature-extraction"]
    r = run_cli("image", bundle, "--dockerfile-only", "--context", tmp_path / "ctx")
    assert r.returncode == 0, r.stderr
    ctx = Path(r.stdout.strip())
    assert ctx == (tmp_path / "ctx").resolve()
    assert (ctx / "bundle" / "multiverse.json").is_file() and list((ctx / "wheels").glob("multiverse-*.whl"))
    text = (ctx / "Dockerfile").read_text()
    for needle in ("ARG BASE_IMAGE=python:3.11-slim", "FROM ${BASE_IMAGE}", "python3 -m venv /opt/venv",
                   "--no-deps /opt/multiverse/wheels/*.whl", "-r /opt/multiverse/requirements.txt", "USER 10001",
                   "EXPOSE 8080", "STOPSIGNAL SIGTERM", "HEALTHCHECK", "/v2/health/ready",
                   "exec multiverse serve /bundle --host 0.0.0.0 --port"):
        assert needle in text, needle
    # The bundle pins its runtime: exact versions, onnxruntime first of all, the same as this environment.
    from importlib.metadata import version

    pins = read_requirements(ctx / "bundle" / "requirements.txt")
    assert pins["onnxruntime"] == version("onnxruntime") and pins["tokenizers"] == version("tokenizers")
    assert {"numpy", "fastapi", "uvicorn"} <= set(pins) and not set(pins) & set(BUILD_STACK)
    assert "openvino" not in pins  # an ONNX bundle's image does not carry OpenVINO
    manifest = json.loads((bundle / "multiverse.json").read_text())
    assert manifest["runtime"]["requirements"] == pins and "requirements.txt" in manifest["files"]
    assert (bundle / "Dockerfile").read_text() == text  # the bundle's own Dockerfile is this one


def test_corrupted_bundle_is_refused_before_building(tiny_bundles, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundles["feature-extraction"], bundle)
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    # An empty PATH (no engine) proves the bundle is checked first: the error is the hash, not the engine.
    r = run_cli("image", bundle, "--tag", "x/y:1", env={"PATH": str(tmp_path / "empty")})
    assert r.returncode == 1 and "sha256" in r.stderr and "refusing" in r.stderr, r.stderr
    assert "podman" not in r.stderr


def test_no_container_engine_is_one_line(tiny_bundles, tmp_path):
    (tmp_path / "bin").mkdir()
    r = run_cli("image", tiny_bundles["feature-extraction"], "--tag", "x/y:1", env={"PATH": str(tmp_path / "bin")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "apt-get install podman" in lines[0]


@pytest.mark.parametrize("context", ["a-file", "a-file/sub"])
def test_a_context_that_cannot_be_a_folder_is_a_usage_error(tiny_bundles, tmp_path, context):
    """``--context`` naming a file (or a folder under one) ended in a NotADirectoryError traceback; it is a
    one-line usage error, and the file is left as it was."""
    (tmp_path / "a-file").write_text("keep me")
    r = run_cli("image", tiny_bundles["feature-extraction"], "--tag", "x/y:1", "--dockerfile-only",
                "--context", tmp_path / context)
    assert r.returncode == 2 and "is a file, not a folder" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (tmp_path / "a-file").read_text() == "keep me"


@pytest.mark.parametrize("tag", ["UPPER/case", "no spaces:1", ""])
def test_bad_tag_is_a_usage_error(tiny_bundles, tag):
    r = run_cli("image", tiny_bundles["feature-extraction"], "--tag", tag)
    assert r.returncode == 2 and "--tag" in r.stderr, r.stderr


# --------------------------------------------------------------------------- a real engine

def _engine() -> str:
    try:
        engine = find_builder("podman")
    except Exception as exc:  # noqa: BLE001 - ImageError / UsageError
        reason = f"no container engine: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (.ci/run installs podman; CI must not skip the image test)")
        pytest.skip(reason)
    if subprocess.run([engine, "image", "exists", BASE_IMAGE]).returncode != 0:
        reason = f"base image {BASE_IMAGE} is missing: run `bash .ci/base-image.sh`"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def _image_size(engine: str, ref: str) -> int:
    return int(subprocess.run([engine, "image", "inspect", ref, "--format", "{{.Size}}"], check=True,
                              capture_output=True, text=True).stdout.strip())


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def built_image(request, tiny_bundles, tmp_path_factory):
    """The image of the tiny feature-extraction bundle, per runtime. Only the ONNX one is also ``--save``d (the
    archive path is the same code whatever the bundle)."""
    runtime = request.param
    engine = _engine()
    bundle = tiny_bundles["feature-extraction"] if runtime == "onnxruntime" else request.getfixturevalue("tiny_ov_bundle")
    tag = TAGS[runtime]
    archive = tmp_path_factory.mktemp("image") / "image.tar" if runtime == "onnxruntime" else None
    previous = subprocess.run([engine, "image", "inspect", tag, "--format", "{{.Id}}"], capture_output=True,
                              text=True).stdout.strip()
    t0 = time.monotonic()
    r = run_cli("image", bundle, "--tag", tag, "--builder", engine, "--base-image", BASE_IMAGE,
                *(["--save", archive] if archive else []), env={"MULTIVERSE_BUILDER_ARGS": shlex.join(BUILDER_ARGS)})
    build_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-5000:]
    assert r.stdout.strip() == tag
    print(f"\n{runtime} image build {build_s:.1f} s")
    current = subprocess.run([engine, "image", "inspect", tag, "--format", "{{.Id}}"], capture_output=True,
                             text=True).stdout.strip()
    if previous and previous != current:  # the last run's image, now untagged: drop it (shared layers stay cached)
        subprocess.run([engine, "rmi", previous], capture_output=True)
    return {"engine": engine, "bundle": bundle, "archive": archive, "build_s": build_s, "runtime": runtime, "tag": tag}


def test_image_contents_and_size(built_image):
    engine, bundle, tag = built_image["engine"], built_image["bundle"], built_image["tag"]
    out = subprocess.run([engine, *ENGINE_ARGS, "run", "--rm", *CONTAINER_ARGS, "--entrypoint", "",
                          tag, "/opt/venv/bin/python", "-m", "pip", "list", "--format", "json"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out)}
    assert not set(installed) & set(BUILD_STACK), set(installed) & set(BUILD_STACK)
    pins = read_requirements(bundle / "requirements.txt")
    assert all(installed.get(name) == v for name, v in pins.items()), {
        n: (installed.get(n), v) for n, v in pins.items() if installed.get(n) != v}
    assert "multiverse" in installed
    # An IR bundle's image has OpenVINO (pinned like the rest); an ONNX bundle's image does not.
    assert ("openvino" in installed) == (built_image["runtime"] == "openvino")
    added = _image_size(engine, tag) - _image_size(engine, BASE_IMAGE)
    bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"\n{built_image['runtime']} image {_image_size(engine, tag) / 1e6:.0f} MB, "
          f"base {_image_size(engine, BASE_IMAGE) / 1e6:.0f} MB, added {added / 1e6:.0f} MB "
          f"(bundle {bundle_bytes / 1e6:.1f} MB)")
    # OpenVINO adds about 185 MB (openvino 2026.4.1, measured: 601 MB image vs 416 MB for the ONNX bundle's).
    assert added <= 250e6 + (200e6 if built_image["runtime"] == "openvino" else 0) + bundle_bytes
    if built_image["archive"] is None:
        return
    # --save wrote an OCI archive.
    with tarfile.open(built_image["archive"]) as tar:
        names = set(tar.getnames())
    built_image["archive"].unlink()  # ~400 MB; pytest keeps its last three temp folders
    assert {"oci-layout", "index.json"} <= {n.lstrip("./") for n in names}


def test_container_serves_like_the_host_and_stops_on_sigterm(built_image):
    from multiverse.inference import Predictor

    engine, bundle, tag, runtime = (built_image[k] for k in ("engine", "bundle", "tag", "runtime"))
    port = _free_port()
    name = f"multiverse-test-{port}"
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    # --cpus 1: ORT's threads must follow the container's CPU quota; --read-only: as in examples/kubernetes.
    subprocess.run([engine, *ENGINE_ARGS, "run", "-d", "--name", name, *CONTAINER_ARGS, "--cpus", "1",
                    "--read-only", "--tmpfs", "/tmp", "-e", f"MULTIVERSE_PORT={port}", tag],
                   check=True, capture_output=True, timeout=120)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > 120:
                logs = subprocess.run([engine, "logs", name], capture_output=True, text=True).stderr
                pytest.fail(f"container not ready after 120 s:\n{logs[-3000:]}")
            time.sleep(0.1)
        ready_s = time.monotonic() - t0
        print(f"\n{runtime}: run → /health ready: {ready_s:.1f} s")
        # The image's HEALTHCHECK (python one-liner on /v2/health/ready) passes.
        assert subprocess.run([engine, "healthcheck", "run", name], capture_output=True).returncode == 0

        threads = subprocess.run([engine, "exec", name, "python3", "-c", "from multiverse.runtime import "
                                  "cgroup_cpu_quota, physical_cores; print(cgroup_cpu_quota(), physical_cores())"],
                                 capture_output=True, text=True, timeout=60).stdout.split()
        assert threads == ["1.0", "1"], threads
        # The session the server builds (threads from the quota) runs 1 thread: ORT's intra-op pool, or OpenVINO's
        # INFERENCE_NUM_THREADS as the compiled model reports it.
        probe = ("from multiverse.inference import Predictor; s = Predictor.from_bundle('/bundle').session; "
                 "print(s.compiled.get_property('INFERENCE_NUM_THREADS') if hasattr(s, 'compiled') "
                 "else s.get_session_options().intra_op_num_threads)")
        session_threads = subprocess.run([engine, "exec", name, "python3", "-c", probe], capture_output=True,
                                         text=True, timeout=120)
        assert session_threads.stdout.split() == ["1"], session_threads.stderr[-2000:]

        host = Predictor.from_bundle(bundle, threads=1)  # the container runs 1 thread (--cpus 1)
        want = np.asarray(host.predict(TEXTS).results, dtype=np.float64)
        embed = np.asarray(_post(f"{url}/embed", {"inputs": TEXTS}), dtype=np.float64)
        predict = np.asarray(_post(f"{url}/predict", {"inputs": TEXTS}), dtype=np.float64)
        assert embed.shape == want.shape == predict.shape
        tol = SERVE_TOLERANCE[runtime]
        assert np.abs(embed - want).max() <= tol and np.abs(predict - want).max() <= tol

        t_stop = time.monotonic()
        subprocess.run([engine, "kill", "--signal", "TERM", name], check=True, capture_output=True, timeout=30)
        code = subprocess.run([engine, "wait", name], capture_output=True, text=True, timeout=30).stdout.strip()
        stop_s = time.monotonic() - t_stop
        print(f"SIGTERM → exited ({code}): {stop_s:.1f} s")
        assert stop_s <= 10 and code == "0"
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)


def test_base_image_without_python_names_base_image(tiny_bundles, tmp_path):
    engine = _engine()
    nopy = "localhost/multiverse-test/no-python:latest"
    if subprocess.run([engine, "image", "exists", nopy]).returncode != 0:
        (tmp_path / "Containerfile").write_text(f"FROM {BASE_IMAGE}\nRUN rm -f /usr/bin/python3*\n")
        subprocess.run([engine, "build", *BUILDER_ARGS, "-t", nopy, str(tmp_path)], check=True, capture_output=True,
                       timeout=300)
    r = run_cli("image", tiny_bundles["feature-extraction"], "--tag", "localhost/multiverse-test/never:1",
                "--builder", engine, "--base-image", nopy, env={"MULTIVERSE_BUILDER_ARGS": shlex.join(BUILDER_ARGS)})
    assert r.returncode == 1, r.stderr[-3000:]
    assert "build failed" in r.stderr and "python3" in r.stderr and "--base-image" in r.stderr


# --------------------------------------------------------------------------- units (no engine)

def test_builder_commands_take_extra_flags_from_env_and_options(monkeypatch, tmp_path):
    from multiverse.image import build_command, save_command

    monkeypatch.setenv("MULTIVERSE_BUILDER_ARGS", "--network host -v '/etc/a b:/x:ro'")
    cmd = build_command("podman", tmp_path, "a/b:1", "python:3.11-slim", ["--ulimit", "nofile=1024:1024"])
    assert cmd[:4] == ["podman", "build", "--format", "docker"]  # docker format keeps HEALTHCHECK
    assert cmd[cmd.index("--build-arg") + 1] == "BASE_IMAGE=python:3.11-slim"
    i = cmd.index("--network")
    assert cmd[i:i + 6] == ["--network", "host", "-v", "/etc/a b:/x:ro", "--ulimit", "nofile=1024:1024"]
    assert cmd[-3:] == ["-f", str(tmp_path / "Dockerfile"), str(tmp_path)]
    monkeypatch.delenv("MULTIVERSE_BUILDER_ARGS")
    assert "--format" not in build_command("docker", tmp_path, "a/b:1", "x", [])  # no default host quirks either
    assert "--network" not in build_command("docker", tmp_path, "a/b:1", "x", [])
    assert save_command("podman", "a/b:1", tmp_path / "i.tar")[:4] == ["podman", "save", "--format", "oci-archive"]
    assert save_command("buildah", "a/b:1", tmp_path / "i.tar")[-1] == f"oci-archive:{tmp_path / 'i.tar'}:a/b:1"
