"""``multiverse.json``: the bundle manifest's schema, its digests, and reading it checked (DESIGN.md §4).

The loader fails closed: the manifest must match :class:`Manifest` (schema version, types, known
task) and its own content digest. Standard library and pydantic only (this is on the load path).

Two digests, for two purposes:

- ``content_sha256`` inside ``multiverse.json``: sha256 of the manifest's canonical JSON without
  that key. It catches a manifest edited by hand or damaged (a changed ``task``, a ``files`` entry
  removed), which would otherwise still verify. It is no defence against someone who can rewrite
  the bundle: they can recompute it.
- the manifest digest, sha256 of the ``multiverse.json`` bytes (:func:`manifest_sha256`), printed
  by ``optimize`` and ``inspect``. Pinned outside the bundle (``multiverse serve --manifest-sha256``,
  ``inspect --expect-sha256``, ``bundle.load(expect_manifest_sha256=...)``) it fixes every byte the
  loader reads, since the manifest holds the sha256 of every other file (:func:`files_table`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo,
                      field_validator)

from .errors import BundleError
from .graphfiles import unsafe_location
from .tasks import TASKS

SCHEMA_VERSION = 2  # 2: content_sha256, every file listed (none unlisted), external data read from the graph
MANIFEST = "multiverse.json"
MODEL_FILE = "model.onnx"
IR_MODEL_FILE = "model.xml"  # an OpenVINO IR bundle (runtime openvino): model.xml + model.bin
DIGEST_KEY = "content_sha256"
REQUIRED_FILES = ("config.json", "tokenizer.json")  # read by every Predictor (tasks/base.py, inference.py)


def relative_path(rel: str) -> str:
    """``rel`` unchanged if it is a relative path that stays inside the bundle folder; else ValueError."""
    why = unsafe_location(rel)
    if why or rel in (".", "") or rel.endswith(("/", "\\")):
        raise ValueError(f"unsafe path {rel!r} ({why or 'not a file'}): bundle paths are relative and stay inside the folder")
    return rel


RelPath = Annotated[str, AfterValidator(relative_path)]
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


class QuantizationSpec(_Open):
    """``quantization``: the shipped candidate's int8 configuration (None for fp32). The loader reads
    ``inference_precision``: the precision OpenVINO computes the layers that are not int8 in (``bf16`` only in
    bundles for targets whose CPUs all have it, ``targets.Target.inference_precisions``); ``f32`` when absent
    (ONNX Runtime bundles, and OpenVINO bundles written before it was recorded)."""

    inference_precision: Literal["f32", "bf16"] = "f32"


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
    quantization: QuantizationSpec | None = None
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


# ---------------------------------------------------------------------------------------------- files and digests
def sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def present_files(root: Path) -> list[str]:
    """Relative POSIX paths of every non-directory entry under ``root`` (symlinks not followed), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        names = filenames + [d for d in dirnames if (base / d).is_symlink()]
        found += [(base / n).relative_to(root).as_posix() for n in names]
    return sorted(found)


def files_table(root: Path) -> dict[str, str]:
    """The manifest's ``files``: every file under ``root`` but the manifest → its hex sha256."""
    return {rel: sha256(root / rel) for rel in present_files(root) if rel != MANIFEST}


def content_digest(manifest: dict) -> str:
    """sha256 (hex) of the manifest's canonical JSON (sorted keys, no spaces, UTF-8) without ``content_sha256``."""
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(manifest: dict) -> dict:
    """``manifest`` with its ``content_sha256`` (re)computed. ``bundle.write`` calls it; call it yourself only
    after editing a manifest on purpose (the manifest digest to pin changes too)."""
    return {**{k: v for k, v in manifest.items() if k != DIGEST_KEY}, DIGEST_KEY: content_digest(manifest)}


def manifest_sha256(path: str | Path) -> str:
    """sha256 (hex) of the bundle's ``multiverse.json`` bytes: the value to pin. Raises BundleError if unreadable."""
    try:
        return hashlib.sha256((Path(path) / MANIFEST).read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"{Path(path) / MANIFEST} is unreadable ({exc}); pass the folder `multiverse optimize` printed.") from exc


# ---------------------------------------------------------------------------------------------- checking
def schema_error(where: Path, exc: ValidationError) -> BundleError:
    """One-line BundleError for a manifest that does not match :class:`Manifest`: the first key at fault,
    pydantic's reason, the value found, how many more problems, and what to do."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    found = first.get("input")
    shown = "" if isinstance(found, (dict, list)) or first["type"] == "missing" else f" (found {json.dumps(found)[:60]})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return BundleError(f"{where} does not match bundle schema {SCHEMA_VERSION}: `{key}`: {msg}{shown}{more}. "
                       "Rebuild the bundle with `multiverse optimize`, or restore its original multiverse.json.")


def check(manifest: dict, where: Path) -> None:
    """Raises BundleError (:func:`schema_error`) unless ``manifest`` matches :class:`Manifest` (as it will read back)."""
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise schema_error(where, exc) from None


def read_checked(root: Path, expect_sha256: str | None = None) -> tuple[dict, str]:
    """(manifest dict, sha256 of its bytes), checked in this order: pinned digest, JSON, schema version,
    schema (:class:`Manifest`, strict), content digest. Raises BundleError saying what to do at the first failure."""
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
        raise schema_error(root / MANIFEST, exc) from None
    if content_digest(manifest) != manifest[DIGEST_KEY]:
        raise BundleError(f"{root / MANIFEST} was changed after the bundle was written (its content_sha256 does not "
                          "match); its task, files or target can no longer be trusted. Rebuild the bundle with "
                          "`multiverse optimize`, or restore its original multiverse.json.")
    return manifest, digest


def read_manifest(path: str | Path, *, expect_sha256: str | None = None) -> dict:
    """The parsed ``multiverse.json`` of the bundle folder ``path``, checked against :class:`Manifest` and its
    ``content_sha256``.

    Raises BundleError (one line naming the key and what to do) if it is missing, unreadable, of
    another schema version, does not match the schema, was edited, or does not have the pinned
    ``expect_sha256``.
    """
    return read_checked(Path(path), expect_sha256)[0]
