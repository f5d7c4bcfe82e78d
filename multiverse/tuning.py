"""Accuracy-driven, latency-aware int8 tuning: ship the fastest candidate that passes the gate.

The search is Intel Neural Compressor's tuning loop (``neural_compressor.common``:
``TuningConfig(config_set, tolerable_loss, max_trials)``, ``init_tuning``, ``TuningMonitor``)
over ONNX Runtime dynamic-int8 candidates described by :class:`OrtDynamicInt8Config`. INC's
monitor stops at the first candidate whose score reaches ``baseline × (1 − tolerable_loss)``;
Multiverse feeds it ``1 − gate_loss`` with baseline 1, so INC's stop rule *is* our gate
(``ValidationReport.gate_loss``). INC 3.x ships no ONNX Runtime backend, so building,
validating and timing each candidate is Multiverse's (the evaluation function).

Candidates, in this order (stage order lives in :func:`tune`), each validated on the full eval set and timed
end to end here (``candidate_timing``): 1. fp32, the fused graph: int8 ships only when accurate *and* faster;
2. OpenVINO static int8 (``ovtuning``), when OpenVINO is tried: the fastest kind where it passes; when it passed
   with margin on a bf16 target, its bf16 twin right after it (re-timed with phase 3's first candidate);
3. the target's ONNX Runtime configuration, then the same with SmoothQuant strengths α (``smooth.py``), the task
   head (:func:`head_nodes`) fp32 in all. They cost the same to run, so all run (INC's early stop off) and
   :func:`choose` ships the most accurate of the equally fast; unless the first is too slow to ship beside a
   static int8 that passed with margin (:meth:`_Tuner.phase1`);
4. OpenVINO dynamic g32 and static with FFN outputs fp32, unless static passed with margin; bf16 variants (``ovtuning``);
5. if no int8 passed, or the one :func:`choose` would ship passed narrowly (gate loss > ``SAFETY_MARGIN`` × τ):
   per-node sensitivity of that ONNX Runtime candidate (``sensitivity.py``, each node quantized alone, on a subset
   of the eval data: label flips for classifiers, else output NMSE), then the same with the k most sensitive nodes in fp32 for growing k (INC's
   stop at the first that reaches τ, or ``SAFETY_MARGIN`` × τ after a narrow pass, keeps the fastest).
Before each choice the passing ones are re-timed in interleaved rounds (:meth:`_Tuner.retime`): host drift
between trials cannot pick the winner. The choice: ``choice.py``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from .background import REFERENCE, BackgroundBuilds, start_quantize
from .candidate_timing import (LATENCY_BATCH, LATENCY_SEQ_LENS, RETIME_ROUNDS,  # noqa: F401
                               SERVED_ROUNDS, SERVED_SEQ_LENS, TIMING_THREADS, TRIAL_ROUNDS, least_ratio, measure,
                               served_ms, timed_costs, to_retime)
from .choice import (FIDELITY_TRADE, SAFETY_MARGIN, VARIANT_TIME_FLOOR, Trial, TuningReport, choose,
                     could_ship_variant, speeds_by_len)
from .errors import MultiverseError
from .evaldata import EvalSet, subset
from .export import OnnxModel
from .graphnodes import head_nodes, output_nmse, quantizable_nodes  # noqa: F401 (output_nmse re-exported)
from .incconfig import to_inc
from .inference import Predictor
from .ovsession import precision_config
from .phase2 import fallback_plan, fallback_record, skipped_fallback
from .progress import Progress
from .quantize import quantize as quantize_model
from .runtime import SPINNING, physical_cores
from .smooth import SMOOTH_ALPHAS, SmoothedGraphs, phase1_configs  # noqa: F401 (re-exported)
from .targets import QuantConfig, Target
from .validate import by_length, model_inputs, reference_outputs, validate  # noqa: F401 (by_length re-exported)

# ONNX Runtime's idle intra-op threads spin by default, burning CPU time while they wait: the tuner's sessions
# turn it off so that process CPU time measures a candidate's work (see multiverse.timing.interleaved).
NO_SPINNING = {SPINNING: "0"}
DEFAULT_MAX_TRIALS = 12
SENSITIVITY_ITEMS = 64
FALLBACK_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # k most sensitive nodes kept in fp32, tried in order
CALIBRATION_ITEMS = 300


class _Tuner:
    """State of one tuning run: the reference outputs, smoothed graphs and the trials so far."""

    def __init__(self, ckpt, fused: OnnxModel, target: Target, data: EvalSet, tolerance: float, workdir: Path,
                 threads: int | None, progress: Progress, exported: OnnxModel | None = None,
                 background: BackgroundBuilds | None = None):
        self.ckpt, self.fused, self.target, self.data, self.exported = ckpt, fused, target, data, exported
        self.background = background or BackgroundBuilds()
        self.validation_data = by_length(data)
        self.tolerance, self.workdir, self.threads, self.progress = tolerance, workdir, threads, progress
        self.session = {**target.session, **NO_SPINNING}
        self.latency_text = " ".join(t if isinstance(t, str) else t[1] for t in model_inputs(data))
        self.trials: list[Trial] = []
        self.models: list[OnnxModel] = []
        self._built, self._calibration, self._early = 0, None, {}  # calibration: list[dict] once built
        self._base_graph = SmoothedGraphs(fused, ckpt.task, workdir, CALIBRATION_ITEMS)  # alpha -> graph
        self._predictors: dict[tuple, Predictor] = {}  # the ones used more than once (see predictor)
        self._timed_together: set[int] = set()  # the trials of the last interleaved re-timing
        self.served_clock: dict | None = None  # candidate_timing.ServedTiming.record() of the last re-timing

    @cached_property
    def reference(self):
        """The PyTorch model's outputs on the validation data (``validate.TaskOutputs``), at first use: from the
        background worker (``background.start_reference``), else computed now."""
        self.progress.activity(f"computing the PyTorch reference on {len(self.data)} examples")
        taken = self.background.take(REFERENCE)
        return taken if taken is not None else reference_outputs(self.ckpt, self.validation_data,
                                                                 self.fused.model_dir, self.threads)

    def build_early(self, config) -> None:
        """:meth:`build` ``config`` now, for the build of its trial to return (or raise its ``MultiverseError``):
        NNCF's calibration needs no reference, so it runs while the worker still computes that."""
        key = config.model_dump_json()
        try:
            self._early[key] = self.build(config)
        except MultiverseError as exc:
            self._early[key] = exc

    def build(self, config) -> OnnxModel:
        """The graph of one candidate: ORT dynamic int8 of the fused graph (``QuantConfig``), or NNCF static int8
        of the exported graph as an OpenVINO IR (``OvInt8Config``, calibrated on ``ovtuning.calibration_set``)."""
        key = config.model_dump_json()  # what build_early and background.start_quantize keyed it by
        if (early := self._early.pop(key, None)) is not None:
            if isinstance(early, MultiverseError):
                raise early
            return early
        self._built += 1
        self.progress.activity(f"quantizing {config.label()}")
        if isinstance(config, QuantConfig):
            built = self.background.take(key)
            return built or quantize_model(self._base_graph(config.smooth_alpha), self.workdir / f"q{self._built}",
                                           config)
        from .ovquant import quantize_ov
        from .ovtuning import calibration_feeds

        if self._calibration is None:
            self._calibration = calibration_feeds(self.predictor(self.fused), self.data)
        return quantize_ov(self.exported, self.workdir / f"ov{self._built}", config, self._calibration)

    def predictor(self, model: OnnxModel, threads: int | None = None, served: bool = False) -> Predictor:
        """``model`` opened as the tuner runs it: ``threads`` (default: the run's) intra-op threads, spinning off
        (``served``: as ``serve`` runs it, spinning as shipped), an IR at its recorded inference precision. Those of
        the fp32 graph, on ``TIMING_THREADS`` and ``served`` are kept for reuse (calibration, sensitivity, re-timing)."""
        threads = threads or self.threads
        config = {**(self.target.session if served else self.session), **precision_config(model.quantization)}
        key = (str(model.path), threads, tuple(sorted(config.items())))
        if key not in self._predictors:
            predictor = Predictor(model.path, model.model_dir, self.ckpt.task, threads=threads, session_config=config)
            if not (model.path == self.fused.path or threads == TIMING_THREADS or served):
                return predictor
            self._predictors[key] = predictor
        return self._predictors[key]

    def run(self, label: str, model: OnnxModel, config: dict | None, phase: str) -> Trial:
        predictor = self.predictor(model)
        self.progress.activity(f"validating and timing {label} on {len(self.data)} examples")
        report = validate(self.ckpt, predictor, self.validation_data, self.tolerance, self.reference)
        t = measure(predictor, self.latency_text)
        trial = Trial(label, config, report, t["p50_ms"], phase=phase, cpu_ms=t["cpu_ms"],
                      cpu_ms_by_len=t["cpu_ms_by_len"])
        self.trials.append(trial)
        self.models.append(model)
        self.progress.info(f"{label:<40} {report.metric} {report.optimised:.4f} (gate loss {report.gate_loss:.4f}) "
                           f"{'passed' if report.passed else 'rejected'}  p50 {trial.p50_ms:.2f} ms, "
                           f"CPU {trial.cpu_ms:.2f} ms")
        return trial

    def inc_loop(self, configs: Sequence[QuantConfig], budget: int, phase: str, stop_at_first: bool = True,
                 target_loss: float | None = None, slower_than: tuple[int, float] | None = None,
                 keep_last_for: Callable[[], bool] | None = None) -> None:
        """INC's tuning loop over ``configs``: stops at the first candidate whose gate loss is ≤ ``target_loss``
        (default τ; INC's ``need_stop`` with ``tolerable_loss``) when ``stop_at_first``, else runs them all;
        never more than ``budget`` trials (INC's ``max_trials``). ``slower_than=(i, r)``: also stops after a
        candidate whose CPU time is over ``r`` × trial ``i``'s, timed interleaved with it (:meth:`ratio`; for
        ``configs`` ordered slowest last, whose successors cannot be chosen either).
        ``keep_last_for``: asked before the budget's last trial (when it is not the first); if it returns True
        the loop stops and leaves that trial to the next phase (phase 1 keeps one for the fp32 fallback when
        nothing has passed with margin by then)."""
        from neural_compressor.common.base_tuning import TuningConfig, init_tuning

        if budget <= 0 or not configs:
            return
        logging.getLogger("neural_compressor").setLevel(logging.WARNING)
        loader, _, monitor = init_tuning(TuningConfig(
            config_set=[to_inc(c) for c in configs],
            tolerable_loss=self.tolerance if target_loss is None else target_loss, max_trials=budget))
        monitor.set_baseline(1.0)
        for index, inc_config in enumerate(loader):
            if keep_last_for is not None and 0 < index == budget - 1 and keep_last_for():
                self.progress.info(f"keeping the last of {budget} trials for the per-node fp32 fallback "
                                   f"({len(configs) - index} configuration(s) not tried)")
                break
            config = inc_config.to_config()
            try:
                model = self.build(config)
            except MultiverseError as exc:
                self.trials.append(Trial(config.label(), config.model_dump(mode="json"), None, None, str(exc), phase))
                self.models.append(self.fused)
                self.progress.warn(f"{config.label()}: {exc}")
                monitor.add_trial_result(index, 0.0, inc_config)
            else:
                trial = self.run(config.label(), model, model.quantization, phase)
                monitor.add_trial_result(index, 1.0 - trial.validation.gate_loss, inc_config)
                ratio = self.ratio(slower_than[0], len(self.trials) - 1) if slower_than else 0.0
                if slower_than and ratio > slower_than[1]:
                    self.progress.info(f"stopping: {trial.label} takes {ratio:.2f}× the CPU time of "
                                       f"{self.trials[slower_than[0]].label} (> {slower_than[1]:.2f}×), and larger "
                                       "fallbacks are slower still")
                    break
            # INC's need_stop() is "met tolerable_loss or reached max_trials"; without the early stop the
            # budget is still INC's max_trials, so count here.
            if (stop_at_first and monitor.need_stop()) or index + 1 >= budget:
                break

    def phase1(self, configs: Sequence[QuantConfig], budget: int, anchor: int | None,
               keep_last_for: Callable[[], bool] | None = None, precision: str = "auto") -> None:
        """Phase 1 (one INC loop, every configuration run) within what is left of ``budget``. With an ``anchor``
        (a trial that passed with margin, OpenVINO static int8), the first configuration runs alone, is re-timed with
        the anchor and the passing trials (:meth:`retime`: the timing the choice then uses, unless more pass), and
        the rest (its SmoothQuant variants) run only if one could ship by :func:`choose`'s rules at ``precision``
        (``choice.could_ship_variant``: at ``VARIANT_TIME_FLOOR`` × its time at every length, without divergence)."""
        left = budget - (len(self.trials) - 1)
        if anchor is None or len(configs) < 2 or left < 2:
            self.inc_loop(configs, left, "configurations", stop_at_first=False, keep_last_for=keep_last_for)
            return
        first = len(self.trials)
        self.inc_loop(configs[:1], left, "configurations", stop_at_first=False)
        if len(self.trials) > first and self.trials[first].validation is not None:
            self.retime(also=(anchor, first))
            a, b = (speeds_by_len(self.trials, [anchor, first])[0][k] for k in (anchor, first))
            took = (f"{self.trials[first].label} takes {' / '.join(f'{b[n] / a[n]:.2f}×' for n in sorted(a))} the time "
                    f"of {self.trials[anchor].label} at {' / '.join(map(str, sorted(a)))} tokens")
            if not could_ship_variant(self.trials, first, precision, floor=VARIANT_TIME_FLOOR):
                self.progress.info(f"not trying its {len(configs) - 1} smoothed variant(s): {took}; at "
                                   f"{VARIANT_TIME_FLOOR:g}× its time and without divergence none would ship")
                return
            self.progress.info(f"{took}: its smoothed variants could ship")
        self.inc_loop(configs[1:], budget - (len(self.trials) - 1), "configurations", stop_at_first=False,
                      keep_last_for=keep_last_for)

    def retime(self, rounds: int = RETIME_ROUNDS, also: Sequence[int] = ()) -> None:
        """Re-time the passing trials that could be the fastest (``choice.contenders``) and ``also`` in
        ``rounds`` interleaved rounds (A B C, B C A, …) on ``TIMING_THREADS`` thread (``candidate_timing.to_retime``);
        set ``cpu_ms_by_len`` and ``cpu_ms`` from :func:`multiverse.timing.relative_costs`, and ``served_ms_by_len``
        (``candidate_timing.served_ms``: as served, on a quiet host only): what :func:`choose` compares
        (``choice.speeds_by_len``). Not again for trials that were all in the last re-timing (nothing to add).
        Trials are first timed one after another, minutes apart; on a shared VM the host's speed drifts by more
        than the 5 % that separates candidates (measured: the same α=0.7 MiniLM graph 6.3 and 7.8 ms in two runs).
        Interleaving exposes all candidates to the same drift, and process CPU time (ONNX Runtime spinning off)
        leaves out the time a call waited for a core that another process held."""
        timed = to_retime(self.trials, also)
        if len(timed) < 2 or set(timed) <= self._timed_together:
            return
        costs = timed_costs([self.predictor(self.models[i], TIMING_THREADS) for i in timed], self.latency_text, rounds)
        timing = served_ms([self.predictor(self.models[i], served=True) for i in timed], self.latency_text,
                           SERVED_ROUNDS)
        self.served_clock = timing.record()
        served = timing.values or [{} for _ in timed]  # [] on a busy host: CPU time at every length
        for t, w, i in zip(costs, served, timed):
            self.trials[i] = replace(self.trials[i], cpu_ms=t["cpu_ms"], cpu_ms_by_len=t["cpu_ms_by_len"],
                                     cpu_rounds_ms=t["cpu_rounds_ms"], served_ms_by_len=w)
        self._timed_together = set(timed)
        lens = ", ".join(map(str, served[0]))
        where = (f"served latency at {lens} tokens" if lens else
                 f"no served latency: other processes kept {timing.others_cores:.2f} CPUs busy"
                 if timing.others_cores is not None else "no served latency: other processes' load unknown (no /proc/stat)")
        where += ", SCHED_RR" if timing.realtime else ""
        self.progress.info(f"re-timed in {rounds} interleaved rounds (CPU time, {TIMING_THREADS} thread; {where}): "
                           + ", ".join(f"{self.trials[i].label} {self.trials[i].cpu_ms:.2f} ms CPU"
                                       + "".join(f", {v:.2f} ms" for v in w.values()) for w, i in zip(served, timed)))

    def ratio(self, i: int, j: int, rounds: int = TRIAL_ROUNDS) -> float:
        """Trial ``j``'s CPU time per call over trial ``i``'s at the sequence length where it is least slower (so
        r > 1: ``j`` is ≥ r× slower at every length), timed now in ``rounds`` interleaved rounds on
        ``TIMING_THREADS``: two trials timed minutes apart differ by more than the 10 % this decides (measured,
        loaded host: one fallback 11.40 ms alone and 10.06 ms interleaved, its base 10.04 ms)."""
        cost_i, cost_j = (t["cpu_ms_by_len"] for t in timed_costs(
            [self.predictor(self.models[k], TIMING_THREADS) for k in (i, j)], self.latency_text, rounds))
        return least_ratio(cost_j, cost_i)

    def fallback_phase(self, why: str, base: int, budget: int) -> dict:
        """Phase 2 from trial ``base``: its k most sensitive nodes in fp32 for growing k (one INC loop), within
        what is left of ``budget``; ``why`` comes from :func:`fallback_plan`. After a narrow pass the loop aims
        at ``SAFETY_MARGIN`` × τ and stops once fallbacks are too slow to ship instead.
        Returns the manifest's ``sensitivity`` record (or why it was skipped)."""
        best = self.trials[base]
        narrow = best.passed
        used = len(self.trials) - 1
        left = budget - used
        if left <= 0:
            record = skipped_fallback(why, budget, used + 1, DEFAULT_MAX_TRIALS)
            self.progress.warn(f"{why}; {record['skipped']}.")
            return record
        config = QuantConfig(**{k: v for k, v in best.config.items() if k in QuantConfig.model_fields})
        self.progress.info(f"{why}: measuring per-node sensitivity of {best.label} …")
        measured = self.sensitivity(config, self.models[base])
        order, kept = measured["order"], tuple(config.nodes_to_exclude)
        fallbacks = [config.model_copy(update={"nodes_to_exclude": kept + tuple(order[:k])})
                     for k in FALLBACK_COUNTS if k < len(order)]
        self.inc_loop(fallbacks, left, "fp32 fallback", target_loss=SAFETY_MARGIN * self.tolerance if narrow else None,
                      slower_than=(base, 1 + FIDELITY_TRADE[0]) if narrow else None)
        if any(t.phase == "fp32 fallback" and t.passed for t in self.trials):
            self.retime()
        return fallback_record(best.label, why, kept, measured)

    def sensitivity(self, config: QuantConfig, quantized: OnnxModel) -> dict:
        """Per node of ``config``'s model ``quantized``: the output NMSE and (classifiers) the label flip rate with
        only that node quantized, on ``SENSITIVITY_ITEMS`` of the eval data (:func:`multiverse.sensitivity.
        node_sensitivity`: ``{"order", "output_nmse", "flip_rate"}``, ``order`` most sensitive first)."""
        from .sensitivity import node_sensitivity

        n = SENSITIVITY_ITEMS
        if self.data.groups:  # query groups (ranking): count (query, passage) pairs, not queries
            n = max(4, n // max(1, len(self.data.groups[0].passages)))
        items = model_inputs(subset(self.data, n))
        fp32 = self.predictor(self.fused)
        base = self._base_graph(config.smooth_alpha)
        nodes = [n for n in quantizable_nodes(base, config) if n not in config.nodes_to_exclude]
        return node_sensitivity(fp32, base, quantized, nodes, [fp32.encode(items[i:i + 16]) for i in range(0, len(items), 16)],
                                self.reference.values, task=self.ckpt.task, threads=self.threads, session=self.session,
                                workdir=self.workdir / "single-node", progress=self.progress)


def tune(ckpt, fused: OnnxModel, target: Target, data: EvalSet, tolerance: float, workdir: str | Path, *,
         quantize: bool = True, max_trials: int | None = None, threads: int | None = None, precision: str = "auto",
         configs: Sequence[QuantConfig] | None = None, progress: Progress | None = None,
         exported: OnnxModel | None = None, runtime: str = "auto",
         background: BackgroundBuilds | None = None) -> tuple[OnnxModel, TuningReport]:
    """Validate and time the fp32 graph and the int8 candidates; return the model to ship and the report.

    Args:
        configs: explicit ONNX Runtime int8 candidates (skips the phases; still one INC loop).
        precision: ``auto`` (latency-aware), ``int8`` or ``fp32``; see :func:`choose`.
        max_trials: int8 trial budget (default 12), shared by the phases in order (ONNX Runtime configurations,
            OpenVINO (bf16 variants included), fp32 fallback); sensitivity measurements are not counted.
        exported: the exported (unfused) fp32 graph, which OpenVINO candidates quantize.
        runtime: ``auto`` (ONNX Runtime and, when openvino/nncf are installed and ``exported`` is given, OpenVINO
            candidates), ``onnxruntime`` or ``openvino`` (only OpenVINO ones may ship; ``ovtuning.runtimes``).
        background: the run's worker process (``multiverse.background``; default: one of its own), holding the
            PyTorch reference when ``background.start_reference`` was called with ``by_length(data)``.
    Returns ``(model, report)``: the fastest passing candidate; when none passes, ``report.chosen`` is None and the
    most accurate candidate's model is returned (the pipeline's gate decides).
    Raises UsageError / MissingExtraError for a runtime that cannot be tried (before any work).
    """
    from .ovtuning import (openvino_bf16, openvino_configs, openvino_reason, openvino_rest, openvino_source,
                           openvino_static, runtimes)

    progress = progress or Progress()
    use_ort, use_ov, note = runtimes(runtime, precision)
    if use_ov and exported is None:
        use_ov, note = False, "OpenVINO candidates skipped (no exported graph given)"
    if runtime == "openvino":
        precision = "int8"  # the fp32 trial is the ONNX Runtime reference: it cannot ship as an OpenVINO bundle
    (workdir := Path(workdir)).mkdir(parents=True, exist_ok=True)
    budget = DEFAULT_MAX_TRIALS if max_trials is None else max_trials
    int8 = quantize and precision != "fp32"
    first_configs = ((configs or phase1_configs(target, head_nodes(fused, target.quantization)))
                     if use_ort and int8 else [])
    sensitivity: dict = {}
    with nullcontext(background) if background else BackgroundBuilds() as background:
        if use_ov and configs is None and int8:
            exported = openvino_source(ckpt, exported, workdir / "openvino-fp32", progress)
        tuner = _Tuner(ckpt, fused, target, data, tolerance, workdir, threads, progress, exported, background)
        ov_configs = openvino_configs(exported) if use_ov and configs is None and int8 else []
        # a budget of one trial goes to ONNX Runtime, whose per-node fallback then says how many trials it needs
        static_first = bool(ov_configs) and (budget > 1 or not use_ort)
        if static_first and budget > 0:  # built before fp32's trial needs the reference the worker may still compute
            if first_configs:  # NNCF's Python passes leave a core idle: phase 1's first is built there
                start_quantize(background, fused, workdir, first_configs[0])
            tuner.build_early(ov_configs[0])
        tuner.run("fp32 (fused)", fused, None, "baseline")
        if int8:
            if note:
                progress.info(note)
            anchor = openvino_static(tuner, ov_configs, budget) if static_first else None
            if anchor is not None and budget - (len(tuner.trials) - 1) > len(first_configs) + 1:
                # Static passed with margin, so openvino_rest builds nothing more: its bf16 twin runs now and phase 1's
                # re-timing (anchor and first ONNX Runtime candidate) takes it in, one interleaved re-timing instead of
                # two. Only where the budget leaves room for phase 1 and one fallback after it.
                openvino_bf16(tuner, budget)
            if use_ort:
                # All phase-1 candidates run: they cost the same to run, so which one ships is decided by accuracy
                # (see choose), not by which passed first on a finite eval set; unless the first's variants could not
                # ship next to the anchor (tuner.phase1). Phase 1 leaves the budget's last trial to phase 2 when
                # nothing has passed with margin by then: a fallback of the best candidate is likelier to pass than
                # one more smoothing strength.
                tuner.phase1(first_configs, budget, anchor, precision=precision,
                             keep_last_for=None if configs else lambda: fallback_plan(tuner.trials, precision) is not None)
            if ov_configs:
                anchor = anchor if static_first else openvino_static(tuner, ov_configs, budget)
                openvino_rest(tuner, ov_configs, budget, anchor)
                openvino_bf16(tuner, budget)
            tuner.retime()
            plan = fallback_plan(tuner.trials, precision, runtime) if configs is None and use_ort else None
            if plan:
                sensitivity = tuner.fallback_phase(*plan, budget)
    chosen, reason = choose(tuner.trials, precision, runtime)
    if runtime == "openvino" and chosen is not None:
        reason = openvino_reason(tuner.trials, chosen, reason, progress)
    if sensitivity.get("skipped"):
        reason = f"{reason}; {sensitivity['why']}, and the {sensitivity['skipped']}"
    model = tuner.models[chosen if chosen is not None else min(
        (i for i, t in enumerate(tuner.trials) if t.validation), key=lambda i: tuner.trials[i].validation.gate_loss)]
    latency = {"seq_lens": list(LATENCY_SEQ_LENS), "batch": LATENCY_BATCH, "threads": threads or physical_cores(),
               "compared": f"process CPU time per call at each of seq_lens (cpu_ms_by_len; on {TIMING_THREADS} thread "
                           "after re-timing, ONNX Runtime spinning off), but the served latency (served_ms_by_len: minimum "
                           f"wall ms per call as served) at {list(SERVED_SEQ_LENS)} tokens, interleaved rounds, "
                           "worst-length ratio to the fastest passing candidate (choice.cost_ms)",
               "served_clock": tuner.served_clock}
    return model, TuningReport(tuple(tuner.trials), chosen, reason, latency, sensitivity=sensitivity)
