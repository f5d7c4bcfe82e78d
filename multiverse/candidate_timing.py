"""How the tuner times a candidate: end to end (tokenize, run, post-process), batch 1, at a short and a long
sequence length, in interleaved rounds, by process CPU time (``multiverse.timing.interleaved``), so that host
drift and other processes' load cannot pick the winner (see ``tuning._Tuner.retime``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .inference import Predictor
from .timing import interleaved, relative_costs

LATENCY_SEQ_LEN = 128
# Candidates are compared at a short and a long length, length by length (``choice.cost_ms``): which runtime
# wins depends on the length. Measured on all-MiniLM-L6-v2 bundles as served, interleaved, 7 rounds, idle
# host: OpenVINO dynamic int8 p50 over ONNX Runtime s8 per-channel α=0.7 1.61x at 8 tokens, 1.53x at 16, 0.91x
# at 64, 0.92x at 128, 0.97x at 256. Timed at 128 only, the tuner shipped the OpenVINO one.
LATENCY_SEQ_LENS = (16, LATENCY_SEQ_LEN)
LATENCY_BATCH = 1
RETIME_ROUNDS = 5  # interleaved timing rounds of the passing candidates before each choice
TRIAL_ROUNDS = 3  # timing rounds of one candidate right after its validation
RUNS_PER_ROUND = 10  # calls per candidate per round (fewer when they take over ROUND_SECONDS); the round's median
ROUND_SECONDS = 0.3  # wall-clock budget of one candidate's calls in one round (s): a loaded host slows calls 10×
# Re-timing and dominance checks compare CPU time per call on 1 thread: on 2, OpenVINO's oneTBB workers wait actively
# for a preempted peer, so its CPU time grows with other load, ONNX Runtime's (spinning off) not
# (benchmarks/results/runtime_noise.md).
TIMING_THREADS = 1
# Passing int8 trials over RETIME_SPAN x the cheapest one's CPU time are not re-timed (fp32 always is): one trial
# timing is within ~25 % (measured: the same graph 6.3 vs 7.8 ms in two runs), far inside 2x.
RETIME_SPAN = 2.0


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
    """Indices of the trials (``choice.Trial``) to re-time together, in order: the passing ones but int8 trials over
    ``RETIME_SPAN`` × the cheapest passing one's ``cpu_ms`` (no timing noise makes those the fastest; fp32, trial 0,
    stays: the reason's speed-up), plus ``also`` whatever they passed."""
    passing = [i for i, t in enumerate(trials) if t.passed]
    cheapest = min((trials[i].cpu_ms for i in passing if trials[i].cpu_ms), default=None)
    if cheapest:
        passing = [i for i in passing if i == 0 or not trials[i].cpu_ms or trials[i].cpu_ms <= RETIME_SPAN * cheapest]
    return sorted(set(passing) | set(also))


def least_ratio(slow: dict, fast: dict) -> float:
    """``slow``'s cost over ``fast``'s at the length where it is least slower (``cpu_ms_by_len`` dicts over the same
    lengths): r > 1 means ``slow`` costs ≥ r× ``fast`` at every timed length."""
    return min(slow[n] / fast[n] for n in fast)


def measure(predictor: Predictor, text: str, *, rounds: int = TRIAL_ROUNDS) -> dict:
    """One candidate timed alone over ``LATENCY_SEQ_LENS``: :func:`timed_costs`' record (up to 5 warm-up calls
    per length)."""
    return timed_costs([predictor], text, rounds, warmup_runs=5)[0]


def measure_p50(predictor: Predictor, text: str) -> float:
    """Wall-clock p50 (ms) of :func:`latency_call`, as :func:`measure` takes it."""
    return measure(predictor, text)["p50_ms"]
