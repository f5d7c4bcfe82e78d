"""Pinned benchmark processes on ``concurrent.futures``: one spawned worker per system and core count.

A :class:`PinnedProcess` is a ``ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=pin)``: its one
process runs :func:`pin` first, which calls ``os.sched_setaffinity`` on the cell's logical CPUs and sets
``OMP/MKL/OPENBLAS/NUMEXPR_NUM_THREADS`` to the thread count. onnxruntime and torch are imported afterwards, by the
tasks below, so their thread pools start on the pinned cores (Linux threads inherit the affinity of the thread
that creates them). "spawn" starts a fresh interpreter: nothing numerical is inherited from the parent.

With one process per pool, a system built by :func:`build_system` stays in that process, and later
:func:`time_slice` calls reuse it. This module imports only the standard library at the top (the spawned child
imports it before the initializer runs).

Errors: a task that raises in the child arrives as :class:`TaskFailed` (``"<ExceptionType>: <message>"``; the
process stays usable); a process that dies or does not answer in time arrives as :class:`WorkerLost` (the process
is gone, every later call raises the same error).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Self, Sequence

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class TaskFailed(Exception):
    """A task raised in the worker process; ``str(exc)`` is ``"<ExceptionType>: <message>"``."""


class WorkerLost(Exception):
    """The worker process died (segfault, OOM kill) or did not answer within the timeout and was terminated."""


def pin(cpus: Sequence[int], threads: int) -> None:
    """Pin this process to the logical CPUs ``cpus`` and cap OpenMP/MKL/OpenBLAS pools at ``threads``.

    The initializer of every :class:`PinnedProcess`; call it before importing torch or onnxruntime.
    ``os.sched_setaffinity`` is Linux-only: elsewhere only the thread variables are set."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))
    for var in THREAD_ENV:
        os.environ[var] = str(threads)


class PinnedProcess:
    """One spawned worker process pinned to ``cpus`` with ``threads`` threads (a one-process pool).

    Use as a context manager, or call :meth:`close`. ``name`` appears in error messages ("the optimum process
    died ..."). ``error`` is set once the process is lost.
    """

    def __init__(self, name: str, cpus: Sequence[int], threads: int):
        self.name = name
        self.error: str | None = None
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=pin, initargs=(tuple(cpus), threads))
        self._pid: Future | None = None

    def submit(self, fn: Callable, *args, **kwargs) -> Future:
        """Queue ``fn(*args, **kwargs)`` in the process (pickled; ``fn`` must be importable). Raises WorkerLost."""
        if self.error:
            raise WorkerLost(self.error)
        try:
            if self._pid is None:  # known before any task can hang, so a timeout can terminate the process
                self._pid = self._pool.submit(os.getpid)
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool as exc:
            self.error = f"the {self.name} process died ({exc})"
            raise WorkerLost(self.error) from None

    def result(self, future: Future, timeout_s: float | None = None) -> Any:
        """The value of a submitted task, waiting at most ``timeout_s`` seconds (None: no limit).

        Raises TaskFailed when the task raised, WorkerLost when the process died or the timeout passed
        (the process is then terminated with SIGTERM)."""
        if self.error:
            raise WorkerLost(self.error)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            self.error = f"the {self.name} process did not answer within {timeout_s:.0f} s"
            self._terminate()
        except BrokenProcessPool as exc:
            self.error = f"the {self.name} process died ({exc})"
        except TaskFailed:
            raise
        except Exception as exc:  # e.g. arguments or results that cannot be pickled
            raise TaskFailed(f"{type(exc).__name__}: {exc}") from exc
        raise WorkerLost(self.error)

    def call(self, fn: Callable, *args, timeout_s: float | None = None, **kwargs) -> Any:
        """:meth:`submit` then :meth:`result`."""
        return self.result(self.submit(fn, *args, **kwargs), timeout_s)

    def _terminate(self) -> None:
        with contextlib.suppress(Exception):  # never started, or already gone; else it ran os.getpid before the task
            os.kill(self._pid.result(timeout=10), signal.SIGTERM)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Let the process exit (after the task it runs, if any) and wait for it."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- tasks: run inside the pinned process -------------------------------------------------------------

def _reported(fn: Callable) -> Callable:
    """Re-raise any exception of ``fn`` as a picklable TaskFailed carrying ``"<ExceptionType>: <message>"``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the parent reports it; one failing cell must not lose the others
            raise TaskFailed(f"{type(exc).__name__}: {exc}") from None

    return wrapper


_system: Any = None  # the system built by build_system, in the worker process


@_reported
def build_system(name: str, *, threads: int, bundle: str, checkpoint: str | None, task: str,
                 optimum_dir: str | None) -> list[int] | None:
    """Build system ``name`` (``baselines.make_system``) in this process and keep it for :func:`time_slice`.

    Returns the process's CPU affinity (sorted logical CPU ids; None where the OS has no affinity call)."""
    global _system
    from .baselines import make_system

    _system = make_system(name, threads=threads, bundle=bundle, checkpoint=checkpoint, task=task,
                          optimum_dir=optimum_dir)
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


@_reported
def time_slice(inputs: list, budget) -> dict:
    """Time the built system on ``inputs`` (one request = one call with all of them) under ``budget``
    (``timing.Budget``, with ``timing.measure``).

    Returns ``{"durations": [s, ...], "capped": bool, "loadavg_1m": float | None, "breakdown": {step: ms} | None}``:
    per-request seconds, whether the time cap ended the loop, the host's 1-minute load average when the
    slice started, and the system's mean ms per pipeline step (Multiverse only)."""
    from ..timing import measure

    if _system is None:
        raise RuntimeError("no system was built in this process (build_system first)")
    load = loadavg()
    m = measure(lambda: _system(inputs), budget)
    return {"durations": m.durations, "capped": m.capped, "loadavg_1m": load,
            "breakdown": _system.breakdown(len(m.durations))}


@_reported
def compare_systems(names: Sequence[str], *, threads: int, bundle: str, checkpoint: str | None, task: str,
                    optimum_dir: str | None, texts: list) -> dict:
    """Build every system in ``names`` here and compare their outputs on ``texts`` with the PyTorch model
    (``baselines.compare_accuracy``): ``{system: metrics}``."""
    from .baselines import compare_accuracy, make_system

    systems = {name: make_system(name, threads=threads, bundle=bundle, checkpoint=checkpoint, task=task,
                                 optimum_dir=optimum_dir) for name in names}
    return compare_accuracy(systems, task, texts)


@_reported
def profile_multiverse(bundle: str, threads: int, inputs: list, runs: int) -> dict:
    """``profile.profile_predictor`` of the bundle on ``inputs`` with ``threads`` threads, ``runs`` runs."""
    from .profile import profile_predictor

    return profile_predictor(bundle, threads, inputs, runs=runs)


def loadavg() -> float | None:
    """The host's 1-minute load average (other processes compete for the pinned cores when it exceeds them)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # pragma: no cover
        return None
