"""The one timing module: the timing loop and latency statistics used by the tuner, the benchmark
grid and the scripts in ``benchmarks/``. The clock is injectable (tests).

Units: durations in seconds inside the loop (whatever ``clock`` returns), milliseconds in
:class:`LatencyStats`, throughput in requests/s and samples/s. Percentiles are numpy's
(``numpy.percentile``, linear interpolation); the standard deviation is ``statistics.stdev``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

Clock = Callable[[], float]
"""A monotonic clock in seconds (default ``time.perf_counter``)."""


@dataclass(frozen=True)
class Budget:
    """How long one cell runs.

    Attributes:
        warmup_runs: untimed calls before measuring (first-call allocations, caches, thread spin-up); warm-up
            stops early, after at least one call, once it has taken ``max_seconds / 3``.
        min_runs: timed calls at least ...
        min_seconds: ... and at least this much timed wall clock (s); both must be met.
        max_seconds: safety cap (s): stop once this much time was spent even if ``min_runs`` is not
            met, provided ``floor_runs`` calls were timed (a 10-second request at 1 core must not turn
            the full grid into days). Cells ended by the cap are flagged ``capped``.
        floor_runs: the fewest timed calls a cell ever reports.
    """

    warmup_runs: int = 3
    min_runs: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 15.0
    floor_runs: int = 3

    def to_dict(self) -> dict:
        """The budget as a JSON-ready dict (seconds, counts)."""
        return asdict(self)


#: Default for ``multiverse benchmark`` (keeps the full 192-cell grid to minutes per system where fast).
DEFAULT_BUDGET = Budget()
#: ``--quick``.
QUICK_BUDGET = Budget(warmup_runs=2, min_runs=10, min_seconds=0.25, max_seconds=3.0, floor_runs=2)


@dataclass(frozen=True)
class Measurement:
    """Raw result of :func:`measure`: per-call durations (s) and whether the time cap ended the loop."""

    durations: list[float]
    wall_seconds: float
    capped: bool


def measure(fn: Callable[[], object], budget: Budget = DEFAULT_BUDGET, clock: Clock = time.perf_counter) -> Measurement:
    """Call ``fn()`` up to ``budget.warmup_runs`` times untimed, then time calls until ``min_runs`` and
    ``min_seconds`` are both met (or ``max_seconds`` is reached with at least ``floor_runs`` calls).

    Each duration is ``clock()`` after minus before one call, in the clock's unit (seconds).
    Exceptions from ``fn`` propagate.
    """
    warm_start = clock()
    for i in range(budget.warmup_runs):
        fn()
        if clock() - warm_start >= budget.max_seconds / 3:
            break
    durations: list[float] = []
    start = clock()
    capped = False
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        durations.append(t1 - t0)
        elapsed = t1 - start
        if len(durations) >= budget.min_runs and elapsed >= budget.min_seconds:
            break
        if elapsed >= budget.max_seconds and len(durations) >= budget.floor_runs:
            capped = True
            break
    return Measurement(durations, clock() - start, capped)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values`` (``numpy.percentile``, linear interpolation between
    closest ranks). Raises ValueError on an empty sequence or q outside [0, 100]."""
    if len(values) == 0:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def median_ms(fn: Callable[[], object], budget: Budget, clock: Clock = time.perf_counter) -> float:
    """Median duration of ``fn()`` in **milliseconds** under ``budget`` (see :func:`measure`)."""
    return statistics.median(measure(fn, budget, clock).durations) * 1e3


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one request (one call with ``batch_size`` texts) and throughput of a single sequential client.

    Attributes:
        n: timed requests.
        min_ms, max_ms, mean_ms, std_ms, p50_ms, p90_ms, p95_ms, p99_ms: milliseconds.
        total_s: sum of request durations (s).
        req_per_s: ``n / total_s``; samples_per_s: ``req_per_s * batch_size``.
    """

    n: int
    batch_size: int
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    total_s: float
    req_per_s: float
    samples_per_s: float

    def to_dict(self) -> dict:
        """JSON-ready dict, floats rounded to 4 decimals (0.1 µs)."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(durations_s: Sequence[float], batch_size: int = 1) -> LatencyStats:
    """Statistics of per-request durations given in **seconds**, reported in ms and req/s.

    Raises ValueError when ``durations_s`` is empty or ``batch_size`` < 1.
    """
    if not durations_s:
        raise ValueError("no durations to summarize")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ms = np.asarray(durations_s, dtype=np.float64) * 1e3
    n = len(ms)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, [50, 90, 95, 99]))
    total_s = float(sum(durations_s))
    rps = n / total_s if total_s > 0 else math.inf
    return LatencyStats(n=n, batch_size=batch_size, min_ms=float(ms.min()), max_ms=float(ms.max()),
                        mean_ms=float(ms.mean()), std_ms=statistics.stdev(ms.tolist()) if n > 1 else 0.0,
                        p50_ms=p50, p90_ms=p90, p95_ms=p95, p99_ms=p99, total_s=total_s, req_per_s=rps,
                        samples_per_s=rps * batch_size)


@dataclass(frozen=True)
class Rounds:
    """Raw result of :func:`interleaved`: ``cpu_ms[i][r]`` and ``wall_ms[i][r]`` are candidate ``i``'s median
    per-call process CPU time and wall time (ms) in round ``r``."""

    cpu_ms: list[list[float]]
    wall_ms: list[list[float]]


def interleaved(fns: Sequence[Callable[[], object]], rounds: int, runs_per_round: int, *, warmup_runs: int = 3,
                round_seconds: float | None = None, cpu_clock: Clock = time.process_time,
                wall_clock: Clock = time.perf_counter) -> Rounds:
    """Time several callables in interleaved rounds (A B C, B C A, C A B, …) in this process.

    Each callable first gets ``warmup_runs`` untimed calls (fewer, but at least one, once they took
    ``round_seconds``). In each round every callable is called ``runs_per_round`` times back to back (with
    ``round_seconds`` (s): as many as fit in it by the last warm-up call's wall time, at least one); its round
    value is the median of those calls. The order
    rotates by one each round so that no callable always runs after the same one. Two clocks are
    read around every call: ``cpu_clock`` (default ``time.process_time``: CPU seconds of all threads of
    this process) and ``wall_clock`` (``time.perf_counter``).

    Why CPU time: on a shared host a process that is preempted keeps its wall clock running but not
    its CPU clock, so CPU time measures the work a candidate does and not the queue it waited in.
    It is only meaningful when ONNX Runtime's idle worker threads sleep instead of spinning
    (``session.intra_op.allow_spinning=0``; spinning threads burn CPU time while waiting, more so
    the longer they wait). Interleaving exposes all candidates to the same drift of the host.

    Raises ValueError when ``rounds`` or ``runs_per_round`` < 1; exceptions from the callables propagate.
    """
    if rounds < 1 or runs_per_round < 1:
        raise ValueError(f"rounds and runs_per_round must be >= 1, got {rounds} and {runs_per_round}")
    runs = []
    for fn in fns:
        start = wall_clock()
        last = 0.0
        for _ in range(max(1, warmup_runs)):
            t0 = wall_clock()
            fn()
            last = wall_clock() - t0
            if round_seconds is not None and wall_clock() - start >= round_seconds:
                break
        fit = runs_per_round if round_seconds is None or last <= 0 else int(round_seconds / last)
        runs.append(max(1, min(runs_per_round, fit)))
    n = len(fns)
    cpu: list[list[float]] = [[] for _ in range(n)]
    wall: list[list[float]] = [[] for _ in range(n)]
    for r in range(rounds):
        for i in [(r + k) % n for k in range(n)]:
            c_runs, w_runs = [], []
            for _ in range(runs[i]):
                c0, w0 = cpu_clock(), wall_clock()
                fns[i]()
                w1, c1 = wall_clock(), cpu_clock()
                c_runs.append(c1 - c0)
                w_runs.append(w1 - w0)
            cpu[i].append(statistics.median(c_runs) * 1e3)
            wall[i].append(statistics.median(w_runs) * 1e3)
    return Rounds(cpu, wall)


def relative_costs(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Robust per-candidate cost from interleaved rounds (``rounds[i][r]``, any unit, > 0): the median over
    rounds of the candidate's value divided by that round's geometric mean over all candidates, times the
    median of those geometric means. The result is in the input's unit.

    Dividing within a round cancels what a round shares (the host slowing down or speeding up between
    rounds); the median over rounds drops a round in which one candidate alone was disturbed. With one
    candidate, or one round, this is the plain median / value. Raises ValueError when the candidates
    have different numbers of rounds, a value is not positive, or there are no rounds.
    """
    if not rounds:
        return []
    counts = {len(r) for r in rounds}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every candidate needs the same, non-zero number of rounds; got {sorted(counts)}")
    values = np.asarray(rounds, dtype=np.float64)  # [candidate, round]
    if not (values > 0).all():
        raise ValueError("interleaved timings must be positive")
    reference = np.exp(np.log(values).mean(axis=0))  # geometric mean of each round
    ratios = values / reference
    return [float(v) for v in np.median(ratios, axis=1) * float(np.median(reference))]
