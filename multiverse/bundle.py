"""The bundle: what ``optimize`` writes and ``serve``/``benchmark``/``validate`` load (DESIGN.md §4).

Written atomically (a temp folder beside the destination, then ``os.rename``). The loader
checks the schema version and the sha256 of every file and fails closed; it never loads
pickles and never follows a path outside the bundle folder. Standard library + numpy only
on the load path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError, IsaMismatchError, UsageError

SCHEMA_VERSION = 1
MANIFEST = "multiverse.json"
MODEL_FILE = "model.onnx"

# HF / sentence-transformers files a bundle carries besides the graph (never weights or pickles).
_HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
             "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def slug(name: str) -> str:
    """Folder-safe short name of a model id or path: ``sentence-transformers/all-MiniLM-L6-v2`` → ``all-minilm-l6-v2``."""
    base = name.rstrip("/").split("/")[-1] or "model"
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder and its manifest (``multiverse.json`` as a dict)."""

    path: Path
    manifest: dict

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.get("model_file", MODEL_FILE)

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def passed(self) -> bool:
        return bool((self.manifest.get("validation") or {}).get("passed"))

    @property
    def required_flags(self) -> list[str]:
        return list((self.manifest.get("target") or {}).get("required_flags") or [])

    def missing_flags(self) -> list[str]:
        """CPU flags (and ``arch:<name>``) the target needs and this host lacks."""
        from .targets import host_arch, host_flags

        target = self.manifest.get("target") or {}
        missing = [] if target.get("arch") in (None, host_arch()) else [f"arch:{target.get('arch')}"]
        flags = host_flags()
        return missing + [f for f in self.required_flags if f not in flags]

    def session_config(self, allow_isa_mismatch: bool = False) -> dict[str, str]:
        """ORT session entries for this host.

        Raises IsaMismatchError when the host lacks the target's flags, unless
        ``allow_isa_mismatch``; then ``session.x64quantprecision=1`` is added so u8s8 int8
        GEMMs do not saturate on CPUs without VNNI (PITFALLS.md).
        """
        config = dict((self.manifest.get("target") or {}).get("session") or {})
        missing = self.missing_flags()
        if missing:
            if not allow_isa_mismatch:
                raise IsaMismatchError(
                    f"Bundle {self.path} was built for target {self.manifest['target'].get('name')!r}, which needs "
                    f"{', '.join(missing)} that this CPU lacks. Re-run `multiverse optimize ... --target native` "
                    "on this host, or pass --allow-isa-mismatch (slower, full-precision int8 GEMM)."
                )
            if "arch:" not in " ".join(missing):
                config["session.x64quantprecision"] = "1"
        return config


def _inside(root: Path, rel: str) -> Path:
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or ".." in Path(rel).parts:
        raise BundleError(f"Bundle manifest names an unsafe path {rel!r}; refusing to load. Rebuild the bundle.")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"Bundle file {rel!r} resolves outside the bundle; refusing to load. Rebuild the bundle.")
    return path


def verify_files(path: str | Path) -> list[str]:
    """Problems found in a bundle folder: missing, extra-unsafe or changed files (sha256). ``[]`` if intact.

    Raises BundleError when there is no readable manifest or its schema is unknown.
    """
    root = Path(path)
    manifest = read_manifest(root)
    problems = []
    files = manifest.get("files")
    if not isinstance(files, dict) or MANIFEST in files:
        raise BundleError(f"{root / MANIFEST} has no valid `files` table; rebuild the bundle.")
    for rel, digest in sorted(files.items()):
        file = _inside(root, rel)
        if not file.is_file():
            problems.append(f"missing: {rel}")
        elif sha256(file) != digest:
            problems.append(f"sha256 mismatch: {rel}")
    if manifest.get("model_file", MODEL_FILE) not in files:
        problems.append(f"model file {manifest.get('model_file')!r} is not listed in `files`")
    return problems


def read_manifest(path: str | Path) -> dict:
    """The parsed ``multiverse.json``. Raises BundleError if missing, unreadable or of another schema version."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle folder. Pass the folder `multiverse optimize` printed.")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{root} has no {MANIFEST}; it is not a Multiverse bundle. Run `multiverse optimize`.") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST} is unreadable ({exc}); rebuild the bundle.") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BundleError(
            f"{root} has bundle schema {found!r}; this Multiverse reads schema {SCHEMA_VERSION}. "
            "Rebuild it with this version of `multiverse optimize`."
        )
    for key in ("task", "target", "files"):
        if key not in manifest:
            raise BundleError(f"{root / MANIFEST} lacks {key!r}; rebuild the bundle.")
    return manifest


def load(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load and check a bundle (schema, and sha256 of every file when ``verify``).

    Raises BundleError on any problem (fails closed).
    """
    root = Path(path)
    manifest = read_manifest(root)
    if verify:
        problems = verify_files(root)
        if problems:
            raise BundleError(
                f"Bundle {root} is corrupted ({'; '.join(problems[:5])}). Rebuild it with `multiverse optimize`."
            )
    _inside(root, manifest.get("model_file", MODEL_FILE))
    return Bundle(root, manifest)


def copy_model_files(src: Path, dest: Path) -> list[str]:
    """Copy tokenizer, config and sentence-transformers module files (no weights, no pickles) from ``src``.

    Dense modules stored as ``pytorch_model.bin`` are converted to ``model.safetensors``
    (this needs torch, and runs only at optimize time).
    """
    copied = []
    for name in _HF_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
            copied.append(name)
    modules = src / "modules.json"
    if modules.is_file():
        for module in json.loads(modules.read_text(encoding="utf-8")):
            rel = module.get("path") or ""
            if not rel or not (src / rel).is_dir():
                continue
            (dest / rel).mkdir(parents=True, exist_ok=True)
            for f in (src / rel).iterdir():
                if f.suffix == ".json" or f.name == "model.safetensors":
                    shutil.copy2(f, dest / rel / f.name)
                elif f.name == "pytorch_model.bin" and not (src / rel / "model.safetensors").exists():
                    import torch
                    from safetensors.torch import save_file

                    state = torch.load(f, map_location="cpu", weights_only=True)
                    save_file({k: v.contiguous() for k, v in state.items()}, str(dest / rel / "model.safetensors"))
            copied.append(rel + "/")
    return copied


def write(dest: str | Path, *, model: str | Path, model_dir: str | Path, manifest: dict[str, Any],
          readme: str, dockerfile: str, overwrite: bool = False, extra_files: dict[str, Path] | None = None) -> Bundle:
    """Write a bundle atomically and return it loaded.

    Args:
        dest: the bundle folder to create.
        model: the ``.onnx`` graph to ship (external data beside it is copied too).
        model_dir: folder with the HF tokenizer/config files (see :func:`copy_model_files`).
        manifest: everything but ``schema_version``, ``model_file`` and ``files``, which are added here.
        overwrite: replace an existing ``dest``; otherwise an existing folder is a UsageError.

    Raises UsageError (destination exists), BundleError (I/O failure; nothing half-written is left).
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise UsageError(f"Output folder {dest} already exists; pass --overwrite or choose another --out.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model = Path(model)
        shutil.copy2(model, tmp / MODEL_FILE)
        if (model.parent / (model.name + "_data")).is_file():
            shutil.copy2(model.parent / (model.name + "_data"), tmp / (MODEL_FILE + "_data"))
        copy_model_files(Path(model_dir), tmp)
        for rel, src in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        (tmp / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        full = {"schema_version": SCHEMA_VERSION, **manifest, "model_file": MODEL_FILE, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)
        if dest.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.rename(dest, trash / dest.name)
            os.rename(tmp, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"Could not write bundle {dest}: {exc}. Check free disk space and permissions.") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load(dest)
