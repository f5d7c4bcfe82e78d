"""A simulated Hugging Face Hub: a checkpoint folder written into the hub cache layout, found with ``HF_HUB_OFFLINE=1``."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

# ---- Hugging Face hub cache layout ------------------------------------------------------------

_LFS_SUFFIXES = {".safetensors", ".bin", ".onnx", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".npz"}


def _etag(path: Path) -> str:
    """Blob name as the Hub gives it: sha256 for LFS files (weights, >10 MB), git blob sha1 otherwise."""
    data = path.read_bytes()
    if path.suffix in _LFS_SUFFIXES or len(data) > 10_000_000:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_hf_cache(checkpoint_dir: Path, cache_dir: Path, repo_id: str, revision_sha: str | None = None) -> str:
    """Copy ``checkpoint_dir`` into the hub cache ``cache_dir`` as model ``repo_id``; return the commit sha.

    Layout as ``huggingface_hub`` writes it: ``models--org--name/blobs/<etag>``,
    ``snapshots/<sha>/<relative path>`` (relative symlinks to the blobs; plain copies where
    symlinks are unavailable) and ``refs/main`` holding ``<sha>``. Dot-files (e.g. fixture
    markers) are skipped. ``revision_sha`` (40 lowercase hex) defaults to a hash of the file
    contents, so identical checkpoints get identical revisions. Re-writing is idempotent;
    ``refs/main`` always points at the latest write.
    """
    checkpoint_dir, cache_dir = Path(checkpoint_dir), Path(cache_dir)
    if revision_sha is not None and not re.fullmatch(r"[0-9a-f]{40}", revision_sha):
        raise ValueError(f"revision_sha must be 40 lowercase hex digits, got {revision_sha!r}.")
    files = sorted(p.relative_to(checkpoint_dir) for p in checkpoint_dir.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(checkpoint_dir).parts))
    if not files:
        raise FileNotFoundError(f"{checkpoint_dir} holds no files to cache.")
    etags = {rel.as_posix(): _etag(checkpoint_dir / rel) for rel in files}
    sha = revision_sha or hashlib.sha1(json.dumps(etags, sort_keys=True).encode()).hexdigest()
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    for rel, etag in etags.items():
        blob = repo / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            tmp = blob.with_name(f"{etag}.{os.getpid()}.incomplete")
            shutil.copyfile(checkpoint_dir / rel, tmp)
            os.replace(tmp, blob)
        link = repo / "snapshots" / sha / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:
            shutil.copyfile(blob, link)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return sha


@contextmanager
def hf_offline(cache_dir: Path, monkeypatch=None):
    """Make this process resolve Hub ids from ``cache_dir`` only, as ``HF_HUB_OFFLINE=1 HF_HUB_CACHE=cache_dir`` would.

    Sets the two environment variables and patches the values ``huggingface_hub`` and
    ``transformers`` read from them at import time. With a pytest ``monkeypatch`` the
    changes are undone by it; without, on leaving the ``with`` block. Subprocesses inherit the env.
    """
    import huggingface_hub.constants as hc

    undo = []

    def setattr_(obj, name, value):
        if monkeypatch is not None:
            monkeypatch.setattr(obj, name, value)
        else:
            undo.append((obj, name, getattr(obj, name)))
            setattr(obj, name, value)

    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache_dir)}
    old_env = {k: os.environ.get(k) for k in env}
    for k, v in env.items():
        monkeypatch.setenv(k, v) if monkeypatch is not None else os.environ.__setitem__(k, v)
    setattr_(hc, "HF_HUB_OFFLINE", True)
    setattr_(hc, "HF_HUB_CACHE", str(cache_dir))
    try:
        import transformers.utils.hub as th

        setattr_(th, "_is_offline_mode", True)
        setattr_(th, "TRANSFORMERS_CACHE", str(cache_dir))
    except ImportError:
        pass
    try:
        yield Path(cache_dir)
    finally:
        for obj, name, value in reversed(undo):
            setattr(obj, name, value)
        if monkeypatch is None:
            for k, v in old_env.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


