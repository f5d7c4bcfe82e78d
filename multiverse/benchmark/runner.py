"""Runs the grid: one spawned worker process per (core count, system), pinned before any numerical import.

Each worker is a :class:`workers.PinnedProcess` (``concurrent.futures.ProcessPoolExecutor`` with one process, a
"spawn" context and :func:`workers.pin` as initializer): it calls ``os.sched_setaffinity`` on ``n`` logical CPUs of
``n`` distinct physical cores and sets ``OMP/MKL/OPENBLAS_NUM_THREADS=n`` *before* onnxruntime or torch is
imported, then builds its system with ``n`` intra-op threads (ORT ``intra_op_num_threads``,
``torch.set_num_threads``). Each system gets its own process (torch and ONNX Runtime in one process fight over
cores); the workers of one core count share the same CPUs but take turns: every cell is timed in ``rounds``
slices per system in rotating order, so on a shared host all systems see the same background load, and the
slices are pooled. The timing loop and statistics are ``multiverse.timing``'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .grid import expand, pick_cpus, require_runnable
from .schema import CellResult
from .workers import (PinnedProcess, TaskFailed, WorkerLost, build_system, compare_systems, profile_multiverse,
                      time_slice)
from ..timing import DEFAULT_BUDGET, Budget, summarize

#: Wall-clock limit (s) for building one system in its worker (model load, ORT session, torch import).
BUILD_TIMEOUT_S = 900.0


class BenchProgress:
    """Progress hooks the runner calls; silent by default (the CLI renders a rich progress bar)."""

    def start(self, total: int) -> None:
        """``total`` cells (times systems, plus the accuracy step) are about to run."""

    def advance(self, description: str, n: int = 1) -> None:
        """``n`` more done; ``description`` says which (and its p50)."""

    def log(self, message: str) -> None:
        """A line of information (rich markup allowed)."""

    def stop(self) -> None:
        """The run is over (also called on the way out of an error)."""


def slice_budget(budget: Budget, rounds: int, first: bool) -> Budget:
    """One round's share of a cell's budget: counts and seconds divided by ``rounds``; full warm-up in the first
    round, one warm-up call in later rounds (the caches were just used by another system)."""
    return Budget(warmup_runs=budget.warmup_runs if first else min(1, budget.warmup_runs),
                  min_runs=math.ceil(budget.min_runs / rounds), min_seconds=budget.min_seconds / rounds,
                  max_seconds=budget.max_seconds / rounds, floor_runs=math.ceil(budget.floor_runs / rounds))


def merge_slices(system: str, cores: int, seq_len: int, batch: int, slices: list[dict], errors: list[str],
                 cpus: list[int] | None = None) -> CellResult:
    """One result row from a cell's slices (``workers.time_slice`` dicts): durations pooled into
    ``timing.summarize`` stats, breakdowns averaged, the highest load kept. Any error (or no durations at all)
    makes the row ``status: error`` with the first error as its reason. ``cpus``: the logical CPUs pinned."""
    head = {"system": system, "cores": cores, "seq_len": seq_len, "batch_size": batch, "cpus": cpus}
    durations = [d for sl in slices for d in sl["durations"]]
    if errors or not durations:
        return CellResult(**head, status="error", reason=errors[0] if errors else "no result")
    loads = [sl["loadavg_1m"] for sl in slices if sl.get("loadavg_1m") is not None]
    bds = [sl["breakdown"] for sl in slices if sl.get("breakdown")]
    return CellResult(**head, status="ok", capped=any(sl["capped"] for sl in slices), rounds=len(slices),
                      stats=summarize(durations, batch).to_dict(), loadavg_1m=max(loads) if loads else None,
                      breakdown={k: round(sum(b[k] for b in bds) / len(bds), 4) for k in bds[0]} if bds else None)


def _shape(folder: Path) -> tuple:
    """``(model_type, vocab_size, layers, heads, hidden)`` from ``folder/config.json`` (None when unreadable): what
    must match between a bundle and the checkpoint its baselines run."""
    import json

    from ..hub import model_dims

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (config.get("model_type"), config.get("vocab_size"), *model_dims(config))


@dataclass
class GridSpec:
    """What :func:`run_grid` measures.

    Attributes:
        cores, seq_lens, batch_sizes: the grid axes (see ``grid.expand``).
        systems: ``multiverse`` first, then baselines from ``baselines.BASELINES``.
        budget: per-cell timing budget (``timing.Budget``).
        accuracy: also compare the systems' outputs with the PyTorch model on real texts.
        rounds: each cell's budget is split into this many slices per system, run in rotating order
            (multiverse, transformers, optimum; transformers, optimum, multiverse; ...), so every system
            sees the same background load on a shared host. The slices' durations are pooled.
    """

    cores: Sequence[int]
    seq_lens: Sequence[int]
    batch_sizes: Sequence[int]
    systems: Sequence[str] = ("multiverse", "transformers")
    budget: Budget = DEFAULT_BUDGET
    accuracy: bool = True
    rounds: int = 3


def run_grid(bundle_path: str | Path, spec: GridSpec, *, checkpoint: str | Path | None = None,
             work_dir: str | Path | None = None, progress: BenchProgress | None = None,
             available_cores: int | None = None) -> dict:
    """Measure every cell of ``spec`` for every system and return the report document: ``report.build_report``'s
    :class:`schema.Report` as its JSON dict (``Report.to_dict()``; ``Report.of(doc)`` reads it back typed).

    Args:
        bundle_path: a bundle folder written by ``multiverse optimize``.
        checkpoint: the original checkpoint for the baselines (default: the manifest's ``source.local_path``).
        work_dir: where the optimum baseline is built and cached (default ``~/.cache/multiverse/benchmark``).
        available_cores: override ``runtime.physical_cores()`` (tests).

    Raises BundleError/IsaMismatchError for a bundle this host cannot load, UsageError for a bad grid (one whose
    every cell this host or model cannot run included, before anything is built), and
    BenchmarkError when a requested baseline cannot be built. A failing cell is reported with
    ``status: error``; cells the host cannot run with ``status: skipped``.
    """
    from ..bundle import load
    from ..runtime import physical_cores
    from . import report as report_mod
    from .baselines import BenchmarkError, accuracy_texts, build_optimum
    from .texts import TextCutter, corpus

    progress = progress or BenchProgress()
    b = load(bundle_path)
    b.session_config()  # fail early (IsaMismatchError) if this host cannot run the bundle
    task = b.task
    systems = list(dict.fromkeys(spec.systems))
    if "multiverse" not in systems:
        systems.insert(0, "multiverse")
    source = b.manifest.get("source") or {}
    given, checkpoint = checkpoint is not None, checkpoint if checkpoint is not None else source.get("local_path")
    baselines = [s for s in systems if s != "multiverse"]
    notes: list[str] = []
    if baselines and (checkpoint is None or not Path(checkpoint).is_dir()):
        where = "--checkpoint" if given else "the manifest's source.local_path"
        raise BenchmarkError(f"The baselines need the original checkpoint, but {checkpoint} ({where}) is not a "
                             "folder. Pass --checkpoint PATH (the folder the bundle was built from), or --baseline none.")
    if baselines and given and _shape(Path(checkpoint)) != _shape(b.path):
        raise BenchmarkError(f"{checkpoint} is not the model this bundle was built from: its config.json gives "
                             f"(model_type, vocab, layers, heads, hidden) {_shape(Path(checkpoint))}, the bundle's "
                             f"{_shape(b.path)} (built from {source.get('local_path') or source.get('repo_id')}). "
                             "Pass that folder with --checkpoint, or --baseline none.")
    available = available_cores or physical_cores()
    cutter = TextCutter(b.path, b.manifest.get("max_sequence_length"))
    cells = expand(spec.cores, spec.seq_lens, spec.batch_sizes, available_cores=available, max_length=cutter.max_length)
    require_runnable(cells, available_cores=available, max_length=cutter.max_length)
    runnable = [c for c in cells if not c.skipped]

    optimum_info = None
    if "optimum" in systems:
        work = Path(work_dir or Path.home() / ".cache" / "multiverse" / "benchmark")
        progress.log("building the optimum-onnx baseline (export, O2, avx512_vnni dynamic int8)…")
        optimum_info = build_optimum(checkpoint, task, work / f"optimum-{Path(checkpoint).name}")
        if optimum_info.get("workaround"):
            notes.append(optimum_info["workaround"])

    pairs = corpus()
    max_batch = max(spec.batch_sizes)
    inputs = {s: cutter.inputs(task, s, max_batch, pairs) for s in sorted({c.seq_len for c in runnable})}
    topology_cores = sorted({c.cores for c in runnable})
    n_jobs_cells = len(runnable) * len(systems)
    progress.start(n_jobs_cells + (1 if spec.accuracy and baselines else 0))

    common = dict(bundle=str(b.path), task=task, checkpoint=str(checkpoint) if checkpoint else None,
                  optimum_dir=str(Path(optimum_info["path"]).parent) if optimum_info else None)
    accuracy: dict = {}
    if spec.accuracy and baselines:
        n = max(topology_cores) if topology_cores else 1
        # Real texts, cut to the model's limit: Multiverse truncates, the vanilla pipeline would crash.
        texts = [cutter.cut(t, cutter.max_length) if isinstance(t, str) else t for t in accuracy_texts(task)]
        with PinnedProcess("accuracy", pick_cpus(n), n) as worker:
            try:
                accuracy = worker.call(compare_systems, tuple(systems), threads=n, texts=texts, **common)
            except (TaskFailed, WorkerLost) as exc:
                notes.append(f"accuracy comparison failed: {exc}")
        progress.advance("accuracy vs PyTorch")

    rows: list[CellResult] = []
    rounds = max(1, spec.rounds if len(systems) > 1 else 1)
    slice_timeout = max(600.0, 20 * spec.budget.max_seconds)
    for n in topology_cores:
        cpus = pick_cpus(n)
        todo = [(c.seq_len, c.batch_size) for c in runnable if c.cores == n]
        workers = {s: PinnedProcess(s, cpus, n) for s in systems}
        try:
            failed: dict[str, str] = {}  # system -> why it could not be built (every cell of it fails with that)
            builds = {s: w.submit(build_system, s, threads=n, **common) for s, w in workers.items()}
            for s, w in workers.items():
                try:
                    w.result(builds[s], BUILD_TIMEOUT_S)
                except (TaskFailed, WorkerLost) as exc:
                    failed[s] = str(exc)
                    progress.log(f"[red]{s} at {n} cores failed to start:[/red] {exc}")
            for seq_len, batch in todo:
                slices: dict[str, list[dict]] = {s: [] for s in systems}
                errors: dict[str, list[str]] = {s: [failed[s]] if s in failed else [] for s in systems}
                for r in range(rounds):
                    order = systems[r % len(systems):] + systems[: r % len(systems)]
                    for s in order:
                        if errors[s]:
                            continue
                        try:  # a lost worker fails this and every later cell of its system; TaskFailed only this one
                            slices[s].append(workers[s].call(time_slice, inputs[seq_len][:batch],
                                                             slice_budget(spec.budget, rounds, r == 0),
                                                             timeout_s=slice_timeout))
                        except (TaskFailed, WorkerLost) as exc:
                            errors[s].append(str(exc))
                for s in systems:
                    row = merge_slices(s, n, seq_len, batch, slices[s], errors[s], cpus=cpus)
                    rows.append(row)
                    progress.advance(f"{s} {n}c seq {seq_len} batch {batch}"
                                     + (f": p50 {row.stats.p50_ms:.2f} ms" if row.stats else f": {row.status}"))
        finally:
            for w in workers.values():
                w.close()
    for c in cells:
        if c.skipped:
            for system in systems:
                rows.append(CellResult(system=system, cores=c.cores, seq_len=c.seq_len, batch_size=c.batch_size,
                                       status="skipped", reason=c.skip_reason))
    progress.stop()
    return report_mod.build_report(
        bundle=b, systems=systems, cells=cells, rows=rows, budget=spec.budget, accuracy=accuracy,
        checkpoint=str(checkpoint) if checkpoint else None, optimum=optimum_info, notes=notes,
        available_cores=available).to_dict()


def profile_cell(bundle_path: str | Path, cores: int, seq_len: int, batch_size: int = 1, runs: int = 50) -> dict:
    """ORT-profile one Multiverse cell in a pinned child process: where the end-to-end time goes.

    Returns ``profile.profile_predictor``'s dict (ms per run by step and by ONNX op type) with the cell added.
    Raises BenchmarkError if the child fails; UsageError if ``cores`` exceeds the host's physical cores.
    """
    from ..bundle import load
    from .baselines import BenchmarkError
    from .texts import TextCutter, corpus

    b = load(bundle_path)
    cutter = TextCutter(b.path, b.manifest.get("max_sequence_length"))
    inputs = cutter.inputs(b.task, seq_len, batch_size, corpus())
    with PinnedProcess("profiling", pick_cpus(cores), cores) as worker:
        try:
            result = worker.call(profile_multiverse, str(b.path), cores, inputs[:batch_size], runs)
        except (TaskFailed, WorkerLost) as exc:
            raise BenchmarkError(f"Profiling failed: {exc}") from None
    return {"cores": cores, "seq_len": seq_len, "batch_size": batch_size, **result}
