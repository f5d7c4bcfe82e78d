"""Runs the grid: one spawned worker process per (core count, system), pinned before any numerical import.

Each child calls ``os.sched_setaffinity`` on ``n`` logical CPUs of ``n`` distinct physical cores and
sets ``OMP/MKL/OPENBLAS_NUM_THREADS=n`` *before* importing onnxruntime or torch, then builds its
system with ``n`` intra-op threads (ORT ``intra_op_num_threads``, ``torch.set_num_threads``).
Each system gets its own process (torch and ONNX Runtime in one process fight over cores); the workers of
one core count share the same CPUs but take turns: every cell is timed in ``rounds`` slices per system in
rotating order, so on a shared host all systems see the same background load, and the slices are pooled.
This module imports only the standard library and the pure-Python grid/stats modules at the top.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue as queue_mod
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .grid import expand, pick_cpus
from ..timing import DEFAULT_BUDGET, Budget, measure, summarize

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


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


@dataclass
class Job:
    """Work for one pinned child process.

    Attributes:
        kind: ``cells`` (a :class:`Worker` timing ``system``), ``accuracy`` (compare every system with
            PyTorch) or ``profile`` (ORT-profile one Multiverse cell).
        cores: physical cores = threads; cpus: the logical CPUs to pin to.
        cells: ``(seq_len, batch_size)`` pairs; inputs: seq_len → real inputs of exactly that length.
    """

    kind: str
    system: str
    cores: int
    cpus: list[int]
    bundle: str
    task: str
    checkpoint: str | None = None
    optimum_dir: str | None = None
    cells: list[tuple[int, int]] = field(default_factory=list)
    inputs: dict[int, list] = field(default_factory=dict)
    budget: Budget = DEFAULT_BUDGET
    systems: tuple[str, ...] = ()
    texts: list = field(default_factory=list)
    profile_runs: int = 50


def pin(cpus: Sequence[int], threads: int) -> None:
    """Pin this process to ``cpus`` and cap OpenMP/MKL pools at ``threads``. Call before importing torch/onnxruntime."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    for var in _THREAD_ENV:
        os.environ[var] = str(threads)


def _child(job: Job, q) -> None:  # runs in the spawned process
    pin(job.cpus, job.cores)
    try:
        if job.kind == "accuracy":
            _child_accuracy(job, q)
        elif job.kind == "profile":
            from .profile import profile_predictor

            q.put(("result", profile_predictor(job.bundle, job.cores, job.inputs[job.cells[0][0]][: job.cells[0][1]],
                                               runs=job.profile_runs)))
    except BaseException as exc:  # noqa: BLE001 - report, never hang the parent
        q.put(("fatal", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6)))
    finally:
        q.put(("done", None))


def _child_worker(job: Job, commands, q) -> None:  # runs in the spawned process
    """Build ``job.system`` once, then time one slice per ``("slice", seq_len, batch, budget)`` command until ``stop``."""
    pin(job.cpus, job.cores)
    try:
        from .baselines import make_system

        system = make_system(job.system, threads=job.cores, bundle=job.bundle, checkpoint=job.checkpoint,
                             task=job.task, optimum_dir=job.optimum_dir)
        q.put(("ready", sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None))
    except BaseException as exc:  # noqa: BLE001
        q.put(("fatal", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=6)))
        return
    while True:
        cmd = commands.get()
        if cmd[0] != "slice":
            break
        _, seq_len, batch, budget = cmd
        inputs = job.inputs[seq_len][:batch]
        load = _loadavg()
        try:
            m = measure(lambda: system(inputs), budget)
            q.put(("slice", {"durations": m.durations, "capped": m.capped, "loadavg_1m": load,
                             "breakdown": system.breakdown(len(m.durations))}))
        except Exception as exc:  # noqa: BLE001 - one failing cell must not lose the others
            q.put(("slice-error", f"{type(exc).__name__}: {exc}"))


class Worker:
    """A pinned child process holding one built system; the parent asks it to time slices of cells.

    Several workers (one per system) share the same cores but only one runs at a time, so each system's
    slices are interleaved with the others' and see the same background load.
    """

    def __init__(self, job: Job):
        ctx = mp.get_context("spawn")
        self.system = job.system
        self.commands = ctx.Queue()
        self.results = ctx.Queue()
        self.proc = ctx.Process(target=_child_worker, args=(job, self.commands, self.results), daemon=True)
        self.proc.start()
        self.error: str | None = None

    def _get(self, timeout_s: float) -> tuple:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.results.get(timeout=0.5)
            except queue_mod.Empty:
                if not self.proc.is_alive():
                    try:
                        return self.results.get(timeout=1.0)
                    except queue_mod.Empty:
                        return ("fatal", f"the {self.system} process died (exit code {self.proc.exitcode})", "")
                if time.monotonic() > deadline:
                    self.proc.terminate()
                    return ("fatal", f"the {self.system} process did not answer within {timeout_s:.0f} s", "")

    def wait_ready(self, timeout_s: float = 900.0) -> bool:
        """Wait until the system is built; False (and ``error`` set) if building it failed."""
        msg = self._get(timeout_s)
        if msg[0] != "ready":
            self.error = msg[1]
        return self.error is None

    def slice(self, seq_len: int, batch: int, budget: Budget, timeout_s: float) -> dict | str:
        """Time one slice; the slice dict, or an error message (a dead worker sets ``error``)."""
        if self.error:
            return self.error
        self.commands.put(("slice", seq_len, batch, budget))
        msg = self._get(timeout_s)
        if msg[0] == "slice":
            return msg[1]
        if msg[0] == "fatal":
            self.error = msg[1]
        return msg[1]

    def stop(self) -> None:
        """Ask the worker to exit; terminate it if it does not."""
        try:
            self.commands.put(("stop",))
        except (OSError, ValueError):  # pragma: no cover
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)


def slice_budget(budget: Budget, rounds: int, first: bool) -> Budget:
    """One round's share of a cell's budget: counts and seconds divided by ``rounds``; full warm-up in the first
    round, one warm-up call in later rounds (the caches were just used by another system)."""
    return Budget(warmup_runs=budget.warmup_runs if first else min(1, budget.warmup_runs),
                  min_runs=math.ceil(budget.min_runs / rounds), min_seconds=budget.min_seconds / rounds,
                  max_seconds=budget.max_seconds / rounds, floor_runs=math.ceil(budget.floor_runs / rounds))


def merge_slices(system: str, cores: int, seq_len: int, batch: int, slices: list[dict], errors: list[str]) -> dict:
    """One result row from a cell's slices (durations pooled, breakdowns averaged, the highest load kept)."""
    row: dict[str, Any] = {"system": system, "cores": cores, "seq_len": seq_len, "batch_size": batch}
    durations = [d for sl in slices for d in sl["durations"]]
    if errors or not durations:
        row.update(status="error", reason=errors[0] if errors else "no result")
        return row
    row.update(status="ok", capped=any(sl["capped"] for sl in slices), rounds=len(slices),
               stats=summarize(durations, batch).to_dict())
    loads = [sl["loadavg_1m"] for sl in slices if sl.get("loadavg_1m") is not None]
    if loads:
        row["loadavg_1m"] = max(loads)
    bds = [sl["breakdown"] for sl in slices if sl.get("breakdown")]
    if bds:
        row["breakdown"] = {k: round(sum(b[k] for b in bds) / len(bds), 4) for k in bds[0]}
    return row


def _loadavg() -> float | None:
    """The host's 1-minute load average (other processes compete for the pinned cores when it exceeds them)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover
        return None


def _child_accuracy(job: Job, q) -> None:
    from .baselines import compare_accuracy, make_system

    systems = {}
    for name in job.systems:
        systems[name] = make_system(name, threads=job.cores, bundle=job.bundle, checkpoint=job.checkpoint,
                                    task=job.task, optimum_dir=job.optimum_dir)
    q.put(("result", compare_accuracy(systems, job.task, job.texts)))


def run_job(job: Job, on_message: Callable[[tuple], None] | None = None, timeout_s: float | None = None) -> list[tuple]:
    """Run ``job`` in a fresh spawned process; returns every message it sent (``("cell", row)``,
    ``("result", value)``, ``("fatal", message, traceback)``, ...), calling ``on_message`` as they arrive.

    A child that dies without saying ``done`` (segfault, OOM kill) yields a ``("fatal", ...)`` message
    with its exit code; ``timeout_s`` (wall clock, s) terminates it the same way.
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, q), daemon=True)
    proc.start()
    messages: list[tuple] = []
    start = time.monotonic()
    try:
        while True:
            try:
                msg = q.get(timeout=0.5)
            except queue_mod.Empty:
                if not proc.is_alive():
                    try:  # a last message may still be in flight
                        msg = q.get(timeout=1.0)
                    except queue_mod.Empty:
                        msg = ("fatal", f"the benchmark process died (exit code {proc.exitcode})", "")
                        messages.append(msg)
                        if on_message:
                            on_message(msg)
                        break
                elif timeout_s is not None and time.monotonic() - start > timeout_s:
                    proc.terminate()
                    msg = ("fatal", f"the benchmark process timed out after {timeout_s:.0f} s", "")
                    messages.append(msg)
                    if on_message:
                        on_message(msg)
                    break
                else:
                    continue
            if msg[0] == "done":
                break
            messages.append(msg)
            if on_message:
                on_message(msg)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        q.close()
    return messages


@dataclass
class GridSpec:
    """What :func:`run_grid` measures.

    Attributes:
        cores, seq_lens, batch_sizes: the grid axes (see ``grid.expand``).
        systems: ``multiverse`` first, then baselines from ``baselines.BASELINES``.
        budget: per-cell timing budget (``stats.Budget``).
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
    """Measure every cell of ``spec`` for every system and return the report dict (see ``report.build_report``).

    Args:
        bundle_path: a bundle folder written by ``multiverse optimize``.
        checkpoint: the original checkpoint for the baselines (default: the manifest's ``source.local_path``).
        work_dir: where the optimum baseline is built and cached (default ``~/.cache/multiverse/benchmark``).
        available_cores: override ``runtime.physical_cores()`` (tests).

    Raises BundleError/IsaMismatchError for a bundle this host cannot load, UsageError for a bad grid, and
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
    if checkpoint is None:
        checkpoint = (b.manifest.get("source") or {}).get("local_path")
    baselines = [s for s in systems if s != "multiverse"]
    notes: list[str] = []
    if baselines and (checkpoint is None or not Path(checkpoint).is_dir()):
        raise BenchmarkError(f"The baselines need the original checkpoint, but {checkpoint!r} is not a folder "
                             "(the manifest's source.local_path). Pass --checkpoint PATH, or --baseline none.")
    available = available_cores or physical_cores()
    cutter = TextCutter(b.path, b.manifest.get("max_sequence_length"))
    cells = expand(spec.cores, spec.seq_lens, spec.batch_sizes, available_cores=available, max_length=cutter.max_length)
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
        msgs = run_job(Job(kind="accuracy", system="all", cores=n, cpus=pick_cpus(n), systems=tuple(systems),
                           texts=texts, **common))
        for m in msgs:
            if m[0] == "result":
                accuracy = m[1]
            elif m[0] == "fatal":
                notes.append(f"accuracy comparison failed: {m[1]}")
        progress.advance("accuracy vs PyTorch")

    rows: list[dict] = []
    rounds = max(1, spec.rounds if len(systems) > 1 else 1)
    slice_timeout = max(600.0, 20 * spec.budget.max_seconds)
    for n in topology_cores:
        cpus = pick_cpus(n)
        todo = [(c.seq_len, c.batch_size) for c in runnable if c.cores == n]
        workers = {s: Worker(Job(kind="cells", system=s, cores=n, cpus=cpus, inputs=inputs, budget=spec.budget, **common))
                   for s in systems}
        try:
            for w in workers.values():
                if not w.wait_ready():
                    progress.log(f"[red]{w.system} at {n} cores failed to start:[/red] {w.error}")
            for seq_len, batch in todo:
                slices: dict[str, list] = {s: [] for s in systems}
                errors: dict[str, list] = {s: [] for s in systems}
                for r in range(rounds):
                    order = systems[r % len(systems):] + systems[: r % len(systems)]
                    for s in order:
                        if errors[s]:
                            continue
                        got = workers[s].slice(seq_len, batch, slice_budget(spec.budget, rounds, r == 0), slice_timeout)
                        (slices[s] if isinstance(got, dict) else errors[s]).append(got)
                for s in systems:
                    row = merge_slices(s, n, seq_len, batch, slices[s], errors[s])
                    row["cpus"] = cpus
                    rows.append(row)
                    st = row.get("stats") or {}
                    progress.advance(f"{s} {n}c seq {seq_len} batch {batch}"
                                     + (f": p50 {st['p50_ms']:.2f} ms" if st else f": {row['status']}"))
        finally:
            for w in workers.values():
                w.stop()
    for c in cells:
        if c.skipped:
            for system in systems:
                rows.append({"system": system, "cores": c.cores, "seq_len": c.seq_len, "batch_size": c.batch_size,
                             "status": "skipped", "reason": c.skip_reason})
    progress.stop()
    return report_mod.build_report(
        bundle=b, systems=systems, cells=cells, rows=rows, budget=spec.budget, accuracy=accuracy,
        checkpoint=str(checkpoint) if checkpoint else None, optimum=optimum_info, notes=notes,
        available_cores=available)


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
    inputs = {seq_len: cutter.inputs(b.task, seq_len, batch_size, corpus())}
    msgs = run_job(Job(kind="profile", system="multiverse", cores=cores, cpus=pick_cpus(cores), bundle=str(b.path),
                       task=b.task, cells=[(seq_len, batch_size)], inputs=inputs, profile_runs=runs))
    for m in msgs:
        if m[0] == "result":
            return {"cores": cores, "seq_len": seq_len, "batch_size": batch_size, **m[1]}
        if m[0] == "fatal":
            raise BenchmarkError(f"Profiling failed: {m[1]}")
    raise BenchmarkError("Profiling produced no result.")
