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
