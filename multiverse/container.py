"""What a bundle's container needs, as text: the runtime pins, ``requirements.txt`` and the ``Dockerfile``.

``optimize`` records :func:`runtime_pins` in the manifest; the bundle writer (``bundle_writer.py``)
writes :func:`requirements_txt` and :func:`dockerfile` into every bundle; ``multiverse image``
(``image.py``) builds the image from them. Standard library plus ``packaging`` (requirement markers).

The image holds a venv (``python3 -m venv /opt/venv``, so Debian's ``python3``, which refuses
system-wide pip installs under PEP 668, works as a base as well as ``python:3.11-slim``) with the
bundle's pinned ``requirements.txt`` and the Multiverse wheel installed ``--no-deps``; no torch,
transformers, optimum, onnx or neural-compressor.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from importlib import metadata
from pathlib import Path

from .errors import ImageError

DEFAULT_BASE_IMAGE = "python:3.11-slim"
REQUIREMENTS = "requirements.txt"
DOCKERFILE = "Dockerfile"
CONTAINER_PORT = 8080
CONTAINER_UID = 10001
BUILDERS = ("podman", "docker", "buildah")
BUILDER_ARGS_ENV = "MULTIVERSE_BUILDER_ARGS"
#: Distributions that must never be in the image (the build stack); the image test checks it.
BUILD_STACK = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "neural-compressor",
               "sentence-transformers", "datasets")


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name (``Neural_Compressor`` → ``neural-compressor``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins(dist: str = "multiverse", extras: tuple[str, ...] = ()) -> dict[str, str]:
    """Exact installed versions of everything the runtime install of ``dist`` (with ``extras``, e.g.
    ``("openvino",)`` for an OpenVINO IR bundle) pulls in.

    Walks the ``Requires-Dist`` of ``dist`` (base, plus ``extras``; markers evaluated for this
    interpreter and platform) and of each dependency in turn, and reads each one's installed
    version: the environment that just validated the bundle. ``dist`` itself is not pinned
    (the image installs its wheel).

    Returns: ``{normalised name: version}``, sorted by name, e.g. ``{"onnxruntime": "1.23.2", ...}``.

    Raises:
        ImageError: ``dist`` or one of its runtime dependencies is not installed (the
            environment is incomplete; reinstall Multiverse).
    """
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    queue: deque[tuple[str, frozenset[str]]] = deque([(dist, frozenset(extras))])
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        name, extras = queue.popleft()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            d = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ImageError(f"{name} is not installed, so the runtime cannot be pinned. "
                             f'Reinstall with `pip install -e ".[optimize]"`.') from None
        if name != dist:
            pins[_norm(d.metadata["Name"])] = d.version
        for line in d.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                    req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            queue.append((_norm(req.name), frozenset(req.extras)))
    return dict(sorted(pins.items()))


def requirements_txt(pins: dict[str, str]) -> str:
    """``requirements.txt`` text: a header and one ``name==version`` line per pin."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [f"# Runtime that validated this bundle (Python {py}, {sys.platform}); written by `multiverse optimize`.",
             "# Install with the Multiverse wheel: pip install -r requirements.txt && pip install --no-deps multiverse-*.whl",
             *(f"{name}=={version}" for name, version in pins.items())]
    return "\n".join(lines) + "\n"


def read_requirements(path: str | Path) -> dict[str, str]:
    """Parse a ``requirements.txt`` of ``name==version`` lines (comments skipped) into pins."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name.strip())] = version.strip()
    return pins


def dockerfile(base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """The Dockerfile of a build context laid out by :func:`write_context`.

    Context layout: ``Dockerfile``, ``bundle/`` (the bundle, with its pinned
    ``requirements.txt``), ``wheels/multiverse-*.whl``. Layers: pinned runtime (cached across
    bundles with the same pins), the wheel, the bundle. The server runs as uid 10001, listens on
    ``$MULTIVERSE_PORT`` (8080), exits cleanly on SIGTERM; the health check calls
    ``/v2/health/ready`` with Python's urllib (the base needs no curl).
    """
    health = ("import os,sys,urllib.request; "
              "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' "
              "% os.environ.get('MULTIVERSE_PORT', '8080'), timeout=3).status == 200 else 1)")
    return f"""# Multiverse serving image. Build context: `multiverse image BUNDLE --dockerfile-only` writes it
# (this Dockerfile, bundle/, wheels/multiverse-*.whl); `multiverse image BUNDLE --tag NAME` builds it.
ARG BASE_IMAGE={base_image}
FROM ${{BASE_IMAGE}}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \\
    PATH=/opt/venv/bin:$PATH HOME=/tmp MULTIVERSE_PORT={CONTAINER_PORT}
COPY bundle/{REQUIREMENTS} /opt/multiverse/{REQUIREMENTS}
RUN python3 -m venv /opt/venv \\
 && /opt/venv/bin/python -m pip install --no-cache-dir -r /opt/multiverse/{REQUIREMENTS} \\
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {{}} +
COPY wheels/ /opt/multiverse/wheels/
RUN /opt/venv/bin/python -m pip install --no-cache-dir --no-deps /opt/multiverse/wheels/*.whl \\
 && rm -rf /opt/multiverse/wheels
COPY bundle/ /bundle/
USER {CONTAINER_UID}:{CONTAINER_UID}
EXPOSE {CONTAINER_PORT}
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \\
    CMD ["python3", "-c", "{health}"]
CMD ["/bin/sh", "-c", "exec multiverse serve /bundle --host 0.0.0.0 --port \\"${{MULTIVERSE_PORT:-{CONTAINER_PORT}}}\\""]
"""
