"""Which passing candidate ships: the tuner's choice policy, pure functions over :class:`Trial` records.

The fastest passing candidate ships, by :func:`cost_ms` (process CPU time per call at each timed sequence length,
measured in interleaved rounds, judged at the length where a candidate is furthest from the fastest; else
wall-clock p50); costs within ``LATENCY_TIE`` count as one speed and the most faithful
of those ships (``ValidationReport.divergence``); a passing candidate at most ``FIDELITY_TRADE[0]`` slower
with at most ``FIDELITY_TRADE[1]`` of the divergence ships instead; a narrow pass (gate loss above
``SAFETY_MARGIN`` × τ) gives way to a pass with margin. Each constant documents the measurement behind it.
No I/O, no ONNX Runtime: unit-tested with hand-made trials (``tests/test_gate.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from .validate import ValidationReport

LATENCY_TIE = 0.05  # costs within 5 % are one speed: run-to-run p50 noise on this 2-vCPU host is ±3-5 %
# A passing candidate at most 10 % slower than the fastest ships instead when its divergence from the PyTorch model
# is at most half. Why, measured (held-out test split): SmoothQuant's Mul nodes cost about 5-8 % p50, and the unsmoothed
# candidates they beat on output error passed the validation split but then lost 1.08 % entity F1 (WNUT, logit
# NMSE 0.0040 vs 0.0015 smoothed) and 1.2 % label agreement (BBC, 0.0069 vs 0.0024) on held-out data.
FIDELITY_TRADE = (0.10, 0.5)  # (max extra p50, max divergence ratio)
# A pass with gate loss above SAFETY_MARGIN × τ is narrow: when the candidate choose() would ship after phase 1
# passed narrowly, phase 2 still runs from it, aiming at the margin. Why, measured: on a few hundred examples a
# discrete metric moves by ~τ between splits. A first build of the BBC cross-encoder shipped α=0.8, which lost
# 0.63 % MRR on the validation split (τ 1 %) and 0.91 % on the test split; the same with its most sensitive node
# in fp32 lost 0.21 % / 0.14 %, at the same p50 (logit NMSE 0.0063 vs 0.0175, so choose() prefers it).
SAFETY_MARGIN = 0.5
# SmoothQuant variants (α) of an ONNX Runtime candidate add Mul nodes to the same int8 GEMMs. Re-timed interleaved with
# it (1-thread CPU time per call), α=0.6/0.7/0.8 took 0.97-1.06x its time at 16 and at 128 tokens in two builds of a
# DistilBERT-base-shaped classifier (quiet host; load 6-8), 0.97-1.00x (geometric mean over lengths) in a third
# (load 3.5). A variant not built is judged at this fraction of its base's time (best_case_variant): 7 % below the
# lowest measured.
VARIANT_TIME_FLOOR = 0.9
# Passing candidates whose CPU time per call is over RETIME_SPAN x the cheapest passing one's are not contenders
# (:func:`contenders`): they are neither re-timed nor compared. One timing of a candidate is within ~25 % of another
# of the same graph (measured, loaded host: one α=0.7 MiniLM graph 6.3 and 7.8 ms in two runs), so no timing noise
# makes one 2x slower the fastest. fp32 included: on the DistilBERT-base shape it took 3.8x the CPU time of the
# int8 that shipped, and re-timing it with the int8 candidates (5 rounds at 16 and 128 tokens, plus served
# latency) was 6 of the build's 63 s (cProfile, quiet host).
RETIME_SPAN = 2.0


@dataclass(frozen=True)
class Trial:
    """One candidate: its quantization config (None = fp32), validation, p50 latency (ms, wall clock),
    ``cpu_ms_by_len``: process CPU time per call (ms, all threads; ONNX Runtime spinning off) at each timed
    sequence length, the speed the choice compares (see :func:`cost_ms`), and ``cpu_ms``, their geometric mean;
    ``cpu_rounds_ms`` are its interleaved rounds when it was re-timed (then on ``tuning.TIMING_THREADS`` thread: CPU time
    per call barely depends on the thread count, so a trial that was not re-timed still compares);
    ``served_ms_by_len``: wall-clock ms per call as ``serve`` runs it (the run's intra-op threads, the runtime's
    own spinning) at the short timed lengths, the minimum over interleaved rounds (``candidate_timing.served_ms``),
    set when it was re-timed; where every compared trial has it, it replaces the CPU time at that length."""

    label: str
    config: dict | None
    validation: ValidationReport | None
    p50_ms: float | None
    error: str | None = None
    phase: str = ""
    cpu_ms: float | None = None
    cpu_rounds_ms: tuple[float, ...] = ()
    cpu_ms_by_len: dict[int, float] = field(default_factory=dict)  # sequence length (tokens) -> CPU ms per call
    served_ms_by_len: dict[int, float] = field(default_factory=dict)  # sequence length -> wall ms per call, as served

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["validation"] = self.validation.to_dict() if self.validation else None
        return d


def contenders(trials: Sequence[Trial], indices: Sequence[int]) -> list[int]:
    """Those of ``indices`` (passing trials) that could be the fastest: all but those whose ``cpu_ms`` is over
    ``RETIME_SPAN`` × the cheapest one's (trials without ``cpu_ms`` stay), in order."""
    cheapest = min((trials[i].cpu_ms for i in indices if trials[i].cpu_ms), default=None)
    if cheapest is None:
        return list(indices)
    return [i for i in indices if not trials[i].cpu_ms or trials[i].cpu_ms <= RETIME_SPAN * cheapest]


def trial_runtime(config: dict | None) -> str:
    """The runtime a trial's graph runs on, from its recorded quantization config: ``openvino`` for NNCF
    candidates, else ``onnxruntime`` (fp32 is the ORT-fused graph)."""
    return (config or {}).get("runtime", "onnxruntime")


def best_case_variant(base: Trial, floor: float = VARIANT_TIME_FLOOR) -> Trial:
    """A variant of trial ``base`` (validated and timed by length) as good as one could be: ``floor`` × its time per
    call at every timed length (CPU time and served latency), passing with margin, with no divergence from the
    PyTorch model and no gate loss."""
    from .tasks import get_task

    v = base.validation
    details = {**v.details, get_task(v.task).fidelity_metric: 1.0, **({"logit_nmse": 0.0} if "logit_nmse" in v.details
                                                                       else {})}
    return replace(base, label=f"{base.label} (best case)", validation=replace(v, passed=True, checks=(),
                                                                               details=details),
                   p50_ms=None if base.p50_ms is None else floor * base.p50_ms,
                   cpu_ms=None if base.cpu_ms is None else floor * base.cpu_ms, cpu_rounds_ms=(),
                   cpu_ms_by_len={n: floor * t for n, t in base.cpu_ms_by_len.items()},
                   served_ms_by_len={n: floor * t for n, t in base.served_ms_by_len.items()})


def could_ship_variant(trials: Sequence[Trial], base: int, precision: str = "auto", runtime: str = "auto",
                       floor: float = VARIANT_TIME_FLOOR) -> bool:
    """Whether a variant of trial ``base`` (a SmoothQuant strength of an ONNX Runtime candidate) could ship beside
    ``trials``: :func:`choose` over ``trials`` plus its :func:`best_case_variant` picks that one. When it does not,
    a real variant, which takes at least as long at every length and diverges more, is not picked either, and the
    tuner need not build it. ``trials[base]`` must be validated and timed by length (``cpu_ms_by_len``). A ``floor``
    of 0 (no bound on how fast a variant may be) says True."""
    if floor <= 0:
        return True
    return choose([*trials, best_case_variant(trials[base], floor)], precision, runtime)[0] == len(trials)


def choose(trials: Sequence[Trial], precision: str = "auto", runtime: str = "auto") -> tuple[int | None, str]:
    """Index of the trial to ship (fp32 is trial 0) and the reason, or (None, reason) when none passes.

    ``precision``: ``auto`` = the fastest passing trial; ``int8`` = the fastest passing int8 trial
    (for building on a host whose timings say nothing about the target CPU); ``fp32`` = trial 0.
    ``runtime``: ``auto`` = any; ``onnxruntime`` / ``openvino`` = only trials on that runtime (:func:`trial_runtime`).
    "Fastest" is by :func:`cost_ms` and allows for timing noise: passing trials within ``LATENCY_TIE`` (5 %) of
    the fastest one count as equally fast, and the most faithful of them ships (lowest
    ``ValidationReport.divergence`` from the PyTorch model, then gate loss where the metric resolves the
    tolerance (``ValidationReport.resolvable``), then cost); a trial at
    most ``FIDELITY_TRADE`` 10 % slower with at most half that divergence ships instead, and a
    narrow pass gives way to a pass with margin at most 10 % slower (see :func:`_most_accurate_of_fastest`). Without this,
    a candidate that passed a finite eval set by one example, or gained a lucky 6 % of F1 on 200
    tweets, would beat a clearly more faithful one over a timing difference the next run reverses.
    """
    passing = [i for i, t in enumerate(trials) if t.passed and t.p50_ms is not None
               and runtime in ("auto", trial_runtime(t.config))]
    if precision == "fp32":
        passing = [i for i in passing if trials[i].config is None]
    elif precision == "int8":
        passing = contenders(trials, [i for i in passing if trials[i].config is not None])
        if passing:
            best = _most_accurate_of_fastest(trials, passing)
            clock = _clock(trials, passing)
            vs = f"; speed vs fp32: {speedup_text(trials, 0, best)}" if trials[0].p50_ms is not None else ""
            return best, f"int8 requested: {_why_not_fastest(trials, passing, best, clock)}{vs}"
    if not passing:
        return None, ("no candidate met the tolerance" + ("" if precision == "auto" else f" at precision {precision}")
                      + ("" if runtime == "auto" else f" on {runtime}"))
    compared = contenders(trials, passing)
    best = _most_accurate_of_fastest(trials, compared)
    if trials[best].config is None:
        if any(trials[i].config is not None for i in passing):
            int8 = contenders(trials, [i for i in passing if trials[i].config is not None])
            top = min(int8, key=lambda i: cost_ms(trials, int8)[i])
            return best, ("fp32 shipped: the passing int8 candidates were not faster than fp32 on this host (the "
                          f"fastest, {trials[top].label}: speed vs fp32 {speedup_text(trials, 0, top)})")
        if any(t.config is not None for t in trials):
            return best, "fp32 shipped: no int8 candidate met the tolerance"
        return best, "fp32 shipped: no int8 candidate was tried (--precision fp32 or --max-trials 0)"
    clock = _clock(trials, compared)
    return best, f"{_why_not_fastest(trials, compared, best, clock)}, {speedup_text(trials, 0, best)} faster than fp32"


def _clock(trials: Sequence[Trial], passing: Sequence[int]) -> str:
    """The clock :func:`cost_ms` compared ``passing`` on, for reasons (see :func:`clock_text`)."""
    if _timed_by_length(trials, passing):
        return clock_text(speeds_by_len(trials, passing)[1])
    return "CPU time" if all(trials[i].cpu_ms is not None for i in passing) else "p50"


def speedup_text(trials: Sequence[Trial], slow: int, fast: int) -> str:
    """How much faster trial ``fast`` is than trial ``slow``: "1.31× at 128 tokens, 1.96× at 16 tokens" per length
    (on :func:`speeds_by_len`' clocks) when both have them, else one figure from :func:`cost_ms` ("nan×" when a cost
    is missing)."""
    if _timed_by_length(trials, [slow, fast]):
        speed = speeds_by_len(trials, [slow, fast])[0]
        a, b = speed[slow], speed[fast]
        return ", ".join(f"{a[n] / b[n]:.2f}× at {n} tokens" for n in sorted(a))
    if trials[slow].p50_ms is None:
        return "nan×"
    cost = cost_ms(trials, [slow, fast])
    return f"{cost[slow] / cost[fast]:.2f}×" if cost.get(slow) and cost.get(fast) else "nan×"


def _why_not_fastest(trials: Sequence[Trial], passing: Sequence[int], best: int, clock: str) -> str:
    """The first part of :func:`choose`'s reason: "fastest passing candidate by CPU time", or, when the rules of
    :func:`_most_accurate_of_fastest` shipped a slower one, which was faster, by how much, and why it lost."""
    cost = cost_ms(trials, passing)
    fastest = min(passing, key=lambda i: cost[i])
    if cost[best] <= cost[fastest] or fastest == best:
        return f"fastest passing candidate by {clock}"
    f, b = trials[fastest].validation, trials[best].validation
    slower = cost[best] / cost[fastest] - 1
    if not passed_with_margin(trials[fastest]) and passed_with_margin(trials[best]):
        why = (f"that one passed narrowly (gate loss {f.gate_loss:.2g} > {SAFETY_MARGIN:g} × tolerance), this one with "
               f"margin (gate loss {b.gate_loss:.2g})")
    else:
        why = f"this one is more faithful to the PyTorch model (divergence {b.divergence:.3g} vs {f.divergence:.3g})"
    by_len = _timed_by_length(trials, [best, fastest])
    if by_len:
        speed = speeds_by_len(trials, passing)[0]
        extra = {n: speed[best][n] / speed[fastest][n] - 1 for n in sorted(speed[best])}
        slower = max(slower, *extra.values())  # the rules hold at every length
    trade = f"within {FIDELITY_TRADE[0]:.0%}"
    rule = (f"within the {LATENCY_TIE:.0%} timing noise" if slower <= LATENCY_TIE else trade
            if slower <= FIDELITY_TRADE[0] else f"{trade} of a faster candidate that is itself {trade} of it")
    if by_len:
        clock = f"({clock})" if "," in clock else clock
        takes = (f"{' / '.join(f'{x:+.1%}' for x in extra.values())} {clock} vs {trials[fastest].label} at "
                 f"{' / '.join(map(str, extra))} tokens")
    else:
        takes = f"{slower:.1%} more {clock} than {trials[fastest].label}"
    return f"{trials[best].label} ships although it takes {takes} ({rule}): {why}"


def cost_ms(trials: Sequence[Trial], indices: Sequence[int]) -> dict[int, float]:
    """The speed :func:`choose` compares, per trial index (ms per call, lower is faster).

    When every one of ``indices`` has CPU time per call at the same sequence lengths (``cpu_ms_by_len``): at
    each length L, ``r_L(i) = cpu_L(i) / min_j cpu_L(j)`` (1 = the fastest of ``indices`` at L), and the cost is
    ``max_L r_L(i) × G`` with G the geometric mean over L of those minima (ms). So a candidate is judged at the
    length where it is furthest from the fastest, and a candidate fastest at every length costs G (minimax
    regret: the goal is to be fast at every length, not on average); the tie and trade rules of :func:`choose`
    also hold length by length (:func:`_within`). Why: with one geometric mean over 16 and 128 tokens, a
    candidate slower at short lengths could tie one slower at long lengths and ship on fidelity alone (the
    all-MiniLM-L6-v2 build: OpenVINO dynamic 5.15 ms vs ONNX Runtime 5.05 ms, 2 % apart, with no record of
    which length each lost). Else ``cpu_ms`` when every one has it, else ``p50_ms`` for all (never a mix of clocks).
    """
    if _timed_by_length(trials, indices):
        speed, _ = speeds_by_len(trials, indices)
        lens = list(speed[indices[0]])
        best = {n: min(speed[i][n] for i in indices) for n in lens}
        g = float(np.exp(np.mean(np.log([best[n] for n in lens]))))
        return {i: max(speed[i][n] / best[n] for n in lens) * g for i in indices}
    if all(trials[i].cpu_ms is not None for i in indices):
        return {i: trials[i].cpu_ms for i in indices}
    return {i: trials[i].p50_ms for i in indices}


def speeds_by_len(trials: Sequence[Trial], indices: Sequence[int]) -> tuple[dict[int, dict[int, float]], dict[int, str]]:
    """``({index: {length: ms}}, {length: clock})``: what :func:`cost_ms` compares at each timed length, one clock
    per length for all of ``indices``: the served latency (``served_ms_by_len``) where every one of them has it,
    else process CPU time (``cpu_ms_by_len``). Why two clocks: CPU time on one thread measures the work a call
    does, which other load cannot inflate, but not how it spreads over the served threads, and at short lengths
    that decides (all-MiniLM-L6-v2, quiet host, 2 threads as served: ONNX Runtime α=0.7 with 1 node in fp32 ran
    0.53 / 0.83 ms at 8 / 16 tokens against OpenVINO dynamic int8's 0.76 / 1.05 ms, where one-thread CPU time had
    OpenVINO 4 % ahead at 16 tokens; ``benchmarks/results/pick_right-minilm.json``). Only at the short length: at
    128 tokens the order of the same pair's fastest calls flipped with the load. The tuner records served latency
    only when the host was quiet while it was timed (``candidate_timing.served_ms``)."""
    speed = {i: dict(trials[i].cpu_ms_by_len) for i in indices}
    clocks = {n: "CPU time" for n in (speed[indices[0]] if indices else {})}
    for n in clocks:
        if all(n in trials[i].served_ms_by_len for i in indices):
            for i in indices:
                speed[i][n] = trials[i].served_ms_by_len[n]
            clocks[n] = "served latency"
    return speed, clocks


def clock_text(clocks: dict[int, str]) -> str:
    """"CPU time" when one clock compared every length, else "served latency at 16 tokens, CPU time at 128"."""
    if len(set(clocks.values())) <= 1:
        return next(iter(clocks.values()), "CPU time")
    return ", ".join(f"{c} at {n} tokens" for n, c in sorted(clocks.items()))


def passed_with_margin(trial: Trial) -> bool:
    """Passed with margin: gate loss ≤ ``SAFETY_MARGIN`` × the tolerance it was validated at, or passed on a metric
    that cannot resolve the tolerance (``ValidationReport.resolvable``: one entity moved entity F1 by 2.1 % at τ 1 %
    on WNUT-16 validation), whose gate loss ranks candidates by luck: measured on the test suite's WNUT-16 model, the
    nine int8 candidates' validation losses (−8.0 % to +0.9 %) did not predict their held-out losses (−2.1 % to
    +4.4 %; the one with the second-lowest logit NMSE, 0.0004, lost the most). Such passes are then told apart by
    divergence only."""
    v = trial.validation
    return v.gate_loss <= SAFETY_MARGIN * v.tolerance or not v.resolvable


def _most_accurate_of_fastest(trials: Sequence[Trial], indices: Sequence[int]) -> int:
    """Among ``indices``: the most faithful of those within ``LATENCY_TIE`` of the fastest (:func:`cost_ms`), or, if one at
    most ``FIDELITY_TRADE[0]`` slower has at most ``FIDELITY_TRADE[1]`` × its divergence, the most faithful such.
    If that one passed narrowly (gate loss > ``SAFETY_MARGIN`` × τ), the most faithful that passed with
    margin, is at most ``FIDELITY_TRADE[0]`` slower than it and no less faithful ships instead (measured, BBC
    cross-encoder: α=0.6 passed validation with 0.98 % MRR loss at τ 1 % and lost 1.17 % held out; the same with
    its most sensitive node in fp32, 8 % slower, gained 0.13 % on validation and lost 0.54 % held out).
    "Within x of" holds at every timed sequence length (:func:`_within`): a more faithful candidate never ships
    that is more than x slower at one length, whatever it gains at another."""
    cost = cost_ms(trials, indices)

    def key(i):  # divergences equal to 2 significant digits tie (BBC α=0.7 vs 0.8: 0.002364 vs 0.002357), then gate
        v = trials[i].validation  # loss where it can tell them apart (ValidationReport.resolvable), then speed
        return float(f"{v.divergence:.2g}"), v.gate_loss if v.resolvable else 0.0, cost[i]

    fastest = min(indices, key=lambda i: cost[i])
    pick = min((i for i in indices if _within(trials, cost, i, fastest, LATENCY_TIE)), key=key)
    slower, ratio = FIDELITY_TRADE
    better = [i for i in indices if _within(trials, cost, i, fastest, slower)
              and trials[i].validation.divergence <= ratio * trials[pick].validation.divergence]
    if better:
        pick = min(better, key=key)
    if not passed_with_margin(trials[pick]):  # a narrow pass: one with margin, as faithful and ≤ 10 % slower, ships instead
        safer = [i for i in indices if passed_with_margin(trials[i]) and _within(trials, cost, i, pick, slower)
                 and trials[i].validation.divergence <= trials[pick].validation.divergence]
        if safer:
            pick = min(safer, key=key)
    return pick


def _within(trials: Sequence[Trial], cost: dict[int, float], i: int, j: int, x: float) -> bool:
    """Trial ``i`` at most ``x`` (a fraction) slower than trial ``j``: by ``cost`` (:func:`cost_ms`), and, when ``cost``
    compares CPU time length by length, at every timed sequence length."""
    by_len = _timed_by_length(trials, list(cost))
    speed = speeds_by_len(trials, list(cost))[0] if by_len else {}
    per_len = not by_len or all(speed[i][n] <= speed[j][n] * (1 + x) for n in speed[i])
    return cost[i] <= cost[j] * (1 + x) and per_len


def _timed_by_length(trials: Sequence[Trial], indices: Sequence[int]) -> bool:
    """Whether every one of ``indices`` has CPU time per call at the same sequence lengths (``cpu_ms_by_len``)."""
    by_len = [trials[i].cpu_ms_by_len for i in indices]
    return bool(by_len) and all(by_len) and all(b.keys() == by_len[0].keys() for b in by_len)


@dataclass(frozen=True)
class TuningReport:
    """All trials, which one was chosen (index into ``trials``) and why."""

    trials: tuple[Trial, ...]
    chosen: int | None
    reason: str
    latency: dict = field(default_factory=dict)
    strategy: str = "neural_compressor.common tuning loop"
    sensitivity: dict = field(default_factory=dict)

    @property
    def chosen_trial(self) -> Trial | None:
        return None if self.chosen is None else self.trials[self.chosen]

    @property
    def chosen_validation(self) -> ValidationReport | None:
        """The shipped trial's validation; when none was chosen, the best trial's (see :meth:`best_trial`),
        which then never counts as passed: the gate failed at the requested precision."""
        if self.chosen_trial is not None:
            return self.chosen_trial.validation
        t = self.best_trial()
        return None if t is None else replace(t.validation, passed=False)

    def best_trial(self) -> Trial | None:
        """The most accurate validated int8 trial (lowest gate loss), or fp32 when no int8 trial was validated:
        the one whose numbers tell a user how far quantization is from the tolerance."""
        done = [t for t in self.trials if t.validation is not None]
        int8 = [t for t in done if t.config is not None]
        return min(int8 or done, key=lambda t: t.validation.gate_loss) if done else None

    def summary(self) -> str:
        """One line for the stage summary on stderr: the choice and why (including a skipped fp32 fallback)."""
        t = self.chosen_trial
        if t is None:
            b = self.best_trial()
            skipped = f"; {self.sensitivity['skipped']}" if self.sensitivity.get("skipped") else ""
            return (f"no candidate passed; best {b.label}: {b.validation.metric} {b.validation.optimised:.4f}{skipped}"
                    if b else "no candidate")
        v = t.validation
        return (f"chose {t.label}: {v.metric} {v.optimised:.4f} vs {v.reference:.4f} "
                f"(loss {v.relative_loss:.4f}), p50 {t.p50_ms:.2f} ms; {self.reason}")

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "latency": self.latency, "chosen": self.chosen, "reason": self.reason,
                "sensitivity": self.sensitivity, "trials": [t.to_dict() for t in self.trials]}
