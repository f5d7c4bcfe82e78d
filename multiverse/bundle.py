"""The bundle: what ``optimize`` writes and ``serve``/``benchmark``/``validate`` load (DESIGN.md §4).

This module loads and checks a bundle folder; ``manifest.py`` holds the schema of
``multiverse.json`` and its digests, ``bundle_writer.py`` writes a bundle (every file in it,
README and Dockerfile included). Their public names are re-exported here, so
``multiverse.bundle`` is the one import for bundle work.

The loader fails closed: the manifest must match :class:`Manifest` and its own content digest;
every file in the folder must be listed in its ``files`` table with the right sha256 (an
unlisted file is refused, so nothing the loader reads is unverified); the graph's external-data
files are read from the graph itself and must stay inside the folder. It never loads pickles
and never follows a path outside the bundle folder. Standard library, pydantic and numpy only
on the load path (no ``onnx``: see ``graphfiles.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .bundle_writer import copy_model_files, fused_ops, graph_files, readme_text, write_files
from .errors import BundleError, IsaMismatchError
from .graphfiles import GraphFormatError, check_external_data, external_tensors, unsafe_location
from .manifest import (DIGEST_KEY, MANIFEST, MODEL_FILE, REQUIRED_FILES, SCHEMA_VERSION, Manifest, SourceSpec,
                       TargetSpec, content_digest, manifest_sha256, present_files, read_checked, read_manifest, seal,
                       sha256)

__all__ = ["Bundle", "DIGEST_KEY", "Inspection", "MANIFEST", "MODEL_FILE", "Manifest", "REQUIRED_FILES",
           "SCHEMA_VERSION", "SourceSpec", "TargetSpec", "content_digest", "copy_model_files", "graph_files", "inspect",
           "load", "manifest_sha256", "read_manifest", "readme_text", "seal", "sha256", "slug", "verify_files", "write", "write_files"]


def slug(name: str) -> str:
    """Folder-safe short name of a model id or path: ``sentence-transformers/all-MiniLM-L6-v2`` → ``all-minilm-l6-v2``."""
    base = name.rstrip("/").split("/")[-1] or "model"
    return re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.") or "model"


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its folder, its manifest (``multiverse.json`` as a dict, checked against
    :class:`Manifest`) and the sha256 of the manifest's bytes (the digest to pin)."""

    path: Path
    manifest: dict
    manifest_sha256: str | None = None

    @cached_property
    def spec(self) -> Manifest:
        """The manifest as the typed :class:`Manifest` (already checked when the bundle was loaded)."""
        return Manifest.model_validate(self.manifest)

    @property
    def model_path(self) -> Path:
        return self.path / self.spec.model_file

    @property
    def runtime_name(self) -> str:
        """``OpenVINO`` for an IR bundle (``model.xml``), else ``ONNX Runtime``."""
        from .graphfiles import is_openvino_ir

        return "OpenVINO" if is_openvino_ir(self.model_path) else "ONNX Runtime"

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def passed(self) -> bool:
        return bool((self.spec.validation or {}).get("passed"))

    @property
    def required_flags(self) -> list[str]:
        return list(self.spec.target.required_flags)

    @property
    def inference_precision(self) -> str:
        """The precision OpenVINO computes the layers that are not int8 in, as validated: ``f32`` or ``bf16``
        (``quantization.inference_precision``; ``f32`` for ONNX Runtime bundles and when not recorded)."""
        return self.spec.quantization.inference_precision if self.spec.quantization else "f32"

    def missing_flags(self) -> list[str]:
        """CPU flags (and ``arch:<name>``) the target and the :attr:`inference_precision` need and this host lacks."""
        from .targets import PRECISION_FLAGS, missing_isa

        needed = dict.fromkeys([*self.required_flags, *PRECISION_FLAGS[self.inference_precision]])
        return missing_isa(self.spec.target.arch, list(needed))

    def session_config(self, allow_isa_mismatch: bool = False) -> dict[str, str]:
        """Session entries for this host: the target's ONNX Runtime entries and, for an OpenVINO IR validated in
        bf16, ``openvino.INFERENCE_PRECISION_HINT=bf16`` (``ovsession.precision_config``).

        Raises IsaMismatchError when the host lacks the target's flags (or, for bf16, ``avx512_bf16``), unless
        ``allow_isa_mismatch``; then ``session.x64quantprecision=1`` is added: without VNNI, ONNX
        Runtime's u8s8 int8 GEMM sums pairs of products in 16 bits, which saturate, and that entry
        selects its full-precision kernel; and a bf16 IR on a host without bf16 is compiled at f32.
        """
        from .ovsession import precision_config
        from .targets import PRECISION_FLAGS

        config = dict(self.spec.target.session)
        missing = self.missing_flags()
        precision = self.inference_precision
        lacks_precision = bool(set(missing) & set(PRECISION_FLAGS[precision]))
        if missing:
            if not allow_isa_mismatch:
                why = (f" (its OpenVINO IR was validated computing its non-int8 layers in {precision})"
                       if lacks_precision else "")
                raise IsaMismatchError(
                    f"Bundle {self.path} was built for target {self.spec.target.name!r}, which needs "
                    f"{', '.join(missing)} that this CPU lacks{why}. Re-run `multiverse optimize ... --target native` "
                    "on this host, or pass --allow-isa-mismatch (slower, full-precision int8 GEMM"
                    + (f"; the {precision} layers run in f32, so outputs differ from the validated ones)."
                       if lacks_precision else ").")
                )
            if "arch:" not in " ".join(missing):
                config["session.x64quantprecision"] = "1"
        if not lacks_precision:
            config.update(precision_config(self.manifest.get("quantization")))
        return config

    def external_data(self) -> list[str]:
        """The external-data files the graph names (relative paths, sorted); [] for a single-file graph."""
        try:
            return sorted({t.location for t in external_tensors(self.model_path)})
        except (GraphFormatError, OSError) as exc:
            kind = "OpenVINO IR" if self.runtime_name == "OpenVINO" else "ONNX"
            raise BundleError(f"{self.model_path} is not a readable {kind} graph ({exc}); rebuild the bundle with "
                              "`multiverse optimize`.") from exc

    def open_session(self, threads: int | None = 1):
        """Open the graph with its runtime as ``serve`` would (``runtime.make_session``: ONNX Runtime, or OpenVINO
        for an IR; the target's session
        options; missing CPU flags tolerated): the proof that the bundle loads.

        Returns the ``onnxruntime.InferenceSession``. Raises BundleError with ORT's reason when it fails.
        """
        from .runtime import make_session

        try:
            return make_session(self.model_path, threads, self.session_config(allow_isa_mismatch=True))
        except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
            reason = " ".join(str(exc).split())[:400]
            raise BundleError(f"{self.runtime_name} cannot load {self.model_path}: {reason}. Rebuild the bundle.") from exc


def format_bytes(n: int) -> str:
    """A file size for people, in decimal units with three significant digits: ``812 B``, ``4.10 KB``,
    ``17.4 MB``, ``2.24 GB`` (1 KB = 1000 bytes, as the sizes ``ls -h --si`` and the Hub show)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.{0 if value >= 100 else 1 if value >= 10 else 2}f} {unit}"
    return f"{n} B"


def _inside(root: Path, rel: str) -> Path:
    if not isinstance(rel, str) or unsafe_location(rel):
        raise BundleError(f"Bundle manifest names an unsafe path {rel!r}; refusing to load. Rebuild the bundle.")
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise BundleError(f"Bundle file {rel!r} resolves outside the bundle; refusing to load. Rebuild the bundle.")
    return path


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
        manifest, _ = read_checked(root)
    files = manifest["files"]
    problems = []
    for rel, digest in sorted(files.items()):
        file = _inside(root, rel)
        if not file.is_file():
            problems.append(f"missing: {rel}")
        elif sha256(file) != digest:
            problems.append(f"sha256 mismatch: {rel}")
    problems += [f"unlisted file: {rel} (not written by `multiverse optimize`; remove it)"
                 for rel in present_files(root) if rel != MANIFEST and rel not in files]
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


def load(path: str | Path, *, verify: bool = True, expect_manifest_sha256: str | None = None) -> Bundle:
    """Load and check a bundle: manifest schema and digests, and (``verify``) the sha256 of every file,
    no unlisted file, and the graph's external data resolving inside the folder.

    ``verify=False`` (used when a caller has just verified) still checks the manifest and refuses
    external-data paths outside the bundle. ``expect_manifest_sha256`` pins the manifest's bytes.
    Raises BundleError on any problem (fails closed).
    """
    root = Path(path)
    manifest, digest = read_checked(root, expect_manifest_sha256)
    problems = verify_files(root, manifest=manifest) if verify else [
        p for p in check_external_data(root / manifest.get("model_file", MODEL_FILE), root)
        + _module_problems(root, manifest["files"]) if "refused" in p]
    if problems:
        raise BundleError(
            f"Bundle {root} is corrupted ({'; '.join(problems[:5])}). Copy it again if a copy or download was cut "
            "short, or rebuild it with `multiverse optimize`."
        )
    _inside(root, manifest.get("model_file", MODEL_FILE))
    return Bundle(root, manifest, digest)


def write(dest: str | Path, **kwargs) -> Bundle:
    """Write a bundle atomically (:func:`bundle_writer.write_files`, same keyword arguments) and return it
    loaded and verified. Raises what ``write_files`` and :func:`load` raise (UsageError, BundleError)."""
    return load(write_files(dest, **kwargs))


@dataclass(frozen=True)
class Inspection:
    """What ``multiverse inspect`` reports about a bundle whose manifest passed its checks.

    Attributes:
        bundle: the bundle (manifest checked; files not trusted unless :attr:`intact`).
        problems: :func:`verify_files` findings; ``[]`` when every file is intact.
        external_data: the external-data files the graph names (``[]`` when not intact).
        load_error: why the runtime (ONNX Runtime or OpenVINO) could not open the graph, or None (not tried when not intact).
        missing_flags: CPU flags (and ``arch:<name>``) the target needs and this host lacks.
    """

    bundle: Bundle
    problems: list[str]
    external_data: list[str]
    load_error: str | None
    missing_flags: list[str]

    @property
    def intact(self) -> bool:
        return not self.problems

    @property
    def loads(self) -> bool:
        """The files are intact and the runtime opened the graph."""
        return self.intact and self.load_error is None

    def rows(self, pinned: bool = False) -> list[tuple[str, str]]:
        """``multiverse inspect``'s table: (field, text) rows summarising the manifest, the shipped candidate, the
        digest (``pinned``: it matched ``--expect-sha256``), the files, whether it loads and whether this host can
        run it."""
        b, m = self.bundle, self.bundle.manifest
        v, q = m.get("validation") or {}, m.get("quantization") or {}
        shipped = ((m.get("tuning") or {}).get("trials") or [{}])[(m.get("tuning") or {}).get("chosen") or 0]
        if self.problems:
            loads = "not tried (files are not intact)"
        elif self.load_error:
            loads = f"NO: {self.load_error}"
        else:
            files = ", ".join(f"{f} {format_bytes((b.path / f).stat().st_size)}"
                              for f in (b.spec.model_file, *self.external_data))
            loads = f"yes ({b.runtime_name} opened it; {files})"
        kept = len(q.get("nodes_to_exclude") or q.get("ignored_nodes") or ())
        engine = (m.get("runtime") or {}).get("engine") or {}
        return [
            ("task", m["task"]),
            ("source", f"{m['source'].get('repo_id') or m['source'].get('local_path')} "
                       f"@ {m['source'].get('revision') or 'local'}"),
            ("target", f"{m['target']['name']} (needs {', '.join(m['target']['required_flags']) or '-'})"),
            ("runtime", f"{b.runtime_name}" + (f" {engine.get('version')}" if engine.get("version") else "")
             + (f", inference precision {b.inference_precision}" if b.runtime_name == "OpenVINO" else "")),
            ("precision", f"{m.get('precision')}" + (f": {shipped.get('label')}, {kept} node(s) kept in fp32"
                                                     if q and shipped.get("label") else "")),
            ("fused ops", fused_ops(m)),
            ("validation", f"{v.get('metric')} {v.get('optimised', float('nan')):.4f} vs reference "
                           f"{v.get('reference', float('nan')):.4f} on {v.get('dataset')} (n={v.get('n')}): "
                           f"{'passed' if v.get('passed') else 'FAILED'}"),
            ("why this one", (m.get("tuning") or {}).get("reason") or "-"),
            ("manifest sha256", f"{b.manifest_sha256}" + (" (matches --expect-sha256)" if pinned else
                                                         " (pin it: serve --manifest-sha256 / inspect --expect-sha256)")),
            ("files", f"intact (sha256 of {len(m['files'])} files verified, none unlisted)" if not self.problems
             else "CORRUPTED: " + "; ".join(self.problems) + ". Copy the bundle again if a copy or download was cut "
             "short, or rebuild it with `multiverse optimize`."),
            ("loads", loads),
            ("this host", "can run it" if not self.missing_flags else f"lacks {', '.join(self.missing_flags)}"),
        ]

    def to_dict(self) -> dict:
        """The ``multiverse inspect --json`` document."""
        return {"bundle": str(self.bundle.path), "manifest_sha256": self.bundle.manifest_sha256, "intact": self.intact,
                "problems": self.problems, "loads": self.loads, "load_error": self.load_error,
                "external_data": self.external_data, "host_can_run": not self.missing_flags,
                "missing_flags": self.missing_flags, "manifest": self.bundle.manifest}


def inspect(path: str | Path, *, expect_manifest_sha256: str | None = None) -> Inspection:
    """Check a bundle as ``multiverse inspect`` does: the manifest (schema, digests, the pinned
    ``expect_manifest_sha256``), the sha256 of every file and no unlisted file, then (files intact)
    whether the runtime (ONNX Runtime, or OpenVINO for an IR) opens the graph, and which of the target's CPU flags this host lacks.

    File problems and a graph that does not load are reported in the returned :class:`Inspection`,
    not raised. Raises BundleError when the manifest itself fails its checks or the graph is unreadable.
    """
    b = load(path, verify=False, expect_manifest_sha256=expect_manifest_sha256)
    problems = verify_files(b.path, manifest=b.manifest)
    external = b.external_data() if not problems else []
    load_error = None
    if not problems:
        try:
            b.open_session()
        except BundleError as exc:
            load_error = str(exc)
    return Inspection(b, problems, external, load_error, b.missing_flags())
