"""`multiverse image`: bundle → OCI image → running container that answers like the host.

The end-to-end test uses a real container engine (podman here). On the project's machines no image
registry is reachable, so the base image is ``localhost/debian-python:bookworm`` built by
``.ci/base-image.sh`` (``$MULTIVERSE_TEST_BASE_IMAGE`` overrides it), and this host's builder and
run flags (runc, host network, ulimits, the host's certificates and pip configuration) come from
``$MULTIVERSE_TEST_ENGINE_ARGS`` / ``$MULTIVERSE_TEST_CONTAINER_ARGS`` (defaults below): the test passes
them to ``multiverse image`` through ``$MULTIVERSE_BUILDER_ARGS``; ``multiverse image`` itself has no
such defaults. Without an engine or base image the container tests skip with the reason,
except under CI (``CI`` set), where they fail: CI must not pass by skipping them.

The bad-input and ``--dockerfile-only`` tests need no engine.
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


@pytest.fixture(scope="module")
def built_image(tiny_bundles, tmp_path_factory):
    engine = _engine()
    bundle = tiny_bundles["feature-extraction"]
    archive = tmp_path_factory.mktemp("image") / "image.tar"
    previous = subprocess.run([engine, "image", "inspect", TAG, "--format", "{{.Id}}"], capture_output=True,
                              text=True).stdout.strip()
    t0 = time.monotonic()
    r = run_cli("image", bundle, "--tag", TAG, "--builder", engine, "--base-image", BASE_IMAGE, "--save", archive,
                env={"MULTIVERSE_BUILDER_ARGS": shlex.join(BUILDER_ARGS)})
    build_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-5000:]
    assert r.stdout.strip() == TAG
    print(f"\nimage build {build_s:.1f} s")
    current = subprocess.run([engine, "image", "inspect", TAG, "--format", "{{.Id}}"], capture_output=True,
                             text=True).stdout.strip()
    if previous and previous != current:  # the last run's image, now untagged: drop it (shared layers stay cached)
        subprocess.run([engine, "rmi", previous], capture_output=True)
    return {"engine": engine, "bundle": bundle, "archive": archive, "build_s": build_s}


def test_image_contents_and_size(built_image):
    engine, bundle = built_image["engine"], built_image["bundle"]
    out = subprocess.run([engine, *ENGINE_ARGS, "run", "--rm", *CONTAINER_ARGS, "--entrypoint", "",
                          TAG, "/opt/venv/bin/python", "-m", "pip", "list", "--format", "json"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    installed = {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(out)}
    assert not set(installed) & set(BUILD_STACK), set(installed) & set(BUILD_STACK)
    pins = read_requirements(bundle / "requirements.txt")
    assert all(installed.get(name) == v for name, v in pins.items()), {
        n: (installed.get(n), v) for n, v in pins.items() if installed.get(n) != v}
    assert "multiverse" in installed
    added = _image_size(engine, TAG) - _image_size(engine, BASE_IMAGE)
    bundle_bytes = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"\nimage {_image_size(engine, TAG) / 1e6:.0f} MB, base {_image_size(engine, BASE_IMAGE) / 1e6:.0f} MB, "
          f"added {added / 1e6:.0f} MB (bundle {bundle_bytes / 1e6:.1f} MB)")
    assert added <= 250e6 + bundle_bytes
    # --save wrote an OCI archive.
    with tarfile.open(built_image["archive"]) as tar:
        names = set(tar.getnames())
    built_image["archive"].unlink()  # ~400 MB; pytest keeps its last three temp folders
    assert {"oci-layout", "index.json"} <= {n.lstrip("./") for n in names}


def test_container_serves_like_the_host_and_stops_on_sigterm(built_image):
    from multiverse.inference import Predictor

    engine, bundle = built_image["engine"], built_image["bundle"]
    port = _free_port()
    name = f"multiverse-test-{port}"
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    # --cpus 1: ORT's threads must follow the container's CPU quota; --read-only: as in examples/kubernetes.
    subprocess.run([engine, *ENGINE_ARGS, "run", "-d", "--name", name, *CONTAINER_ARGS, "--cpus", "1",
                    "--read-only", "--tmpfs", "/tmp", "-e", f"MULTIVERSE_PORT={port}", TAG],
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
        print(f"\nrun → /health ready: {ready_s:.1f} s")
        # The image's HEALTHCHECK (python one-liner on /v2/health/ready) passes.
        assert subprocess.run([engine, "healthcheck", "run", name], capture_output=True).returncode == 0

        threads = subprocess.run([engine, "exec", name, "python3", "-c", "from multiverse.runtime import "
                                  "cgroup_cpu_quota, physical_cores; print(cgroup_cpu_quota(), physical_cores())"],
                                 capture_output=True, text=True, timeout=60).stdout.split()
        assert threads == ["1.0", "1"], threads

        host = Predictor.from_bundle(bundle, threads=1)  # the container runs 1 thread (--cpus 1)
        want = np.asarray(host.predict(TEXTS).results, dtype=np.float64)
        embed = np.asarray(_post(f"{url}/embed", {"inputs": TEXTS}), dtype=np.float64)
        predict = np.asarray(_post(f"{url}/predict", {"inputs": TEXTS}), dtype=np.float64)
        assert embed.shape == want.shape == predict.shape
        assert np.abs(embed - want).max() <= 1e-6 and np.abs(predict - want).max() <= 1e-6

        t_stop = time.monotonic()
        subprocess.run([engine, "kill", "--signal", "TERM", name], check=True, capture_output=True, timeout=30)
        code = subprocess.run([engine, "wait", name], capture_output=True, text=True, timeout=30).stdout.strip()
        stop_s = time.monotonic() - t_stop
        print(f"SIGTERM → exited ({code}): {stop_s:.1f} s")
        assert stop_s <= 10 and code == "0"
    finally:
        subprocess.run([engine, "rm", "-f", name], capture_output=True, timeout=60)


def test_base_image_without_python_names_base_image(built_image, tiny_bundles, tmp_path):
    engine = built_image["engine"]
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
