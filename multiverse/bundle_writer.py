"""Writing a bundle: every file in it, in one place (DESIGN.md §4).

:func:`write_files` lays out the graph with its external data, the tokenizer and config files, the
sentence-transformers module files, ``README.md`` (:func:`readme_text`), ``Dockerfile``
(``container.dockerfile``; the image is built by ``multiverse image``) and ``requirements.txt`` (the runtime pins in the manifest), then seals and writes
``multiverse.json``: atomically, through a temp folder beside the destination and ``os.rename``.
Standard library only on import (``torch`` only to convert a ``pytorch_model.bin`` Dense module).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import container
from .errors import BundleError, UsageError
from .graphfiles import (IR_WEIGHTS_SUFFIX, GraphFormatError, check_external_data, external_tensors, is_openvino_ir,
                         unsafe_location)
from .manifest import IR_MODEL_FILE, MANIFEST, MODEL_FILE, SCHEMA_VERSION, check, files_table, relative_path, seal

# HF / sentence-transformers files a bundle carries besides the graph (never weights or pickles).
_HF_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.txt", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model",
             "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


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


def check_destination(dest: str | Path, overwrite: bool = False) -> None:
    """Refuse a bundle destination that could not be written, before any work is done.

    ``dest`` must not be a file, must not exist unless ``overwrite``, and its parent (or, when that does not
    exist yet, its nearest existing ancestor) must be a folder in which a folder can be created: probed by
    creating and removing an empty temp folder there, which also catches read-only file systems and
    permissions that ``os.access`` reports wrongly for root.

    Raises UsageError (naming ``--out`` or ``--overwrite``).
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"Output path {dest} is a file, not a bundle folder; move it away or choose another --out.")
    if dest.exists() and not overwrite:
        raise UsageError(f"Output folder {dest} already exists; pass --overwrite or choose another --out.")
    parent = dest.absolute().parent
    base = next(p for p in (parent, *parent.parents) if p.exists())
    if not base.is_dir():
        raise UsageError(f"--out {dest.parent} cannot be created: {base} is a file, not a folder; choose another --out.")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".multiverse-probe-", dir=base))
    except OSError as exc:
        raise UsageError(f"--out {dest.parent} cannot be written ({exc.strerror} in {base}); choose another --out "
                         "or fix the folder's permissions.") from None


def write_files(dest: str | Path, *, model: str | Path, model_dir: str | Path, manifest: dict[str, Any],
                readme: str | None = None, dockerfile: str | None = None, overwrite: bool = False,
                extra_files: dict[str, Path] | None = None) -> Path:
    """Write a bundle folder atomically and return its path (``bundle.write`` also loads and verifies it).

    Args:
        dest: the bundle folder to create.
        model: the ``.onnx`` graph to ship; every external-data file it names (read from the graph,
            :func:`graph_files`) is copied beside it under the same relative name. An OpenVINO IR (``.xml``)
            ships as ``model.xml`` + ``model.bin``.
        model_dir: folder with the HF tokenizer/config files (see :func:`copy_model_files`).
        manifest: everything but ``schema_version``, ``model_file``, ``files`` and ``content_sha256``,
            which are added here. ``runtime.requirements`` (``{name: version}``), when present, is
            written as ``requirements.txt`` (``container.requirements_txt``).
        readme: ``README.md`` text; default :func:`readme_text` of ``manifest``.
        dockerfile: ``Dockerfile`` text; default ``container.dockerfile()``.
        extra_files: more files to ship, bundle-relative path → source file.
        overwrite: replace an existing ``dest``; otherwise an existing folder is a UsageError.

    Raises UsageError (:func:`check_destination`), BundleError (I/O failure, external data outside the
    graph's folder or colliding with another bundle file, a manifest that does not match
    ``manifest.Manifest``; nothing half-written is left).
    """
    pins = (manifest.get("runtime") or {}).get("requirements")
    texts = {"README.md": readme_text(manifest, Path(dest).name) if readme is None else readme,
             container.DOCKERFILE: container.dockerfile() if dockerfile is None else dockerfile,
             **({container.REQUIREMENTS: container.requirements_txt(pins)} if pins else {})}
    dest = Path(dest)
    check_destination(dest, overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise BundleError(f"Could not write bundle {dest}: {exc}. Check free disk space and permissions.") from exc
    try:
        model = Path(model)
        model_file = IR_MODEL_FILE if is_openvino_ir(model) else MODEL_FILE
        shutil.copy2(model, tmp / model_file)
        copy_model_files(Path(model_dir), tmp)
        for rel, src in (extra_files or {}).items():
            relative_path(rel)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp / rel)
        for rel, text in texts.items():
            (tmp / rel).write_text(text, encoding="utf-8")
        for loc in graph_files(model):
            if is_openvino_ir(model):  # the IR's weights follow its name: model.xml reads model.bin
                shutil.copy2(model.parent / loc, tmp / Path(model_file).with_suffix(IR_WEIGHTS_SUFFIX))
                continue
            if (tmp / loc).exists():
                raise BundleError(f"The graph {model} names external data {loc!r}, which collides with a bundle file; "
                                  "re-save the graph with another location.")
            (tmp / loc).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(model.parent / loc, tmp / loc)
        problems = check_external_data(tmp / model_file, tmp)
        if problems:
            raise BundleError(f"The graph {model} would not load from the bundle: {'; '.join(problems[:3])}.")
        full = {"schema_version": SCHEMA_VERSION, **manifest, "model_file": model_file, "files": files_table(tmp)}
        full = seal(json.loads(json.dumps(full)))  # sealed as it reads back (tuples → lists, int keys → str)
        check(full, dest / MANIFEST)
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
    return dest


# ---------------------------------------------------------------------------------------------- README.md
def _num(value: Any, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals, or ``-`` when it is missing or not a finite number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def _extra_checks(validation: dict) -> list[dict]:
    """The gated checks besides the headline metric and its relative loss (``min_cosine`` next to
    ``mean_cosine``, ``label_agreement`` next to accuracy, ``top1_agreement`` next to MRR)."""
    metric = validation.get("metric")
    return [c for c in validation.get("checks") or ()
            if c["name"] != metric and not c["name"].startswith("relative loss")]


def fused_ops(manifest: dict[str, Any]) -> str:
    """What the shipped graph fuses, in words (``inspect``, the bundle's README): ONNX Runtime's fused op families
    with their counts (``fusion.families``, e.g. ``Attention 6, SkipLayerNormalization 12``), or for an OpenVINO IR
    none, and which OpenVINO frontend read the model (``quantization.frontend``: ``pytorch``, the ``transformers``
    model; ``onnx``, the unfused export); OpenVINO fuses when it compiles."""
    m = manifest
    if (((m.get("runtime") or {}).get("engine") or {}).get("name") or "onnxruntime") == "openvino":
        source = ("the transformers model (OpenVINO's PyTorch frontend)"
                  if (m.get("quantization") or {}).get("frontend") == "pytorch" else "the unfused ONNX export")
        return f"none: an OpenVINO IR of {source}; OpenVINO fuses when it compiles"
    return ", ".join(f"{k} {n}" for k, n in ((m.get("fusion") or {}).get("families") or {}).items()) or "-"


def readme_text(manifest: dict[str, Any], name: str) -> str:
    """The bundle's ``README.md`` (Markdown) for the bundle folder ``name``, from its manifest.

    Sections: where the model came from and the target; accuracy (headline metric, reference vs
    optimised, relative loss, and every other gated check with its threshold); the candidates the
    tuner validated, one row each, the shipped one marked, each check's value and the p50 latency
    in ms (2 decimals) as timed on the build host; how to serve it and build its image.

    Raises KeyError when ``manifest`` lacks ``source``, ``target``, ``fusion``, ``tuning`` or ``versions``.
    """
    m = manifest
    v = m.get("validation") or {}
    src, tgt = m["source"], m["target"]
    metric = v.get("metric")
    extra = _extra_checks(v)
    extra_line = "".join(f"; {c['name']} {_num(c['value'])} (threshold {_num(c['threshold'])}: "
                         f"{'pass' if c['passed'] else 'FAIL'})" for c in extra)
    engine = ((m.get("runtime") or {}).get("engine") or {}).get("name") or "onnxruntime"
    engine_version = ((m.get("runtime") or {}).get("requirements") or {}).get(engine, "?")
    names = [c["name"] for c in extra]
    chosen = m["tuning"].get("chosen")
    rows = []
    for i, t in enumerate(m["tuning"]["trials"]):
        tv = t.get("validation")
        if not tv:
            continue
        checks = {c["name"]: c["value"] for c in tv.get("checks") or ()}
        label = f"**{t['label']}** (shipped)" if i == chosen else t["label"]
        cells = [label, _num(tv["optimised"]), *(_num(checks.get(n)) for n in names), _num(tv["relative_loss"]),
                 "yes" if tv["passed"] else "no", _num(t.get("p50_ms"), 2), _num(t.get("cpu_ms"), 2)]
        rows.append("| " + " | ".join(cells) + " |")
    header = ["candidate", str(metric), *names, "relative loss", "passed", "p50 ms", "CPU ms"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])
    return f"""# {name}

Optimised by Multiverse {m['versions']['multiverse']} (`multiverse optimize`) for **{tgt['name']}**
({tgt.get('description', '')}).

- Source: `{src['repo_id'] or src['local_path']}` revision `{src['revision'] or 'local'}`
- Task: `{m['task']}`; precision: **{m['precision']}**{
    f" (OpenVINO inference precision {(m.get('quantization') or {}).get('inference_precision', 'f32')})"
    if engine == 'openvino' else ''}; max sequence length {m.get('max_sequence_length')} tokens
- Required CPU flags: {', '.join(tgt['required_flags']) or 'none'}
- Fused ops: {fused_ops(m)}

## Accuracy ({v.get('dataset')}, {v.get('n')} examples, tolerance {v.get('tolerance')})

{metric}: reference {_num(v.get('reference'))}, optimised {_num(v.get('optimised'))},
relative loss {_num(v.get('relative_loss'))}{extra_line}: **{'passed' if v.get('passed') else 'FAILED'}**.

Candidates validated by the tuner (p50: median wall-clock latency per call on the build host; CPU ms: process
CPU time per call, interleaved rounds, what the choice compares; {'the shipped one is marked' if chosen is not None else 'none passed the gate'}):

{table}

Why this candidate: {m['tuning'].get('reason') or 'not recorded'}.

## Serve

`requirements.txt` pins the runtime that validated this bundle ({engine} {engine_version}{
    ', running the OpenVINO IR `model.xml`' if engine == 'openvino' else ''}).

```bash
pip install -r {name}/requirements.txt          # the lean runtime: no torch
pip install --no-deps multiverse-*.whl          # not on PyPI: `pip wheel --no-deps -w dist .` in a Multiverse clone
multiverse serve {name}
curl -s localhost:8080/predict -H 'content-type: application/json' -d '{{"inputs": "Hello world"}}'
multiverse image {name} --tag {name}:latest   # or a container image (see Dockerfile)
```
"""
