"""The Multiverse wheel that ``multiverse image`` installs in the image (``pip install --no-deps``).

Built from the source checkout Multiverse runs from with ``pip wheel --no-deps
--no-build-isolation`` and cached by a hash of the sources, or given as a file (``--wheel``).
Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .errors import ImageError, UsageError


def project_root() -> Path | None:
    """The source checkout this Multiverse runs from (``pyproject.toml`` beside the package), or None."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "multiverse").is_dir() else None


def _source_digest(root: Path) -> str:
    h = hashlib.sha256()
    files = [root / "pyproject.toml", root / "README.md"]
    for folder in ("multiverse", "recipes"):
        files += sorted(p for p in (root / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in files:
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def wheel_cache_dir() -> Path:
    """``$MULTIVERSE_CACHE/wheels`` (default ``~/.cache/multiverse/wheels``)."""
    base = os.environ.get("MULTIVERSE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "multiverse"
    return Path(base).expanduser() / "wheels"


def build_wheel(wheel: str | Path | None = None, *, log: Callable[[str], None] = lambda s: None) -> Path:
    """The Multiverse wheel to install in the image.

    ``wheel`` given: that file is checked and returned. Otherwise the wheel of the source checkout
    is built with ``pip wheel --no-deps --no-build-isolation`` (about 10-30 s) and cached under
    :func:`wheel_cache_dir` by a hash of the sources, so an unchanged checkout reuses it.

    Raises:
        UsageError: ``wheel`` is not a ``multiverse-*.whl`` file.
        ImageError: no source checkout to build from (pass ``--wheel``), or pip failed.
    """
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file() or not wheel.name.startswith("multiverse-") or wheel.suffix != ".whl":
            raise UsageError(f"--wheel {wheel}: not a multiverse-*.whl file. Build one with "
                             "`pip wheel --no-deps -w dist .` in the Multiverse checkout.")
        return wheel
    root = project_root()
    if root is None:
        raise ImageError("Multiverse is installed from a wheel, not a source checkout, so its wheel cannot be "
                         "rebuilt here: pass --wheel multiverse-*.whl (the file you installed).")
    dest = wheel_cache_dir() / _source_digest(root)
    found = sorted(dest.glob("multiverse-*.whl"))
    if found:
        log(f"reusing wheel {found[-1]}")
        return found[-1]
    tmp = Path(tempfile.mkdtemp(prefix="wheel-"))
    try:
        log(f"building the Multiverse wheel from {root}")
        done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                               "-w", str(tmp), str(root)], capture_output=True, text=True)
        built = sorted(tmp.glob("multiverse-*.whl"))
        if done.returncode != 0 or not built:
            raise ImageError(f"Building the Multiverse wheel failed:\n{(done.stderr or done.stdout)[-2000:]}\n"
                             "Fix the error above, or pass --wheel multiverse-*.whl.")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built[-1]), dest / built[-1].name)
        return dest / built[-1].name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
