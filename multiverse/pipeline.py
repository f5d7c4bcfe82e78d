"""``optimize``: the only place that knows the stage order (DESIGN.md §2).

resolve → export (+ check) → fuse (+ check) → tune/quantize → validate → gate → bundle.
Each stage takes a value and returns a new one; the gate is a policy here, reports are data. Beside export and
fusion, a worker process computes the PyTorch reference the tuner validates against (``multiverse.background``).
"""

from __future__ import annotations

import datetime as _dt
import sys
from pathlib import Path

from . import __version__, bundle, evaldata, hub, image, workdir
from .background import BackgroundBuilds, in_worker_start, start_reference
from .bundle_writer import check_destination
from .errors import AccuracyGateError, HubError, UsageError
from .export import export
from .fuse import expected_fusions, fuse, summarize
from .progress import Progress
from .targets import get_target, missing_flags
from .choice import trial_runtime
from .ovtuning import runtimes
from .tuning import TuningReport, tune
from .validate import ValidationReport, by_length, resolution_note

DEFAULT_OUT = Path("multiverse-bundles")


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries that shape a bundle (for the manifest)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"multiverse": __version__}
    for pkg in ("onnxruntime", "onnx", "optimum-onnx", "optimum", "transformers", "torch", "neural-compressor",
                "tokenizers", "sentence-transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def bundle_path(ckpt: hub.Checkpoint, target_name: str, out: str | Path | None) -> Path:
    """``<out>/<model-slug>-<target>`` (default ``./multiverse-bundles``)."""
    return Path(out or DEFAULT_OUT) / f"{bundle.slug(ckpt.name)}-{target_name}"


def optimize(model: str | None = None, target: str = "native", *, task: str | None = None,
             revision: str | None = None, out: str | Path | None = None, eval_data: str | None = None,
             eval_split: str = "validation", eval_limit: int | None = None, tolerance: float = 0.01, overwrite: bool = False, keep_failed: bool = False,
             precision: str = "auto", max_trials: int | None = None,
             threads: int | None = None, progress: Progress | None = None,
             eval_columns: evaldata.Columns | None = None, runtime: str = "auto") -> bundle.Bundle:
    """Checkpoint → fused, int8 (when it pays), validated bundle.

    Args:
        model: Hub id, folder, short recipe name or None (embedded MiniLM).
        target: CPU target name or ``native``.
        eval_data: ``builtin``, ``bbc-news``, ``wnut16``, a JSONL/CSV file or a saved ``datasets`` folder
            (see ``evaldata.load``). Default: the recipe's Hub dataset for a short name whose recipe has
            ``eval`` (at the recipe's split, ``eval_split`` ignored), else ``builtin``.
        eval_split: split of a named set or DatasetDict the tuner selects on (default ``validation``,
            so that ``multiverse validate --eval-split test`` reports on data the tuner never saw).
        eval_limit: keep only the first N examples (ranking: queries) of the eval data.
        eval_columns: the eval file's column names when they are not ``text``/``label`` (``evaldata.Columns``).
        tolerance: maximum relative metric loss (0.01 = 1 %).
        keep_failed: write the bundle (marked failed) even when the gate fails.
        precision: ``auto`` ships the fastest passing candidate as timed on this host; ``int8`` the
            fastest passing int8 one (the default when this host lacks the target's CPU flags, since
            its timings say nothing about the target); ``fp32`` the fused fp32 graph.
        max_trials: tuning trial budget (default: the tuner's).
        threads: intra-op threads for validation and latency measurement (default: physical cores).
        runtime: ``auto`` tries ONNX Runtime and (when installed) OpenVINO + NNCF candidates and ships the fastest
            that passes; ``onnxruntime`` or ``openvino`` ships only that runtime (``ovtuning.runtimes``).

    Returns the written :class:`bundle.Bundle`.

    Raises:
        UsageError, RecipeError, HubError, EvalDataError: bad input, before any work is done.
        ExportError, FusionError, QuantizationError: a stage failed.
        AccuracyGateError: no candidate met the tolerance (exit code 3); ``.report`` has the numbers.
    """
    if in_worker_start():
        raise UsageError("optimize() was called while a worker process imported your script: put the call under "
                         "`if __name__ == \"__main__\":` (the build's worker process imports the main module).")
    progress = progress or Progress()
    workdir.remove_stale()  # work folders of runs killed with -9 (again in work_folder, right before ours is made)
    _check_tolerance(tolerance)
    _check_threads(threads)
    if precision not in ("auto", "int8", "fp32"):
        raise UsageError(f"--precision {precision!r}: choose auto, int8 or fp32.")
    runtimes(runtime, precision)  # an unknown runtime or a missing extra fails here, before any work
    tgt = get_target(target)
    lacking = missing_flags(tgt)
    if lacking:
        progress.warn(f"this host lacks {', '.join(lacking)} needed by target {tgt.name}: the bundle is built for "
                      f"that CPU and latencies measured here say nothing about it; {_cross_target_choice(precision)}")
        if precision == "auto":
            precision = "int8"
    with progress.stage("resolve", "Resolving the model") as s:
        ckpt = hub.resolve(model, revision, task)
        s["summary"] = (f"{ckpt.name} ({ckpt.model_type}, {ckpt.num_layers} layers, {ckpt.task}) "
                        f"from {ckpt.source}" + (f" @ {ckpt.revision[:12]}" if ckpt.revision else ""))
    dest = bundle_path(ckpt, tgt.name, out)
    check_destination(dest, overwrite)  # a file, an existing bundle or an unwritable --out: before any work
    data = _eval_data(model, ckpt, eval_data, eval_split, eval_limit, eval_columns)
    note = resolution_note(ckpt.task, len(data), tolerance)
    if note:
        progress.warn(note)

    with workdir.work_folder() as work, BackgroundBuilds() as background:
        start_reference(background, ckpt, by_length(data), work)  # on the core export and fusion leave idle
        with progress.stage("export", "Exporting to ONNX (optimum-onnx)") as s:
            fp32 = export(ckpt, work / "fp32")
            s["summary"] = f"opset {fp32.opset}, max |ONNX − PyTorch| {fp32.max_abs_diff:.1e}"
        with progress.stage("fuse", "Fusing the graph (ONNX Runtime transformer optimizer)") as s:
            fused = fuse(fp32, work / "fused", ckpt, tgt)
            fam = summarize(fused.fused_ops)
            s["summary"] = ", ".join(f"{k} {v}" for k, v in fam.items()) + f"; max diff {fused.max_abs_diff:.1e}"
        for w in fused.fusion_warnings:
            progress.warn(f"partial fusion: {w}")
        with progress.stage("tune", f"Quantizing and validating on {data.name} ({len(data)} examples)") as s:
            chosen, report = tune(ckpt, fused, tgt, data, tolerance, work / "trials", precision=precision,
                                  max_trials=max_trials, threads=threads, progress=progress, exported=fp32,
                                  runtime=runtime, background=background)
            s["summary"] = report.summary()
            validation = report.chosen_validation
            passed = validation is not None and validation.passed
            s["ok"] = passed  # a failed gate is a failed stage (✗), not ✓
        step = validation.details.get("metric_step") if validation is not None else None
        note = resolution_note(ckpt.task, len(data), tolerance, step) if step is not None else None
        if note:
            progress.warn(note)
        manifest = _manifest(ckpt, tgt, fp32, fused, chosen, report)
        if not passed and not keep_failed:
            raise AccuracyGateError(_gate_message(report, tolerance), report)
        with progress.stage("bundle", "Writing the bundle") as s:
            # the runtime that just validated it (onnxruntime above all), written as requirements.txt
            engine = trial_runtime(chosen.quantization)
            pins = image.runtime_pins(extras=("openvino",) if engine == "openvino" else ())
            manifest["runtime"] = {"python": ".".join(map(str, sys.version_info[:2])),
                                   "engine": {"name": engine, "version": pins.get(engine)}, "requirements": pins}
            written = bundle.write(dest, model=chosen.path, model_dir=chosen.model_dir, manifest=manifest,
                                   overwrite=overwrite)  # with README.md, Dockerfile and requirements.txt
            s["summary"] = f"{dest} (manifest sha256 {written.manifest_sha256})"
        if not passed:
            raise AccuracyGateError(_gate_message(report, tolerance) + f" The failed bundle was kept at {dest}.", report)
        return written


def _cross_target_choice(precision: str) -> str:
    """What a build for a target this host cannot run ships, for the requested ``precision`` (auto, int8, fp32)."""
    if precision == "fp32":
        return "precision fp32 ships the fused fp32 graph."
    return (f"precision {precision} ships an int8 candidate that meets the tolerance (the fastest of them on this "
            "host)" + (", as int8 does: fp32 timed here may only look faster." if precision == "auto" else "."))


def _eval_data(model: str | None, ckpt: hub.Checkpoint, eval_data: str | None, eval_split: str,
               eval_limit: int | None, columns: evaldata.Columns | None = None) -> evaldata.EvalSet:
    """``--eval-data`` if given; else, for a short name whose recipe (``recipes/models/<name>.yaml``) has an
    ``eval`` entry, that Hub dataset at the recipe's split (``evaldata.hub_dataset``); else the built-in set.
    The recipe's ``metric`` is not used: the gate picks the task's metric (accuracy when labelled).
    Raises HubError (dataset not cached, offline) or EvalDataError."""
    if eval_data is None and model is not None:
        from .targets import load_model_recipes

        recipes = load_model_recipes()
        recipe = recipes.get(model) or recipes.get(model.lower())
        if recipe is not None and recipe.eval is not None and ckpt.repo_id == recipe.model:
            e = recipe.eval
            return evaldata.hub_dataset(e.dataset, ckpt.task, split=e.split, text=e.text, text_pair=e.text_pair,
                                        label=e.label, limit=eval_limit, recipe=recipe.name)
    return evaldata.load(eval_data, ckpt.task, split=eval_split, limit=eval_limit, columns=columns)


def _check_tolerance(tolerance: float) -> None:
    """Raises UsageError unless 0 ≤ tolerance < 1 (NaN fails too)."""
    if not (0 <= tolerance < 1):
        raise UsageError(f"--tolerance {tolerance} must be in [0, 1): it is a relative loss, 0.01 = 1 %.")


def _check_threads(threads: int | None) -> None:
    """Raises UsageError unless ``threads`` is None (physical cores) or at least 1, as ``serve --threads``."""
    if threads is not None and threads < 1:
        raise UsageError(f"--threads {threads} must be ≥ 1 (omit it for one per physical core).")


def revalidate(bundle_dir: str | Path, eval_data: str | None = None, tolerance: float | None = None, *,
               eval_split: str = "test", eval_limit: int | None = None, threads: int | None = None,
               allow_isa_mismatch: bool = False, eval_columns: evaldata.Columns | None = None) -> "ValidationReport":
    """Re-run the accuracy gate on a written bundle against its original PyTorch checkpoint.

    The checkpoint is found from the manifest: the recorded local folder if it still has the
    same content hash, else the Hub id at the recorded revision (HF cache first).
    ``tolerance`` defaults to the one the bundle was built with; ``eval_columns`` as for :func:`optimize`.

    Raises BundleError (corrupt), HubError (original checkpoint not found), EvalDataError,
    IsaMismatchError; the returned report says whether the gate passed (the CLI exits 3 if not).
    """
    from .inference import Predictor
    from .validate import validate

    if tolerance is not None:
        _check_tolerance(tolerance)
    _check_threads(threads)
    b = bundle.load(bundle_dir)
    src = b.manifest["source"]
    ckpt = None
    local = Path(src.get("local_path") or "")
    if src.get("local_path") and local.is_dir():
        candidate = hub.from_folder(local, b.task, src.get("repo_id"), src.get("revision"))
        if candidate.local_hash == src.get("local_hash"):
            ckpt = candidate
    if ckpt is None:
        if not src.get("repo_id"):
            raise HubError(f"The original checkpoint of {b.path} ({local}) is gone or changed; "
                               "validation needs it as the reference. Restore the folder or rebuild the bundle.")
        ckpt = hub.resolve(src["repo_id"], src.get("revision"), b.task)
    data = evaldata.load(eval_data, b.task, split=eval_split, limit=eval_limit, columns=eval_columns)
    if tolerance is None:
        tolerance = float((b.manifest.get("validation") or {}).get("tolerance", 0.01))
    predictor = Predictor.from_bundle(b, threads=threads, allow_isa_mismatch=allow_isa_mismatch, verify=False)
    return validate(ckpt, predictor, data, tolerance, threads=threads)


def _gate_message(report: TuningReport, tolerance: float) -> str:
    best = report.best_trial()
    if best is None:
        return "Accuracy gate failed: no candidate could be validated."
    v = best.validation
    return (f"Accuracy gate failed at tolerance {tolerance:g}: the best candidate ({best.label}) has {v.metric} "
            f"{v.optimised:.4f} vs reference {v.reference:.4f} (relative loss {v.relative_loss:.4f}); "
            f"{v.failure()}. Raise --tolerance, or give --eval-data that represents your traffic.")


def _manifest(ckpt, tgt, fp32, fused, chosen, report: TuningReport) -> dict:
    from .quantize import int8_weight_fraction
    from .tasks import TextTokenizer, get_task
    from .tasks.feature_extraction import load_pooling

    config = ckpt.config
    pooled = get_task(ckpt.task).output == "last_hidden_state"  # no head: sentence embeddings pooled from it
    manifest = {
        "task": ckpt.task,
        "source": {"repo_id": ckpt.repo_id, "revision": ckpt.revision, "local_path": str(ckpt.path),
                   "local_hash": ckpt.local_hash, "found_in": ckpt.source},
        "target": {"name": tgt.name, "description": tgt.description, "arch": tgt.isa.arch,
                   "required_flags": list(tgt.isa.required_flags), "session": dict(tgt.session)},
        "model": {"model_type": ckpt.model_type, "num_layers": ckpt.num_layers, "num_heads": ckpt.num_heads,
                  "hidden_size": ckpt.hidden_size, "labels": None if pooled else config.get("id2label")},
        "precision": chosen.stage if chosen.stage == "int8" else "fp32",
        "export": {"exporter": "optimum-onnx", "opset": fp32.opset, "max_abs_diff": fp32.max_abs_diff,
                   "dynamic_axes": {"batch": 0, "sequence": 1}},
        "fusion": {"ops": fused.fused_ops, "families": summarize(fused.fused_ops),
                   "expected": expected_fusions(ckpt.num_layers), "warnings": list(fused.fusion_warnings),
                   "max_abs_diff": fused.max_abs_diff},
        "quantization": chosen.quantization,
        "int8_weight_fraction": round(int8_weight_fraction(chosen.path), 4),
        "sizes_bytes": {"fp32": fp32.size_bytes, "model": chosen.size_bytes},
        "tuning": report.to_dict(),
        "validation": report.chosen_validation.to_dict() if report.chosen_validation else None,
        "max_sequence_length": TextTokenizer(chosen.model_dir).max_length,
        "versions": versions(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if pooled:
        manifest["pooling"] = load_pooling(chosen.model_dir).describe()
    return manifest
