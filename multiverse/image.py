"""From a bundle to an OCI image: the build context and the builder (``multiverse image``).

:func:`build_image` verifies the bundle, writes a build context (the bundle, the Multiverse wheel
``wheel.py`` builds, the ``Dockerfile`` of ``container.py``) and runs podman, docker or buildah.
Standard library only; it runs with the lean runtime install. The names of ``container.py``
(pins, ``requirements.txt``, ``Dockerfile``) are importable from here too.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .container import (BUILD_STACK, BUILDER_ARGS_ENV, BUILDERS, CONTAINER_PORT, CONTAINER_UID,  # noqa: F401
                        DEFAULT_BASE_IMAGE, DOCKERFILE, REQUIREMENTS, dockerfile, read_requirements,
                        requirements_txt, runtime_pins)
from .errors import BundleError, ImageError, UsageError
from .wheel import build_wheel

# --------------------------------------------------------------------------- the context

def verify_bundle(bundle_dir: str | Path) -> dict:
    """The manifest of ``bundle_dir``. Raises BundleError unless it is a bundle whose files all pass their sha256 check."""
    from .bundle import read_manifest, verify_files

    manifest = read_manifest(bundle_dir)
    problems = verify_files(bundle_dir)
    if problems:
        raise BundleError(f"Bundle {bundle_dir} failed its sha256 check ({'; '.join(problems[:5])}); refusing to "
                          "build an image from it. Rebuild it with `multiverse optimize`.")
    return manifest


def check_context(context: str | Path) -> None:
    """Raises UsageError when ``context`` cannot become a fresh build context folder: it is a file, a folder that
    is not empty, or it would be created under a file."""
    context = Path(context)
    if context.exists() and not context.is_dir():
        raise UsageError(f"Build context {context} is a file, not a folder; choose another --context.")
    if context.exists() and any(context.iterdir()):
        raise UsageError(f"Build context folder {context} exists and is not empty; remove it or choose another --context.")
    base = next(p for p in context.absolute().parents if p.exists())
    if not base.is_dir():
        raise UsageError(f"Build context {context} cannot be created: {base} is a file, not a folder; choose another "
                         "--context.")


def write_context(bundle_dir: str | Path, wheel: Path, context: str | Path, *,
                  base_image: str = DEFAULT_BASE_IMAGE, log: Callable[[str], None] = lambda s: None) -> Path:
    """Verify the bundle and lay out a build context: ``Dockerfile``, ``bundle/``, ``wheels/``.

    The bundle is checked first (schema and sha256 of every file) and a corrupted one, or one
    without the pinned ``requirements.txt``, is refused before anything is written.

    Returns the context folder. Raises BundleError (corrupted, unpinned or not a bundle), UsageError
    (:func:`check_context`, or the folder cannot be created).
    """
    bundle_dir, context = Path(bundle_dir), Path(context)
    verify_bundle(bundle_dir)
    if not (bundle_dir / REQUIREMENTS).is_file():
        raise BundleError(f"{bundle_dir} has no {REQUIREMENTS} (it was built before bundles pinned their runtime); "
                          "rebuild it with this version of `multiverse optimize`.")
    check_context(context)
    try:
        context.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"Cannot create the build context folder {context} ({exc.strerror}); choose another "
                         "--context.") from None
    shutil.copytree(bundle_dir, context / "bundle", ignore=shutil.ignore_patterns(".*"))
    (context / "wheels").mkdir()
    shutil.copy2(wheel, context / "wheels" / Path(wheel).name)
    (context / DOCKERFILE).write_text(dockerfile(base_image), encoding="utf-8")
    return context


# --------------------------------------------------------------------------- the builder

def _engine_works(name: str) -> bool:
    probe = {"docker": ["docker", "info", "--format", "{{.ServerVersion}}"],
             "podman": ["podman", "version", "--format", "{{.Client.Version}}"],
             "buildah": ["buildah", "version"]}[name]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_builder(preferred: str | None = None) -> str:
    """The container builder to use: ``preferred`` if given, else the first working of podman, docker, buildah.

    A ``docker`` client without a reachable daemon does not count as working.

    Raises:
        UsageError: ``preferred`` is not one of podman, docker, buildah.
        ImageError: the builder is missing or not working; the message names what to install.
    """
    if preferred is not None:
        if preferred not in BUILDERS:
            raise UsageError(f"--builder {preferred!r}: choose podman, docker or buildah.")
        if shutil.which(preferred) is None:
            raise ImageError(f"{preferred} is not installed: install it (Debian/Ubuntu: `apt-get install {preferred}`) "
                             "or choose another --builder.")
        if not _engine_works(preferred):
            raise ImageError(f"{preferred} is installed but not working (`{preferred} info` fails; is its daemon "
                             "running?). Start it or choose another --builder.")
        return preferred
    for name in BUILDERS:
        if shutil.which(name) and _engine_works(name):
            return name
    raise ImageError("No working container engine found: install podman (Debian/Ubuntu: `apt-get install podman`), "
                     "or docker with a running daemon, or buildah.")


def builder_args(extra: Sequence[str] = ()) -> list[str]:
    """Extra builder flags: ``$MULTIVERSE_BUILDER_ARGS`` (shell-split) then ``extra`` (``--builder-arg``)."""
    return shlex.split(os.environ.get(BUILDER_ARGS_ENV, "")) + list(extra)


def build_command(builder: str, context: Path, tag: str, base_image: str, extra: Sequence[str] = ()) -> list[str]:
    """The argv that builds ``context`` into ``tag`` with ``builder``.

    podman and buildah build in Docker format so ``HEALTHCHECK`` is kept (the OCI image
    format has no health check; they drop it with a warning).
    """
    sub = ["build"]
    if builder in ("podman", "buildah"):
        sub += ["--format", "docker"]
    return [builder, *sub, "-t", tag, "--build-arg", f"BASE_IMAGE={base_image}", *builder_args(extra),
            "-f", str(context / DOCKERFILE), str(context)]


def save_command(builder: str, tag: str, path: Path) -> list[str]:
    """The argv that writes ``tag`` as an OCI archive to ``path`` (``docker save`` writes Docker's archive format)."""
    if builder == "podman":
        return ["podman", "save", "--format", "oci-archive", "-o", str(path), tag]
    if builder == "buildah":
        return ["buildah", "push", tag, f"oci-archive:{path}:{tag}"]
    return ["docker", "save", "-o", str(path), tag]


_TAG = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?$")


def check_tag(tag: str) -> str:
    """Raises UsageError unless ``tag`` is a valid image reference (``name[:tag]``, lower-case repository)."""
    if not tag or not _TAG.match(tag):
        raise UsageError(f"--tag {tag!r} is not a valid image name: use lower-case NAME[:TAG], "
                         "e.g. `multiverse/minilm:1` or `registry.example.com/team/minilm:2026-01`.")
    return tag


def _run_streaming(cmd: list[str], log: Callable[[str], None], tail: int = 60) -> tuple[int, str]:
    """Run ``cmd``, pass each output line to ``log``, return (exit code, last ``tail`` lines)."""
    last: deque[str] = deque(maxlen=tail)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            last.append(line)
            log(line)
    return proc.returncode, "\n".join(last)


_NO_PYTHON = re.compile(r"python3?: (?:command )?not found|python3?: No such file|executable file `?python3`? not found|"
                        r"No module named venv|ensurepip is not available|exec: \"?python3\"?: executable", re.I)


@dataclass
class ImageResult:
    """What :func:`build_image` did: the tag (None with ``dockerfile_only``), the context, the archive."""

    tag: str | None
    context: Path
    builder: str | None = None
    saved: Path | None = None
    wheel: Path | None = None
    commands: list[list[str]] = field(default_factory=list)


def build_image(bundle_dir: str | Path, tag: str | None = None, *, builder: str | None = None,
                base_image: str = DEFAULT_BASE_IMAGE, save: str | Path | None = None, dockerfile_only: bool = False,
                context: str | Path | None = None, wheel: str | Path | None = None,
                extra_builder_args: Sequence[str] = (), log: Callable[[str], None] = lambda s: None) -> ImageResult:
    """Build an OCI image that serves ``bundle_dir`` on port 8080 (``multiverse image``).

    Order: check the arguments, verify the bundle (sha256), find the builder, build or reuse the
    wheel, write the context, run ``<builder> build`` (its output goes to ``log``), then
    ``save`` (an OCI archive file) if asked. With ``dockerfile_only`` no builder is needed and
    the context is kept (default folder ``./<bundle name>-image``); otherwise a temporary context
    is removed after the build unless ``context`` is given.

    Args:
        tag: image reference ``NAME[:TAG]`` (required unless ``dockerfile_only``).
        builder: podman, docker or buildah (default: the first that works).
        base_image: any image with ``python3`` and its ``venv`` module (default ``python:3.11-slim``).
        extra_builder_args: flags added to ``<builder> build`` (after ``$MULTIVERSE_BUILDER_ARGS``),
            e.g. ``--network host`` where the build needs the host's network.

    Raises:
        UsageError: bad tag, builder name, wheel or context folder.
        BundleError: the bundle is missing or fails its sha256 check (nothing is built).
        ImageError: no working builder; the build failed (the builder's last lines, and a hint
            about ``--base-image`` when the base has no Python); saving failed.
    """
    if not dockerfile_only:
        if tag is None:
            raise UsageError("--tag NAME[:TAG] is required to build an image (or pass --dockerfile-only).")
        check_tag(tag)
    manifest = verify_bundle(bundle_dir)
    if context is not None:
        check_context(context)  # before the wheel build and the builder
    if not (manifest.get("validation") or {}).get("passed"):
        log(f"warning: {bundle_dir} FAILED its accuracy gate (kept with --keep-failed); the image serves it anyway")
    engine = None if dockerfile_only else find_builder(builder)
    whl = build_wheel(wheel, log=log)
    keep = dockerfile_only or context is not None
    ctx = Path(context) if context is not None else (
        Path(f"{Path(bundle_dir).resolve().name}-image") if dockerfile_only
        else Path(tempfile.mkdtemp(prefix="multiverse-image-")))
    write_context(bundle_dir, whl, ctx, base_image=base_image, log=log)
    result = ImageResult(tag=None if dockerfile_only else tag, context=ctx.resolve(), builder=engine, wheel=whl)
    if dockerfile_only:
        return result
    try:
        cmd = build_command(engine, ctx, tag, base_image, extra_builder_args)
        result.commands.append(cmd)
        log("$ " + shlex.join(cmd))
        code, tail = _run_streaming(cmd, log)
        if code != 0:
            hint = (f"The base image {base_image!r} has no python3 with the venv module: pass --base-image with "
                    "an image that has them (python:3.11-slim, or a Debian/Ubuntu image with python3 and python3-venv)."
                    if _NO_PYTHON.search(tail) else
                    f"Check --base-image ({base_image!r} must exist or be pullable and have python3 with venv) and "
                    "any --builder-arg the build needs (network, certificates, pip configuration).")
            raise ImageError(f"{engine} build failed (exit {code}):\n{tail}\n{hint}")
        if save is not None:
            save = Path(save)
            save.parent.mkdir(parents=True, exist_ok=True)
            cmd = save_command(engine, tag, save)
            result.commands.append(cmd)
            log("$ " + shlex.join(cmd))
            code, tail = _run_streaming(cmd, log)
            if code != 0:
                raise ImageError(f"Saving {tag} to {save} failed (exit {code}):\n{tail}\nCheck the path and free disk space.")
            result.saved = save.resolve()
    finally:
        if not keep:
            shutil.rmtree(ctx, ignore_errors=True)
    return result
