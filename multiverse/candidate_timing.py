"""How the tuner times a candidate: end to end (tokenize, run, post-process), batch 1, at a short and a long
sequence length, in interleaved rounds, by process CPU time (``multiverse.timing.interleaved``), so that host
drift and other processes' load cannot pick the winner (see ``tuning._Tuner.retime``)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .choice import contenders
from .inference import Predictor
from .timing import interleaved, relative_costs

LATENCY_SEQ_LEN = 128
# Candidates are compared at a short and a long length, length by length (``choice.cost_ms``): which runtime
# wins depends on the length. Measured on all-MiniLM-L6-v2 bundles as served, interleaved, 7 rounds, idle
# host: OpenVINO dynamic int8 p50 over ONNX Runtime s8 per-channel α=0.7 1.61x at 8 tokens, 1.53x at 16, 0.91x
# at 64, 0.92x at 128, 0.97x at 256. Timed at 128 only, the tuner shipped the OpenVINO one.
LATENCY_SEQ_LENS = (16, LATENCY_SEQ_LEN)
# Where served latency, not CPU time, compares candidates (``choice.speeds_by_len`` says why): the short length.
SERVED_SEQ_LENS = (LATENCY_SEQ_LENS[0],)
LATENCY_BATCH = 1
RETIME_ROUNDS = 5  # interleaved timing rounds of the passing candidates before each choice
MAX_OTHERS_CORES = 0.25  # served_ms is kept only when other processes used at most this many CPUs meanwhile
# served_ms runs with every thread of this process under the real-time round-robin policy (SCHED_RR, lowest priority)
# when the OS allows it (CAP_SYS_NICE, e.g. root): a woken thread of ours then takes a CPU from any normal process at
# once, so a 2-thread call runs as on a quiet host for the second or two of timing. Measured, all-MiniLM-L6-v2 at
# 16 tokens, two busy-loop processes on both CPUs, fastest call of ONNX Runtime α=0.7 / OpenVINO dynamic int8:
# normal policy 0.78 / 1.16 ms (our threads waited 1.4 s per s for a CPU), nice -20 0.72 / 0.95 (0.55 s per s),
# SCHED_RR 0.72 / 0.88 (other processes got 0.07 CPUs); quiet host, SCHED_RR 0.71 / 0.85. By default the kernel
# keeps 5 % of every second for normal processes (sched_rt_runtime_us 950000 of sched_rt_period_us 1000000).
# False: never change the policy.
SERVED_REALTIME = True
SERVED_ROUNDS = 3  # rounds of served_ms: its minimum needs clean calls, not many rounds (≥ 100 calls each at 16 tokens)
TRIAL_ROUNDS = 3  # timing rounds of one candidate right after its validation
RUNS_PER_ROUND = 10  # calls per candidate per round (fewer when they take over ROUND_SECONDS); the round's median
ROUND_SECONDS = 0.3  # wall-clock budget of one candidate's calls in one round (s): a loaded host slows calls 10×
# Re-timing and the dominance checks take CPU time per call on 1 thread: on 2, OpenVINO's oneTBB workers wait actively
# for a preempted peer, so its CPU time grows with other load, ONNX Runtime's (spinning off) not
# (benchmarks/results/runtime_noise.md).
TIMING_THREADS = 1


def latency_call(predictor: Predictor, text: str, *, seq_len: int = LATENCY_SEQ_LEN,
                 batch: int = LATENCY_BATCH) -> Callable[[], object]:
    """A no-argument call of ``predictor.predict`` (end to end: tokenize, run, post-process) on ``batch`` copies
    of ``text`` cut to ``seq_len`` tokens (ranking: a pair of its first third and the whole)."""
    cut = predictor.text_of_length(text, min(seq_len, predictor.max_length))
    item = (cut[: len(cut) // 3], cut) if predictor.handler.requires_pairs else cut
    items = [item] * batch
    return lambda: predictor.predict(items)


def timed_costs(predictors: Sequence[Predictor], text: str, rounds: int, *, warmup_runs: int = 3,
                seq_lens: Sequence[int] = LATENCY_SEQ_LENS) -> list[dict]:
    """Time ``predictors`` in ``rounds`` interleaved rounds, each at every length of ``seq_lens``
    (:func:`latency_call`; ``RUNS_PER_ROUND`` calls, ``ROUND_SECONDS`` per candidate, length and round).

    Returns per predictor ``{"cpu_ms", "cpu_ms_by_len", "p50_ms", "cpu_rounds_ms", "wall_rounds_ms"}``:
    ``cpu_ms_by_len`` maps each length (tokens) to :func:`multiverse.timing.relative_costs` of the CPU times at
    that length (process CPU time per call, ms; what :func:`multiverse.choice.cost_ms` compares, length by
    length); ``cpu_ms`` is their geometric mean (one figure for logs); the rounds are each round's geometric mean
    over lengths, ``p50_ms`` the median of the wall-clock rounds.
    """
    n, lens = len(predictors), list(seq_lens)
    r = interleaved([latency_call(p, text, seq_len=s) for s in lens for p in predictors], rounds, RUNS_PER_ROUND,
                    warmup_runs=warmup_runs, round_seconds=ROUND_SECONDS)
    per_len = np.log([relative_costs(r.cpu_ms[k * n:(k + 1) * n]) for k in range(len(lens))])  # [length, candidate]
    cpu = np.exp(np.log(np.asarray(r.cpu_ms, dtype=float)).reshape(len(lens), n, -1).mean(axis=0))  # [cand, round]
    wall = np.exp(np.log(np.asarray(r.wall_ms, dtype=float)).reshape(len(lens), n, -1).mean(axis=0))
    return [{"cpu_ms": float(np.exp(per_len[:, i].mean())), "p50_ms": float(np.median(wall[i])),
             "cpu_ms_by_len": {s: round(float(np.exp(per_len[k, i])), 4) for k, s in enumerate(lens)},
             "cpu_rounds_ms": tuple(round(float(x), 4) for x in cpu[i]),
             "wall_rounds_ms": tuple(round(float(x), 4) for x in wall[i])} for i in range(n)]


def to_retime(trials: Sequence, also: Sequence[int] = ()) -> list[int]:
    """Indices of the trials (``choice.Trial``) to re-time together, in order: the passing ones that could be the
    fastest (``choice.contenders``: not over ``choice.RETIME_SPAN`` × the cheapest passing one's ``cpu_ms``, fp32
    included), plus ``also`` whatever they passed."""
    return sorted(set(contenders(trials, [i for i, t in enumerate(trials) if t.passed])) | set(also))


def least_ratio(slow: dict, fast: dict) -> float:
    """``slow``'s cost over ``fast``'s at the length where it is least slower (``cpu_ms_by_len`` dicts over the same
    lengths): r > 1 means ``slow`` costs ≥ r× ``fast`` at every timed length."""
    return min(slow[n] / fast[n] for n in fast)


def busy_jiffies(cpus: Sequence[int], stat: str = "/proc/stat") -> int | None:
    """Busy time (user, nice, system, irq, softirq, steal; in clock ticks) of ``cpus`` since boot, from
    ``/proc/stat`` (``proc(5)``); None where that file does not exist (not Linux)."""
    try:
        lines = Path(stat).read_text().splitlines()
    except OSError:
        return None
    want, total = {f"cpu{c}" for c in cpus}, 0
    for line in lines:
        f = line.split()
        if f and f[0] in want:
            total += sum(int(f[k]) for k in (1, 2, 3, 6, 7, 8) if k < len(f))
    return total


def others_cores(fn: Callable[[], object], stat: str = "/proc/stat") -> tuple[object, float | None]:
    """``(fn(), c)``: ``c`` the CPUs other processes kept busy on this process's CPUs (``os.sched_getaffinity``)
    while ``fn`` ran, on average (busy ticks of those CPUs minus this process's CPU time, over the wall time);
    None when it cannot be known (no ``/proc/stat``)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    b0, own0, t0 = busy_jiffies(cpus, stat), time.process_time(), time.perf_counter()
    out = fn()
    b1, own1, t1 = busy_jiffies(cpus, stat), time.process_time(), time.perf_counter()
    if b0 is None or b1 is None or t1 <= t0:
        return out, None
    return out, max(0.0, ((b1 - b0) / hz - (own1 - own0)) / (t1 - t0))


@dataclass(frozen=True)
class ServedTiming:
    """What :func:`served_ms` measured: ``values``, one ``{length: ms}`` per predictor, or ``[]`` when the clock was
    dropped; ``realtime``: whether the calls ran under SCHED_RR (:func:`foreground`); ``others_cores``: the CPUs
    other processes kept busy meanwhile (None: unknown)."""

    values: list[dict[int, float]]
    realtime: bool
    others_cores: float | None

    def record(self) -> dict:
        """The manifest's note of this timing (``tuning.latency.served_clock``)."""
        others = None if self.others_cores is None else round(self.others_cores, 3)
        return {"kept": bool(self.values), "realtime": self.realtime, "others_cores": others,
                "max_others_cores": MAX_OTHERS_CORES}


def served_ms(predictors: Sequence[Predictor], text: str, rounds: int, *,
              seq_lens: Sequence[int] = SERVED_SEQ_LENS) -> ServedTiming:
    """Wall-clock ms per call of ``predictors`` opened as ``serve`` runs them, at each of ``seq_lens``: the minimum
    over every call of ``rounds`` interleaved rounds (:func:`latency_call`; per candidate, length and round two
    warm-up calls, then calls for ``ROUND_SECONDS``, at least ``RUNS_PER_ROUND``). Why the minimum: it is the call
    other processes did not touch ("the lowest value gives a lower bound for how fast your machine can run the
    given code snippet; higher values ... are typically ... caused by other processes interfering with your timing
    accuracy": Python's ``timeit`` docs).

    The calls run in the :func:`foreground` (real-time round-robin) where the OS allows it. Only on a
    quiet host, or one made quiet that way: when other processes kept more than ``MAX_OTHERS_CORES`` of this process's
    CPUs busy during the timing (:func:`others_cores`), or that cannot be known, the values are dropped (``[]``).
    Why: a multi-threaded call needs all its threads on a CPU at once; with every CPU contended that happens by
    chance (measured, two busy loops on both cores, all-MiniLM-L6-v2 at 16 tokens: ONNX Runtime's minimum 0.73 ms
    in one process and 1.28 ms in another, against 0.80 quietly, so OpenVINO's 1.26× lag shrank to 3.5 %).
    Returns a :class:`ServedTiming`."""
    with foreground(SERVED_REALTIME) as realtime:
        values, others = others_cores(lambda: _served_minimum(predictors, text, rounds, seq_lens))
    kept = others is not None and others <= MAX_OTHERS_CORES
    return ServedTiming(values if kept else [], realtime, others)


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


@contextlib.contextmanager
def foreground(enabled: bool = True):
    """Run the block with every thread of this process (Linux schedules threads, ``sched_setscheduler(2)``) under
    SCHED_RR at the lowest real-time priority, when ``enabled`` and the OS allows it; afterwards each thread gets its
    policy and priority back (threads born inside: the calling thread's from before). Yields whether it changed
    them: all or none (a refusal part-way puts back those already changed).
    Without ``/proc/self/task`` or ``os.sched_setscheduler``, or without permission (``PermissionError``:
    CAP_SYS_NICE or an RLIMIT_RTPRIO is needed), nothing changes."""
    if not enabled or not hasattr(os, "sched_setscheduler"):
        yield False
        return
    before = {}
    for t in _thread_ids():
        with contextlib.suppress(OSError):
            before[t] = (os.sched_getscheduler(t), os.sched_getparam(t).sched_priority)
    base = (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority) if before else None
    changed = []
    for t in before:
        try:
            os.sched_setscheduler(t, os.SCHED_RR, os.sched_param(os.sched_get_priority_min(os.SCHED_RR)))
        except PermissionError:
            _restore(changed, before, base)
            changed = []
            break
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        changed.append(t)
    try:
        yield bool(changed)
    finally:
        if changed:
            _restore(_thread_ids(), before, base)


def _restore(threads: Sequence[int], before: dict, base: tuple[int, int]) -> None:
    """Give each of ``threads`` its ``(policy, priority)`` from ``before`` (one not there: ``base``)."""
    for t in threads:
        policy, priority = before.get(t, base)
        with contextlib.suppress(OSError):
            os.sched_setscheduler(t, policy, os.sched_param(priority))


def _served_minimum(predictors: Sequence[Predictor], text: str, rounds: int,
                    seq_lens: Sequence[int]) -> list[dict[int, float]]:
    calls = [[latency_call(p, text, seq_len=n) for n in seq_lens] for p in predictors]
    best = [[float("inf")] * len(seq_lens) for _ in predictors]
    order = list(range(len(predictors)))
    for r in range(rounds):
        for i in order[r % len(order):] + order[: r % len(order)]:
            for k, call in enumerate(calls[i]):
                call(), call()
                end, runs = time.perf_counter() + ROUND_SECONDS, 0
                while runs < RUNS_PER_ROUND or time.perf_counter() < end:
                    t0 = time.perf_counter()
                    call()
                    best[i][k] = min(best[i][k], (time.perf_counter() - t0) * 1e3)
                    runs += 1
    return [{n: round(b[k], 4) for k, n in enumerate(seq_lens)} for b in best]


def measure(predictor: Predictor, text: str, *, rounds: int = TRIAL_ROUNDS) -> dict:
    """One candidate timed alone over ``LATENCY_SEQ_LENS``: :func:`timed_costs`' record (up to 5 warm-up calls
    per length)."""
    return timed_costs([predictor], text, rounds, warmup_runs=5)[0]


def measure_p50(predictor: Predictor, text: str) -> float:
    """Wall-clock p50 (ms) of :func:`latency_call`, as :func:`measure` takes it."""
    return measure(predictor, text)["p50_ms"]
