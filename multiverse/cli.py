"""The ``multiverse`` command: parse, call the library, render. Results go to stdout, everything else to stderr.

Exit codes: 0 ok, 1 error, 2 usage or recipe error (also: a command that needs the build stack run
on the lean runtime install; the one line says `pip install "multiverse[optimize]"`), 3 accuracy gate failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

try:  # Ctrl-C while the console script imports this module (about 0.1 s): exit 130, no traceback, as later
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .errors import AccuracyGateError, Interrupted, MultiverseError, UsageError
    from .extras import HINT, OPTIMIZE_MODULES
except KeyboardInterrupt:
    raise SystemExit(130) from None

# rich_markup_mode=None: click's plain help, which shows flags as plain flags (typer's rich help renders
# `--json <bool>` although `--json true` is a usage error) and prints usage errors as one plain line.
app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Make transformer encoders fast on CPUs: optimize, inspect, validate, serve, benchmark.")


def _wide(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): on a terminal its width; in a pipe or CI log wide enough that no cell
    (a sha256, a target name, a benchmark number) is cut with "…" or folded mid-value (rich assumes 80 columns there)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=max(console.width, 240))


err = _wide(stderr=True)


def _out() -> Console:
    """Console for tables on stdout (see :func:`_wide`)."""
    return _wide()


def _fail(exc: MultiverseError, as_json: bool = False) -> None:
    if as_json:
        doc = {"error": str(exc), "error_type": type(exc).__name__, "exit_code": exc.exit_code}
        report = getattr(exc, "report", None)
        if report is not None and hasattr(report, "to_dict"):
            doc["report"] = report.to_dict()
        print(json.dumps(doc, indent=2))
    err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)  # `[optimize]` is not markup
    raise typer.Exit(exc.exit_code)


def _interrupted(exc: Interrupted, as_json: bool = False, cleaned: str = "") -> None:
    """Exit 128 + signal number (143 SIGTERM, 130 SIGINT) after the ``finally`` blocks have run."""
    if as_json:
        print(json.dumps({"error": str(exc), "error_type": "Interrupted", "exit_code": exc.exit_code}, indent=2))
    err.print(f"[red]{exc}[/red]{cleaned}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _progress():
    """Rich spinner on a terminal, plain timestamped lines with heartbeats otherwise (CI logs)."""
    from .progress import for_console

    try:
        return for_console(err)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _columns(text: str | None, text_pair: str | None, label: str | None):
    """``--text-column`` / ``--text-pair-column`` / ``--label-column`` as an ``evaldata.Columns``."""
    from .evaldata import Columns

    return Columns(text, text_pair, label)


def _need_build_stack(what: str, as_json: bool = False) -> None:
    """Exit 2 with one line (`pip install "multiverse[optimize]"`) when the optimize extra is missing."""
    from .extras import require_optimize

    try:
        require_optimize(what)
    except MultiverseError as exc:
        _fail(exc, as_json)


@app.command()
def optimize(
    model: Optional[str] = typer.Argument(None, help="Hub id, local folder or short name (recipes/models). "
                                          "Default: the embedded sentence-transformers/all-MiniLM-L6-v2."),
    target: str = typer.Option("native", "--target", "-t", help="CPU target (`multiverse targets`) or native."),
    task: Optional[str] = typer.Option(None, help="feature-extraction | text-classification | token-classification | ranking"),
    revision: Optional[str] = typer.Option(None, help="Hub branch, tag or commit sha."),
    out: Path = typer.Option(Path("multiverse-bundles"), "--out", "-o", help="Folder the bundle folder is written in."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="builtin | bbc-news | wnut16 | JSONL/CSV file | saved datasets folder. "
                                            "Default: a short name's recipe data set (recipes/models), else builtin."),
    eval_split: str = typer.Option("validation", "--eval-split", help="Split of a named set / DatasetDict to tune on."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Use only N evenly spaced eval examples (a quick check; the gate is noisier)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Eval file column holding the text (default: text; ranking: query)."),
    text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column", help="Eval file column holding the second text of a pair (default: text_pair; ranking: passage)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Eval file column holding the label (default: label)."),
    tolerance: float = typer.Option(0.01, help="Max relative metric loss vs the PyTorch model (0.01 = 1 %)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle folder."),
    keep_failed: bool = typer.Option(False, "--keep-failed", help="Write the bundle (marked failed) when the gate fails."),
    no_quantize: bool = typer.Option(False, "--no-quantize", hidden=True, help="Deprecated alias of --precision fp32."),
    precision: str = typer.Option("auto", help="auto: fastest passing candidate timed here; int8: fastest passing "
                                  "int8; fp32: fused fp32 only."),
    runtime: str = typer.Option("auto", help="auto: ONNX Runtime and, when installed, OpenVINO + NNCF candidates; "
                                "onnxruntime | openvino: ship only that runtime."),
    max_trials: Optional[int] = typer.Option(None, "--max-trials", min=0, help="Int8 trial budget (default 12; the fp32 baseline and sensitivity runs are not counted)."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads for validation/latency (default: physical cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout."),
) -> None:
    """Export, fuse, quantize and validate MODEL for a CPU target; write a bundle. Prints the bundle path."""
    _need_build_stack("`multiverse optimize`", as_json)
    from .pipeline import optimize as run
    from .workdir import unwind_on_signals

    try:
        if no_quantize:  # the deprecated alias of --precision fp32
            if precision == "int8":
                raise UsageError("--no-quantize (deprecated: --precision fp32) conflicts with --precision int8; pass one.")
            err.print("[yellow]warning:[/yellow] --no-quantize is deprecated; use --precision fp32.", highlight=False)
        with unwind_on_signals():  # SIGTERM/SIGINT unwind through the work folder's cleanup, then exit 143/130
            b = run(model, target, task=task, revision=revision, out=out, eval_data=eval_data, eval_split=eval_split,
                    eval_limit=eval_limit, tolerance=tolerance, overwrite=overwrite, keep_failed=keep_failed,
                    precision="fp32" if no_quantize else precision, max_trials=max_trials, threads=threads,
                    progress=_progress(), eval_columns=_columns(text_column, text_pair_column, label_column),
                    runtime=runtime)
    except MultiverseError as exc:
        _fail(exc, as_json)
    except Interrupted as exc:
        _interrupted(exc, as_json, "; the work folder was removed.")
    if as_json:
        print(json.dumps({"bundle": str(b.path), "manifest_sha256": b.manifest_sha256, "manifest": b.manifest}, indent=2))
    else:
        print(b.path)


@app.command()
def inspect(bundle: Path = typer.Argument(..., help="Bundle folder."),
            expect_sha256: Optional[str] = typer.Option(None, "--expect-sha256", help="Refuse the bundle unless its "
                                                        "multiverse.json has this sha256 (the digest optimize printed)."),
            as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """Show a bundle's manifest summary and digest, verify every file, prove the graph loads, and say whether
    this CPU can run it. Exit 1 when the bundle is corrupted or does not load."""
    from .bundle import inspect as check

    try:
        found = check(bundle, expect_manifest_sha256=expect_sha256)
    except MultiverseError as exc:
        _fail(exc, as_json)
    problems, load_error = found.problems, found.load_error
    if as_json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        t = Table(show_header=False, box=None)
        t.add_column(no_wrap=True)
        t.add_column(overflow="fold")  # a digest is folded, never cut with "…"
        rows = found.rows(pinned=bool(expect_sha256))
        for k, val in rows:
            t.add_row(f"[bold]{k}[/bold]", str(val))
        _out().print(t)
    if problems:
        err.print(f"[red]error:[/red] bundle {bundle} is corrupted: {'; '.join(problems)}. Rebuild it.",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if load_error:
        err.print(f"[red]error:[/red] {load_error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def validate(
    bundle: Path = typer.Argument(..., help="Bundle folder."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data", help="builtin | bbc-news | wnut16 | JSONL/CSV file | saved datasets folder"),
    eval_split: str = typer.Option("test", "--eval-split", help="Split of a named set / DatasetDict (held out: test)."),
    eval_limit: Optional[int] = typer.Option(None, "--eval-limit", help="Use only N evenly spaced eval examples (a quick check; the gate is noisier)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Eval file column holding the text (default: text; ranking: query)."),
    text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column", help="Eval file column holding the second text of a pair (default: text_pair; ranking: passage)."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Eval file column holding the label (default: label)."),
    tolerance: Optional[float] = typer.Option(None, help="Max relative loss (default: the bundle's)."),
    threads: Optional[int] = typer.Option(None, help="Intra-op threads (default: physical cores)."),
    allow_isa_mismatch: bool = typer.Option(False, "--allow-isa-mismatch", help="Run although this CPU lacks the target's flags."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Re-run the accuracy gate on BUNDLE against its original PyTorch model. Exit 3 when it fails."""
    _need_build_stack("`multiverse validate`", as_json)
    from .pipeline import revalidate
    from .validate import resolution_note

    try:
        report = revalidate(bundle, eval_data, tolerance, eval_split=eval_split, eval_limit=eval_limit, threads=threads,
                            allow_isa_mismatch=allow_isa_mismatch,
                            eval_columns=_columns(text_column, text_pair_column, label_column))
    except MultiverseError as exc:
        _fail(exc, as_json)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        t = Table(title=f"{bundle} on {report.dataset} (n={report.n}, tolerance {report.tolerance:g})")
        for col in ("check", "value", "required", "result"):
            t.add_column(col)
        t.add_row(f"{report.metric} (reference)", f"{report.reference:.4f}", "", "")
        t.add_row(f"{report.metric} (optimised)", f"{report.optimised:.4f}", "", "")
        for c in report.checks:
            t.add_row(c.name, f"{c.value:.4f}", f"{c.threshold:.4f}", "pass" if c.passed else "FAIL")
        shown = {c.name for c in report.checks} | {report.metric}  # already rows above
        notes = {k: v for k, v in report.details.items() if isinstance(v, str)}  # what a check means: below the table
        for k, v in report.details.items():
            if k in shown or k in notes:
                continue
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v), "", "")
        _out().print(t)
        for k, v in notes.items():
            _out().print(f"{k}: {v}", highlight=False, soft_wrap=True)
    note = resolution_note(report.task, report.n, report.tolerance, report.details.get("metric_step"))
    if note:
        err.print(f"[yellow]warning:[/yellow] {note}", highlight=False, soft_wrap=True)
    if not report.passed:
        err.print(f"[red]error:[/red] accuracy gate failed: {report.failure()}", highlight=False, soft_wrap=True)
        raise typer.Exit(AccuracyGateError.exit_code)


@app.command()
def targets(as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")) -> None:
    """List the known CPU targets and the one this host matches."""
    from .targets import detect_native, host_cpu_name, load_targets, missing_flags

    try:
        native = detect_native().name
    except MultiverseError:
        native = None
    all_targets = load_targets()
    if as_json:
        print(json.dumps({"native": native, "cpu": host_cpu_name(), "targets": {
            n: {**t.model_dump(mode="json"), "host_missing": missing_flags(t)} for n, t in all_targets.items()}}, indent=2))
        return
    t = Table(title=f"CPU targets (this host: {host_cpu_name()} → {native})")
    for col in ("target", "requires", "int8 weights", "session options", "host"):
        t.add_column(col)
    for name, tgt in sorted(all_targets.items(), key=lambda kv: -kv[1].priority):
        miss = missing_flags(tgt)
        q = tgt.quantization
        t.add_row(name + (" (native)" if name == native else ""), ", ".join(tgt.isa.required_flags),
                  f"{q.weight_type}{' per-channel' if q.per_channel else ''}", ", ".join(f"{k}={v}" for k, v in tgt.session.items()) or "-",
                  "ok" if not miss else "lacks " + ", ".join(miss))
    _out().print(t)


@app.command()
def serve(
    bundle: Path = typer.Argument(..., help="Bundle folder (what `multiverse optimize` printed)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8080, help="TCP port."),
    threads: Optional[int] = typer.Option(None, help="Inference threads: ONNX Runtime intra-op, or OpenVINO INFERENCE_NUM_THREADS (default: physical cores within the CPU quota)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="MULTIVERSE_API_KEY",
                                          help="Require `Authorization: Bearer KEY` (health probes excepted)."),
    allow_isa_mismatch: bool = typer.Option(False, "--allow-isa-mismatch",
                                            help="Serve a bundle built for CPU flags this host lacks."),
    max_batch: int = typer.Option(256, "--max-client-batch-size", "--max-batch",
                                  help="Inputs per request (more: 422). TEI's name; --max-batch still works."),
    max_batch_tokens: int = typer.Option(16384, "--max-batch-tokens",
                                         help="Real tokens one request may carry, all its texts together (more: 413; 0: no limit)."),
    max_chars: int = typer.Option(50_000, "--max-chars", help="Characters per text (more: 422; long texts are truncated to the model's tokens)."),
    max_body: int = typer.Option(4 * 1024 * 1024, "--max-body", help="Request body bytes (more: 413)."),
    max_queue: int = typer.Option(128, "--max-queue", help="Requests waiting for the model (more: 429)."),
    batch_tokens: int = typer.Option(0, "--batch-tokens", help="Server-side batching budget in padded tokens (0: off)."),
    performance_hint: str = typer.Option("latency", "--performance-hint", help="latency: one request at a time on every thread | throughput: one run in flight per stream, one thread each (OpenVINO IRs: its THROUGHPUT hint)."),
    streams: Optional[int] = typer.Option(None, "--streams", help="Runs in flight with --performance-hint throughput (default: one per thread)."),
    max_run_tokens: int = typer.Option(4096, "--max-run-tokens", help="Padded tokens per model run (ONNX Runtime or OpenVINO); bigger requests are split."),
    graceful_timeout: float = typer.Option(30.0, "--graceful-timeout", help="Seconds queued work gets to finish after SIGTERM; the rest gets 503 + Retry-After."),
    header_timeout: float = typer.Option(10.0, "--header-timeout", help="Seconds a connection gets to send a complete request head; else closed."),
    body_timeout: float = typer.Option(30.0, "--body-timeout", help="Seconds a request gets to send its whole body; else 408."),
    keep_alive_timeout: float = typer.Option(30.0, "--keep-alive-timeout", help="Seconds an idle keep-alive connection stays open."),
    max_connections: int = typer.Option(512, "--max-connections", help="Open connections; more are answered 503 and closed."),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning | error"),
    manifest_sha256: Optional[str] = typer.Option(None, "--manifest-sha256", help="Refuse to serve unless the "
                                                  "bundle's multiverse.json has this sha256 (printed by optimize)."),
) -> None:
    """Serve BUNDLE over HTTP: POST /predict (Infinity), TEI and OpenAI routes, /metrics. Stops cleanly on SIGTERM."""
    from .serve.server import serve as run

    try:
        run(bundle, host=host, port=port, threads=threads, api_key=api_key, allow_isa_mismatch=allow_isa_mismatch,
            max_batch=max_batch, max_chars=max_chars, max_body_bytes=max_body, max_queue=max_queue,
            batch_tokens=batch_tokens, performance_hint=performance_hint, streams=streams,
            max_run_tokens=max_run_tokens, max_batch_tokens=max_batch_tokens,
            graceful_timeout=graceful_timeout, header_timeout=header_timeout, body_timeout=body_timeout,
            keep_alive_timeout=keep_alive_timeout, max_connections=max_connections, log_level=log_level,
            manifest_sha256=manifest_sha256)
    except MultiverseError as exc:
        _fail(exc)


@app.command()
def benchmark(
    bundle: Path = typer.Argument(..., help="Bundle folder (from `multiverse optimize`)."),
    cores: Optional[str] = typer.Option(None, help="Physical core counts, comma-separated. Default: 1,2,4,8."),
    seq_lens: Optional[str] = typer.Option(None, "--seq-lens", help="Sequence lengths in tokens. Default: 8,16,32,64,128,256,384,512."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Batch sizes. Default: 1,2,4,8,16,32."),
    quick: bool = typer.Option(False, "--quick", help="Small grid (cores 1,2 × seq 8,128 × batch 1,8) and short cells."),
    baseline: list[str] = typer.Option(["transformers"], "--baseline", help="transformers | optimum | openvino | none (repeatable; openvino needs the peers extra)."),
    checkpoint: Optional[Path] = typer.Option(None, help="Original checkpoint for the baselines (default: the bundle's source)."),
    out: Path = typer.Option(Path("multiverse-benchmark"), "--out", "-o", help="Folder for report.json, report.csv and PNGs."),
    http: Optional[str] = typer.Option(None, "--http", help="Measure a running `multiverse serve` at this URL instead."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="MULTIVERSE_API_KEY", help="API key for --http."),
    min_runs: Optional[int] = typer.Option(None, "--min-runs", help="Timed requests per cell, at least."),
    min_seconds: Optional[float] = typer.Option(None, "--min-seconds", help="Timed seconds per cell, at least."),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="Cap per cell (s) for very slow cells."),
    no_accuracy: bool = typer.Option(False, "--no-accuracy", help="Skip comparing outputs with the PyTorch model."),
    profile: bool = typer.Option(False, "--profile", help="Also profile one cell (most cores, longest sequence, batch 1): ONNX Runtime's profiler, or OpenVINO's per-layer counters for an OpenVINO bundle."),
    as_json: bool = typer.Option(False, "--json", help="Print the report JSON on stdout."),
) -> None:
    """Measure BUNDLE end to end over a grid of cores × sequence lengths × batch sizes, beside the baselines.

    Writes report.json, report.csv and PNG plots to --out, prints a table on stderr and the report path on stdout."""
    if http is None and (not no_accuracy or any(b != "none" for b in baseline)):  # PyTorch reference / baselines
        _need_build_stack("`multiverse benchmark`", as_json)
    from .benchmark import options, report

    try:
        plan = options.plan(cores=cores, seq_lens=seq_lens, batch_sizes=batch_sizes, quick=quick, baselines=baseline,
                            min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds, accuracy=not no_accuracy)
        rep = options.execute(bundle, plan, checkpoint=checkpoint, http=http, api_key=api_key, profile=profile,
                              progress=report.RichBenchProgress(err))
        paths = report.write(rep, out)
    except MultiverseError as exc:
        _fail(exc, as_json)
    err.print(report.table(rep))
    for note in rep["notes"]:
        err.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    print(json.dumps(rep, indent=1) if as_json else paths["json"])


@app.command()
def image(
    bundle: Path = typer.Argument(..., help="Bundle folder (from `multiverse optimize`)."),
    tag: Optional[str] = typer.Option(None, "--tag", "-t", help="Image name NAME[:TAG]."),
    builder: Optional[str] = typer.Option(None, "--builder", help="podman | docker | buildah (default: the first that works)."),
    base_image: str = typer.Option("python:3.11-slim", "--base-image", help="Base with python3 and venv (a mirror of python:3.11-slim, or a Debian python3 image)."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the image as an archive FILE.tar (OCI; docker: docker-archive)."),
    dockerfile_only: bool = typer.Option(False, "--dockerfile-only", help="Only write the build context (Dockerfile, bundle/, wheels/) and print its path."),
    context: Optional[Path] = typer.Option(None, "--context", help="Folder for the build context (default: temporary; with --dockerfile-only ./<bundle>-image)."),
    wheel: Optional[Path] = typer.Option(None, "--wheel", help="Multiverse wheel to install (default: built from this checkout, cached)."),
    builder_arg: list[str] = typer.Option([], "--builder-arg", help="Extra flag for `<builder> build` (repeatable; also $MULTIVERSE_BUILDER_ARGS), e.g. --builder-arg=--network=host."),
) -> None:
    """Build a container image that serves BUNDLE on port 8080. Prints the tag (or the context path)."""
    from .image import build_image

    try:
        result = build_image(bundle, tag, builder=builder, base_image=base_image, save=save,
                             dockerfile_only=dockerfile_only, context=context, wheel=wheel,
                             extra_builder_args=builder_arg, log=lambda line: err.print(line, highlight=False, markup=False, soft_wrap=True))
    except MultiverseError as exc:
        _fail(exc)
    if result.saved is not None:
        err.print(f"saved {result.tag} to {result.saved}", highlight=False)
    print(result.context if dockerfile_only else result.tag)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        err.print("interrupted")
        sys.exit(130)
    except ModuleNotFoundError as exc:  # a build-stack import reached from the lean runtime install
        if (exc.name or "").split(".")[0] not in OPTIMIZE_MODULES:
            raise
        err.print(f"[red]error:[/red] this command needs {exc.name}, which is not installed: {escape(HINT)}",
                  highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
