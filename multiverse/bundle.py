"""The bundle: what ``optimize`` writes and ``serve``/``benchmark``/``validate`` load (DESIGN.md §4).

Written atomically (a temp folder beside the destination, then ``os.rename``). The loader fails
closed: the manifest must match :class:`Manifest` (schema version, types, known task) and its own
content digest; every file in the folder must be listed in its ``files`` table with the right
sha256 (an unlisted file is refused, so nothing the loader reads is unverified); the graph's
external-data files are read from the graph itself and must stay inside the folder. It never loads
pickles and never follows a path outside the bundle folder. Standard library, pydantic and numpy
only on the load path (no ``onnx``: see ``graphfiles.py``).

Two digests, for two purposes:

- ``content_sha256`` inside ``multiverse.json``: sha256 of the manifest's canonical JSON without
  that key. It catches a manifest edited by hand or damaged (a changed ``task``, a ``files`` entry
  removed), which would otherwise still verify. It is no defence against someone who can rewrite
  the bundle: they can recompute it.
- the manifest digest, sha256 of the ``multiverse.json`` bytes (:func:`manifest_sha256`), printed
  by ``optimize`` and ``inspect``. Pinned outside the bundle (``multiverse serve --manifest-sha256``,
  ``inspect --expect-sha256``, ``load(expect_manifest_sha256=...)``) it fixes every byte the loader
  reads, since the manifest holds the sha256 of every other file.
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
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo,
                      field_validator)

from .errors import BundleError, IsaMismatchError, UsageError
from .graphfiles import GraphFormatError, check_external_data, external_tensors, unsafe_location
from .tasks import TASKS

SCHEMA_VERSION = 2  # 2: content_sha256, every file listed (none unlisted), external data read from the graph
MANIFEST = "multiverse.json"
MODEL_FILE = "model.onnx"
DIGEST_KEY = "content_sha256"
REQUIRED_FILES = ("config.json", "tokenizer.json")  # read by every Predictor (tasks/base.py, inference.py)

# HF / sentence-transformers files a bundle carries besides the graph (never weights or pickles).
_HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
             "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def slug(name: str) -> str:
    """Folder-safe short name of a model id or path: ``sentence-transformers/all-MiniLM-L6-v2`` → ``all-minilm-l6-v2``."""
    base = name.rstrip("/").split("/")[-1] or "model"
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"


def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- manifest schema
def _relative_path(rel: str) -> str:
    why = unsafe_location(rel)
    if why or rel in (".", "") or rel.endswith(("/", "\\")):
        raise ValueError(f"unsafe path {rel!r} ({why or 'not a file'}): bundle paths are relative and stay inside the folder")
    return rel


RelPath = Annotated[str, AfterValidator(_relative_path)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Open(BaseModel):
    """Typed where the loader reads; other keys (reports, versions) are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)


class TargetSpec(_Open):
    """``target``: the CPU the bundle was built for (``targets.py``)."""

    name: str
    arch: str | None = None
    required_flags: list[str] = Field(default_factory=list)
    session: dict[str, str] = Field(default_factory=dict)


class SourceSpec(_Open):
    """``source``: where the original checkpoint came from (for ``validate`` and ``/info``)."""

    repo_id: str | None = None
    revision: str | None = None
    local_path: str | None = None
    local_hash: str | None = None


class Manifest(_Open):
    """The schema of ``multiverse.json`` (DESIGN.md §4), as far as loading depends on it.

    ``files`` maps every file in the bundle but the manifest (relative POSIX paths) to its hex
    sha256; it must list ``model_file`` and :data:`REQUIRED_FILES`. Keys not declared here
    (``tuning``, ``validation`` details, ``versions`` ...) are informational and kept as they are.
    """

    schema_version: Literal[2]
    task: Literal[tuple(TASKS)]  # type: ignore[valid-type]  # a name of multiverse.tasks.TASKS
    source: SourceSpec
    target: TargetSpec
    model_file: RelPath = MODEL_FILE
    files: dict[RelPath, Sha256Hex]
    max_sequence_length: Annotated[int, Field(gt=0)] | None = None
    precision: str | None = None
    validation: dict | None = None
    content_sha256: Sha256Hex

    @field_validator("files")
    @classmethod
    def _lists_what_the_loader_reads(cls, files: dict, info: ValidationInfo) -> dict:
        if MANIFEST in files:
            raise ValueError(f"lists {MANIFEST} itself")
        for name in (info.data.get("model_file", MODEL_FILE), *REQUIRED_FILES):
            if name not in files:
                raise ValueError(f"does not list {name}, which the loader reads")
        return files


def content_digest(manifest: dict) -> str:
    """sha256 (hex) of the manifest's canonical JSON (sorted keys, no spaces, UTF-8) without ``content_sha256``."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(manifest: dict) -> dict:
    """``manifest`` with its ``content_sha256`` (re)computed. ``write`` calls it; call it yourself only after
    editing a manifest on purpose (the manifest digest to pin changes too)."""
    return {**{k: v for k, v in manifest.items() if k != DIGEST_KEY}, DIGEST_KEY: content_digest(manifest)}


def manifest_sha256(path: str | Path) -> str:
    """sha256 (hex) of the bundle's ``multiverse.json`` bytes: the value to pin. Raises BundleError if unreadable."""
    try:
        return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"{Path(path) / MANIFEST} is unreadable ({exc}); pass the folder `multiverse optimize` printed.") from exc


def _schema_error(where: Path, exc: ValidationError) -> BundleError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    found = first.get("input")
    shown = "" if isinstance(found, (dict, list)) or first["type"] == "missing" else f" (found {json.dumps(found)[:60]})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return BundleError(f"{where} does not match bundle schema {SCHEMA_VERSION}: `{key}`: {msg}{shown}{more}. "
                       "Rebuild the bundle with `multiverse optimize`, or restore its original multiverse.json.")


def _read(root: Path, expect_sha256: str | None = None) -> tuple[dict, str]:
    """(manifest dict, sha256 of its bytes), checked: pinned digest, JSON, schema version, schema, content digest."""
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle folder. Pass the folder `multiverse optimize` printed.")
    try:
        raw = (root / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{root} has no {MANIFEST}; it is not a Multiverse bundle. Run `multiverse optimize`.") from None
    except OSError as exc:
        raise BundleError(f"{root / MANIFEST} is unreadable ({exc}); rebuild the bundle.") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if expect_sha256 is not None and digest != expect_sha256.strip().lower():
        raise BundleError(f"{root / MANIFEST} has sha256 {digest}, not the pinned {expect_sha256.strip()}: this is not "
                          "the bundle you pinned (changed or replaced). Rebuild it, or pin the digest `multiverse "
                          "optimize` printed for it.")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON ({exc}); rebuild the bundle.") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise BundleError(
            f"{root} has bundle schema {found!r}; this Multiverse reads schema {SCHEMA_VERSION}. "
            "Rebuild it with this version of `multiverse optimize`."
        )
    try:
        Manifest.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _schema_error(root / MANIFEST, exc) from None
    if content_digest(manifest) != manifest[DIGEST_KEY]:
        raise BundleError(f"{root / MANIFEST} was changed after the bundle was written (its content_sha256 does not "
                          "match); its task, files or target can no longer be trusted. Rebuild the bundle with "
                          "`multiverse optimize`, or restore its original multiverse.json.")
    return manifest, digest


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder, its manifest (``multiverse.json`` as a dict, checked against
    :class:`Manifest`) and the sha256 of the manifest's bytes (the digest to pin)."""

    path: Path
    manifest: dict
    manifest_sha256: str | None = None

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

    def external_data(self) -> list[str]:
        """The external-data files the graph names (relative paths, sorted); [] for a single-file graph."""
        try:
            return sorted({t.location for t in external_tensors(self.model_path)})
        except (GraphFormatError, OSError) as exc:
            raise BundleError(f"{self.model_path} is not a readable ONNX graph ({exc}); rebuild the bundle.") from exc

    def open_session(self, threads: int | None = 1):
        """Open the graph with ONNX Runtime as ``serve`` would (``runtime.make_session``, the target's session
        options; missing CPU flags tolerated): the proof that the bundle loads.

        Returns the ``onnxruntime.InferenceSession``. Raises BundleError with ORT's reason when it fails.
        """
        from .runtime import make_session

        try:
            return make_session(self.model_path, threads, self.session_config(allow_isa_mismatch=True))
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            reason = " ".join(str(exc).split())[:400]
            raise BundleError(f"ONNX Runtime cannot load {self.model_path}: {reason}. Rebuild the bundle.") from exc


def _inside(root: Path, rel: str) -> Path:
    if not isinstance(rel, str) or unsafe_location(rel):
        raise BundleError(f"Bundle manifest names an unsafe path {rel!r}; refusing to load. Rebuild the bundle.")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"Bundle file {rel!r} resolves outside the bundle; refusing to load. Rebuild the bundle.")
    return path


def _present_files(root: Path) -> list[str]:
    """Relative POSIX paths of every non-directory entry under ``root`` (symlinks not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        names = filenames + [d for d in dirnames if (base / d).is_symlink()]
        found += [(base / n).relative_to(root).as_posix() for n in names]
    return sorted(found)


def verify_files(path: str | Path, *, manifest: dict | None = None) -> list[str]:
    """Problems found in a bundle folder; ``[]`` if intact.

    Checks: every listed file exists inside the folder with its sha256; no file is present that
    the manifest does not list (an unlisted file is refused, not ignored: the loader reads
    optional files such as ``tokenizer_config.json`` or ``1_Pooling/config.json`` when they
    exist, so an unlisted one would be read unverified); every external-data tensor of the graph
    resolves inside the folder (:func:`graphfiles.check_external_data`); every module folder
    ``modules.json`` names stays inside and the files read there are listed.

    Raises BundleError when there is no readable manifest or it does not match :class:`Manifest`.
    """
    root = Path(path)
    if manifest is None:
        manifest, _ = _read(root)
    files = manifest["files"]
    problems = []
    for rel, digest in sorted(files.items()):
        file = _inside(root, rel)
        if not file.is_file():
            problems.append(f"missing: {rel}")
        elif sha256(file) != digest:
            problems.append(f"sha256 mismatch: {rel}")
    problems += [f"unlisted file: {rel} (not written by `multiverse optimize`; remove it)"
                 for rel in _present_files(root) if rel != MANIFEST and rel not in files]
    problems += check_external_data(root / manifest.get("model_file", MODEL_FILE), root)
    problems += _module_problems(root, files)
    return problems


# The files ``tasks/feature_extraction.load_pooling`` reads in a module folder named by modules.json, by module type.
_MODULE_FILES = {"Pooling": ("config.json",), "Dense": ("config.json", "model.safetensors")}


def _module_problems(root: Path, files: dict) -> list[str]:
    """sentence-transformers ``modules.json`` names folders the loader reads from: each must stay inside the
    bundle and every file read there must be listed (so verified). ``[]`` when fine or without modules.json."""
    if "modules.json" not in files or not (root / "modules.json").is_file():
        return []
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
        entries = [(str(m.get("type", "")), m.get("path", "")) for m in modules]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return [f"modules.json is unreadable ({exc})"]
    problems = []
    for kind, rel in entries:
        needed = next((names for suffix, names in _MODULE_FILES.items() if kind.endswith(suffix)), ())
        if not needed:
            continue
        why = unsafe_location(rel) if rel else None
        if not isinstance(rel, str) or why:
            problems.append(f"modules.json names module folder {rel!r} ({why or 'not a string'}); refused")
            continue
        for name in needed:
            path = f"{rel}/{name}" if rel else name
            if path not in files:
                problems.append(f"modules.json needs {path}, which `files` does not list")
    return problems


def read_manifest(path: str | Path, *, expect_sha256: str | None = None) -> dict:
    """The parsed ``multiverse.json``, checked against :class:`Manifest` and its ``content_sha256``.

    Raises BundleError (one line naming the key and what to do) if it is missing, unreadable, of
    another schema version, does not match the schema, was edited, or does not have the pinned
    ``expect_sha256``.
    """
    return _read(Path(path), expect_sha256)[0]


def load(path: str | Path, *, verify: bool = True, expect_manifest_sha256: str | None = None) -> Bundle:
    """Load and check a bundle: manifest schema and digests, and (``verify``) the sha256 of every file,
    no unlisted file, and the graph's external data resolving inside the folder.

    ``verify=False`` (used when a caller has just verified) still checks the manifest and refuses
    external-data paths outside the bundle. ``expect_manifest_sha256`` pins the manifest's bytes.
    Raises BundleError on any problem (fails closed).
    """
    root = Path(path)
    manifest, digest = _read(root, expect_manifest_sha256)
    problems = verify_files(root, manifest=manifest) if verify else [
        p for p in check_external_data(root / manifest.get("model_file", MODEL_FILE), root)
        + _module_problems(root, manifest["files"]) if "refused" in p]
    if problems:
        raise BundleError(
            f"Bundle {root} is corrupted ({'; '.join(problems[:5])}). Rebuild it with `multiverse optimize`."
        )
    _inside(root, manifest.get("model_file", MODEL_FILE))
    return Bundle(root, manifest, digest)


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


def graph_files(model: str | Path) -> list[str]:
    """The external-data files ``model`` (an ``.onnx`` graph) reads, relative to its folder, read from the graph.

    Raises BundleError when a location is absolute or leaves the graph's folder, a file is missing,
    or the graph is unreadable.
    """
    model = Path(model)
    try:
        locations = sorted({t.location for t in external_tensors(model)})
    except (GraphFormatError, OSError) as exc:
        raise BundleError(f"Could not read the graph {model} ({exc}); the stage that wrote it failed.") from exc
    for loc in locations:
        why = unsafe_location(loc)
        src = (model.parent / loc).resolve() if not why else None
        if why or model.parent.resolve() not in src.parents:
            raise BundleError(f"The graph {model} keeps tensor data in {loc!r} ({why or 'outside its folder'}); a bundle "
                              "ships only files inside its folder. Save the graph with relative external data, e.g. "
                              "`onnx.save_model(model, path, save_as_external_data=True, location='model.onnx.data')`.")
        if loc in (MODEL_FILE, MANIFEST) or not src.is_file():
            raise BundleError(f"The graph {model} names external data {loc!r}, which is "
                              f"{'a reserved bundle name' if src.is_file() else 'missing'}; re-save the graph.")
    return locations


def write(dest: str | Path, *, model: str | Path, model_dir: str | Path, manifest: dict[str, Any],
          readme: str, dockerfile: str, overwrite: bool = False, extra_files: dict[str, Path] | None = None) -> Bundle:
    """Write a bundle atomically and return it loaded (and verified).

    Args:
        dest: the bundle folder to create.
        model: the ``.onnx`` graph to ship; every external-data file it names (read from the graph,
            :func:`graph_files`) is copied beside it under the same relative name.
        model_dir: folder with the HF tokenizer/config files (see :func:`copy_model_files`).
        manifest: everything but ``schema_version``, ``model_file``, ``files`` and ``content_sha256``,
            which are added here.
        extra_files: more files to ship, bundle-relative path → source file.
        overwrite: replace an existing ``dest``; otherwise an existing folder is a UsageError.

    Raises UsageError (destination exists), BundleError (I/O failure, external data outside the
    graph's folder or colliding with another bundle file, a manifest that does not match
    :class:`Manifest`; nothing half-written is left).
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise UsageError(f"Output folder {dest} already exists; pass --overwrite or choose another --out.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        model = Path(model)
        shutil.copy2(model, tmp / MODEL_FILE)
        copy_model_files(Path(model_dir), tmp)
        for rel, src in (extra_files or {}).items():
            _relative_path(rel)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        (tmp / "README.md").write_text(readme, encoding="utf-8")
        (tmp / "Dockerfile").write_text(dockerfile, encoding="utf-8")
        for loc in graph_files(model):
            if (tmp / loc).exists():
                raise BundleError(f"The graph {model} names external data {loc!r}, which collides with a bundle file; "
                                  "re-save the graph with another location.")
            (tmp / loc).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model.parent / loc, tmp / loc)
        problems = check_external_data(tmp / MODEL_FILE, tmp)
        if problems:
            raise BundleError(f"The graph {model} would not load from the bundle: {'; '.join(problems[:3])}.")
        files = {rel: sha256(tmp / rel) for rel in _present_files(tmp)}
        full = {"schema_version": SCHEMA_VERSION, **manifest, "model_file": MODEL_FILE, "files": files}
        full = seal(json.loads(json.dumps(full)))  # sealed as it reads back (tuples → lists, int keys → str)
        try:
            Manifest.model_validate(full)
        except ValidationError as exc:
            raise _schema_error(dest / MANIFEST, exc) from None
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
    except ValueError as exc:  # an unsafe extra_files path
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"Could not write bundle {dest}: {exc}.") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load(dest)
