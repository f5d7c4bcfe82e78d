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
2. OpenVINO static int8 (``ovtuning``), when OpenVINO is tried: the fastest kind where it passes;
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
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from .candidate_timing import (LATENCY_BATCH, LATENCY_SEQ_LENS, RETIME_ROUNDS, SERVED_ROUNDS, SERVED_SEQ_LENS, TRIAL_ROUNDS,
                               measure, served_ms, timed_costs)
from .choice import (FIDELITY_TRADE, LATENCY_TIE, SAFETY_MARGIN, Trial, TuningReport, choose, cost_ms, fallback_plan,
                     speedup_text)
from .errors import MultiverseError
from .evaldata import EvalSet, builtin, subset
from .export import OnnxModel
from .graphnodes import head_nodes, output_nmse, quantizable_nodes  # noqa: F401 (output_nmse re-exported)
from .incconfig import to_inc
from .inference import Predictor
from .ovsession import precision_config
from .progress import Progress
from .quantize import quantize as quantize_model
from .runtime import SPINNING, physical_cores
from .smooth import calibrate, smooth
from .targets import QuantConfig, Target
from .tasks import get_task
from .validate import model_inputs, reference_outputs, validate

# ONNX Runtime's idle intra-op threads spin by default, burning CPU time while they wait: the tuner's sessions
# turn it off so that process CPU time measures a candidate's work (see multiverse.timing.interleaved).
NO_SPINNING = {SPINNING: "0"}
DEFAULT_MAX_TRIALS = 12
SMOOTH_ALPHAS = (0.7, 0.6, 0.8)  # best first on MiniLM (measured: 0.7 > 0.6 > 0.8 > 0.5 on min cosine)
SENSITIVITY_ITEMS = 64
FALLBACK_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # k most sensitive nodes kept in fp32, tried in order
CALIBRATION_ITEMS = 300
# choose() ships a passing candidate at most FIDELITY_TRADE[0] slower than the fastest, and a narrow pass gives way
# to one at most FIDELITY_TRADE[0] slower than it: nothing over 1.1² = 1.21x the fastest passing cost can ship; 5 %
# more for the noise of one interleaved comparison (LATENCY_TIE).
DOMINATED = (1 + FIDELITY_TRADE[0]) ** 2 * (1 + LATENCY_TIE)
# retime/ratio compare CPU time per call on 1 thread: on 2, OpenVINO's oneTBB workers wait actively for a preempted
# peer, so its CPU time grows with other load, ONNX Runtime's (spinning off) not (benchmarks/results/runtime_noise.md).
TIMING_THREADS = 1
# Not re-timed: passing int8 trials over RETIME_SPAN x the cheapest's CPU time (one timing is within ~25 %: 6.3/7.8 ms)
RETIME_SPAN = 2.0


def by_length(data: EvalSet) -> EvalSet:
    """``data`` with its texts (and labels) sorted by length in characters, for the reference and the candidates:
    validation runs right-padded batches of 16; the built-in texts padded to 47,888 tokens in file order against
    12,272 sorted (8,037 real). Only where every gated number is a mean, a min or a count over examples: ranking
    groups and labelled embeddings (whose linear probe splits even/odd positions) keep their order."""
    if data.groups or (get_task(data.task).sentence_embeddings and data.labels is not None):
        return data
    order = sorted(range(len(data.texts)), key=lambda i: len(data.texts[i]))
    labels = None if data.labels is None else tuple(data.labels[i] for i in order)
    return replace(data, texts=tuple(data.texts[i] for i in order), labels=labels)


def phase1_configs(target: Target, head: Sequence[str] = ()) -> list[QuantConfig]:
    """The target's configuration, then the same with smoothing strengths α; ``head`` nodes stay fp32 in all.

    Op types (Attention, EmbedLayerNormalization, Gather) are varied node by node in phase 2.
    Targets without VNNI already use u8 weights (``targets.py``); ``reduce_range`` is tried only there.
    """
    base = target.quantization.model_copy(update={"nodes_to_exclude": tuple(head)}) if head else target.quantization
    configs = [base] + [base.model_copy(update={"smooth_alpha": a}) for a in SMOOTH_ALPHAS]
    if not target.has_vnni and target.isa.arch == "x86_64":
        configs.append(base.model_copy(update={"reduce_range": True, "weight_type": "int8"}))
    return configs


class _Tuner:
    """State of one tuning run: the reference outputs, smoothed graphs and the trials so far."""

    def __init__(self, ckpt, fused: OnnxModel, target: Target, data: EvalSet, tolerance: float, workdir: Path,
                 threads: int | None, progress: Progress, exported: OnnxModel | None = None):
        self.ckpt, self.fused, self.target, self.data, self.exported = ckpt, fused, target, data, exported
        self.validation_data = by_length(data)
        self.tolerance, self.workdir, self.threads, self.progress = tolerance, workdir, threads, progress
        self.session = {**target.session, **NO_SPINNING}
        progress.activity(f"computing the PyTorch reference on {len(data)} examples")
        self.reference = reference_outputs(ckpt, self.validation_data, fused.model_dir, threads)
        self.latency_text = " ".join(t if isinstance(t, str) else t[1] for t in model_inputs(data))
        self.trials: list[Trial] = []
        self.models: list[OnnxModel] = []
        self._amax, self._built, self._calibration = None, 0, None  # calibration: list[dict] once built
        self._smoothed: dict[float, OnnxModel] = {}

    def _base_graph(self, alpha: float | None) -> OnnxModel:
        if alpha is None:
            return self.fused
        if alpha not in self._smoothed:
            if self._amax is None:
                calib = model_inputs(subset(builtin(self.ckpt.task), CALIBRATION_ITEMS))
                self._amax = calibrate(self.fused, self.ckpt.task, calib)
            self._smoothed[alpha] = smooth(self.fused, self.workdir / f"smooth-{alpha:g}", self._amax, alpha)
        return self._smoothed[alpha]

    def build(self, config) -> OnnxModel:
        """The graph of one candidate: ORT dynamic int8 of the fused graph (``QuantConfig``), or NNCF static int8
        of the exported graph as an OpenVINO IR (``OvInt8Config``, calibrated on ``ovtuning.calibration_set``)."""
        self._built += 1
        self.progress.activity(f"quantizing {config.label()}")
        if isinstance(config, QuantConfig):
            return quantize_model(self._base_graph(config.smooth_alpha), self.workdir / f"q{self._built}", config)
        from .ovquant import quantize_ov
        from .ovtuning import calibration_feeds

        if self._calibration is None:
            self._calibration = calibration_feeds(self.predictor(self.fused), self.data)
        return quantize_ov(self.exported, self.workdir / f"ov{self._built}", config, self._calibration)

    def predictor(self, model: OnnxModel, threads: int | None = None, served: bool = False) -> Predictor:
        """``model`` opened as the tuner runs it: ``threads`` (default: the run's) intra-op threads, spinning off
        (``served``: as ``serve`` runs it, spinning as shipped), an IR at its recorded inference precision."""
        return Predictor(model.path, model.model_dir, self.ckpt.task, threads=threads or self.threads,
                         session_config={**(self.target.session if served else self.session),
                                         **precision_config(model.quantization)})

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
               keep_last_for: Callable[[], bool] | None = None) -> None:
        """Phase 1 (one INC loop, every configuration run) within what is left of ``budget``. With an ``anchor``
        (a trial that passed with margin, OpenVINO static int8), the first configuration runs alone and the rest
        only if its CPU time, timed interleaved with the anchor's, is at most ``DOMINATED`` × the anchor's: the
        rest add SmoothQuant's Mul nodes to the same int8 GEMMs and cost at least as much (measured, re-timed
        interleaved in two builds of a DistilBERT-base-shaped classifier: α=0.6-0.8 at 0.99-1.03x the unsmoothed
        candidate's CPU time), and :func:`choose` cannot ship a candidate that much slower than a passing one."""
        left = budget - (len(self.trials) - 1)
        if anchor is None or len(configs) < 2 or left < 2:
            self.inc_loop(configs, left, "configurations", stop_at_first=False, keep_last_for=keep_last_for)
            return
        first = len(self.trials)
        self.inc_loop(configs[:1], left, "configurations", stop_at_first=False)
        if len(self.trials) > first and self.trials[first].validation is not None:
            ratio = self.ratio(anchor, first)
            if ratio > DOMINATED:
                self.progress.info(f"not trying {len(configs) - 1} smoothed variant(s) of {self.trials[first].label}: "
                                   f"it takes {ratio:.2f}× the CPU time of {self.trials[anchor].label} (> "
                                   f"{DOMINATED:.2f}×), too slow to ship beside it, and they cost at least as much")
                return
        self.inc_loop(configs[1:], budget - (len(self.trials) - 1), "configurations", stop_at_first=False,
                      keep_last_for=keep_last_for)

    def retime(self, rounds: int = RETIME_ROUNDS) -> None:
        """Re-time the passing trials (but those over ``RETIME_SPAN`` × the cheapest's CPU time) in ``rounds``
        interleaved rounds (A B C, B C A, …) on ``TIMING_THREADS`` thread; set ``cpu_ms_by_len`` and ``cpu_ms`` from
        :func:`multiverse.timing.relative_costs`, and ``served_ms_by_len`` (``candidate_timing.served_ms``: as served,
        on a quiet host only): what :func:`choose` compares (``choice.speeds_by_len``).

        Trials are first timed one after another, minutes apart; on a shared VM the host's speed drifts by more
        than the 5 % that separates candidates (measured: the same α=0.7 MiniLM graph 6.3 and 7.8 ms in two runs).
        Interleaving exposes all candidates to the same drift, and process CPU time (ONNX Runtime spinning off)
        leaves out the time a call waited for a core that another process held."""
        passing = [i for i, t in enumerate(self.trials) if t.passed]
        cheapest = min((self.trials[i].cpu_ms for i in passing if self.trials[i].cpu_ms), default=None)
        if cheapest:  # far slower than the cheapest: no timing noise makes it the fastest (fp32 stays: the reason's speedup)
            passing = [i for i in passing if i == 0 or not self.trials[i].cpu_ms
                       or self.trials[i].cpu_ms <= RETIME_SPAN * cheapest]
        if len(passing) < 2:
            return
        timed = timed_costs([self.predictor(self.models[i], TIMING_THREADS) for i in passing], self.latency_text,
                            rounds)
        served = served_ms([self.predictor(self.models[i], served=True) for i in passing], self.latency_text,
                           SERVED_ROUNDS) or [{} for _ in passing]  # [] on a busy host: CPU time at every length
        for t, w, i in zip(timed, served, passing):
            self.trials[i] = replace(self.trials[i], cpu_ms=t["cpu_ms"], cpu_ms_by_len=t["cpu_ms_by_len"],
                                     cpu_rounds_ms=t["cpu_rounds_ms"], served_ms_by_len=w)
        lens = ", ".join(map(str, served[0]))
        where = f"served latency at {lens} tokens" if lens else "no served latency: other processes kept the CPUs busy"
        self.progress.info(f"re-timed in {rounds} interleaved rounds (CPU time, {TIMING_THREADS} thread; {where}): "
                           + ", ".join(f"{self.trials[i].label} {self.trials[i].cpu_ms:.2f} ms CPU"
                                       + "".join(f", {v:.2f} ms" for v in w.values()) for w, i in zip(served, passing)))

    def ratio(self, i: int, j: int, rounds: int = TRIAL_ROUNDS) -> float:
        """Trial ``j``'s CPU time per call over trial ``i``'s at the sequence length where it is least slower (so
        r > 1: ``j`` is ≥ r× slower at every length), timed now in ``rounds`` interleaved rounds on
        ``TIMING_THREADS``: two trials timed minutes apart differ by more than the 10 % this decides (measured,
        loaded host: one fallback 11.40 ms alone and 10.06 ms interleaved, its base 10.04 ms)."""
        cost_i, cost_j = (t["cpu_ms_by_len"] for t in timed_costs(
            [self.predictor(self.models[k], TIMING_THREADS) for k in (i, j)], self.latency_text, rounds))
        return min(cost_j[n] / cost_i[n] for n in cost_i)

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
            need = used + 1
            skipped = (f"per-node fp32 fallback was skipped: the trial budget ({budget}) was used up by the "
                       f"configuration phase; it needs at least {need} trials (--max-trials {need} or more, default "
                       f"{DEFAULT_MAX_TRIALS}; each fallback trial keeps more nodes in fp32)")
            self.progress.warn(f"{why}; {skipped}.")
            return {"skipped": skipped, "why": why, "trials_needed": need}
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
        flips = measured["flip_rate"]
        return {"base": best.label, "why": why, "kept_fp32": list(kept),
                "metric": ("label flip rate over (eval margin, node logit error) pairs, node quantized alone, squared "
                           "per MAC per token; ties by output NMSE") if flips else "output NMSE, node quantized alone",
                "node_output_nmse": {k: float(f"{measured['output_nmse'][k]:.3g}") for k in order},
                **({"node_flip_rate": {k: float(f"{flips[k]:.3g}") for k in order}} if flips else {})}

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
         exported: OnnxModel | None = None, runtime: str = "auto") -> tuple[OnnxModel, TuningReport]:
    """Validate and time the fp32 graph and the int8 candidates; return the model to ship and the report.

    Args:
        configs: explicit ONNX Runtime int8 candidates (skips the phases; still one INC loop).
        precision: ``auto`` (latency-aware), ``int8`` or ``fp32``; see :func:`choose`.
        max_trials: int8 trial budget (default 12), shared by the phases in order (ONNX Runtime configurations,
            OpenVINO (bf16 variants included), fp32 fallback); sensitivity measurements are not counted.
        exported: the exported (unfused) fp32 graph, which OpenVINO candidates quantize.
        runtime: ``auto`` (ONNX Runtime and, when openvino/nncf are installed and ``exported`` is given, OpenVINO
            candidates), ``onnxruntime`` or ``openvino`` (only OpenVINO ones may ship; ``ovtuning.runtimes``).
    Returns ``(model, report)``: the fastest passing candidate; when none passes, ``report.chosen`` is None and the
    most accurate candidate's model is returned (the pipeline's gate decides).
    Raises UsageError / MissingExtraError for a runtime that cannot be tried (before any work).
    """
    from .ovtuning import (
        openvino_bf16,
        openvino_configs,
        openvino_rest,
        openvino_source,
        openvino_static,
        runtimes,
    )

    progress = progress or Progress()
    use_ort, use_ov, note = runtimes(runtime, precision)
    if use_ov and exported is None:
        use_ov, note = False, "OpenVINO candidates skipped (no exported graph given)"
    if runtime == "openvino":
        precision = "int8"  # the fp32 trial is the ONNX Runtime reference: it cannot ship as an OpenVINO bundle
    (workdir := Path(workdir)).mkdir(parents=True, exist_ok=True)
    if use_ov and configs is None and quantize and precision != "fp32":
        exported = openvino_source(ckpt, exported, workdir / "openvino-fp32", progress)
    tuner = _Tuner(ckpt, fused, target, data, tolerance, workdir, threads, progress, exported)
    tuner.run("fp32 (fused)", fused, None, "baseline")
    budget = DEFAULT_MAX_TRIALS if max_trials is None else max_trials
    sensitivity: dict = {}
    if quantize and precision != "fp32":
        if note:
            progress.info(note)
        ov_configs = openvino_configs(exported) if use_ov and configs is None else []
        # a budget of one trial goes to ONNX Runtime, whose per-node fallback then says how many trials it needs
        static_first = bool(ov_configs) and (budget > 1 or not use_ort)
        anchor = openvino_static(tuner, ov_configs, budget) if static_first else None
        if use_ort:
            head = head_nodes(fused, target.quantization)
            # All phase-1 candidates run: they cost the same to run, so which one ships is decided by accuracy
            # (see choose), not by which passed first on a finite eval set; unless the first, which the others
            # cost at least as much as, is too slow to ship next to the anchor (tuner.phase1). Phase 1 leaves
            # the budget's last trial to phase 2 when nothing has passed with margin by then: a fallback of the
            # best candidate is likelier to pass than one more smoothing strength.
            tuner.phase1(configs or phase1_configs(target, head), budget, anchor,
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
        reason = reason.replace("int8 requested: ", "--runtime openvino: ", 1)
        if (cost := cost_ms(tuner.trials, [0, chosen]))[chosen] > cost[0]:
            slower = (f"it takes {speedup_text(tuner.trials, chosen, 0)} the CPU time of the fused fp32 ONNX Runtime "
                      "graph on this host; --runtime auto would ship the faster one")
            reason = f"{reason}; {slower}"
            progress.warn(f"--runtime openvino: {tuner.trials[chosen].label} ships although {slower}")
    if sensitivity.get("skipped"):
        reason = f"{reason}; {sensitivity['why']}, and the {sensitivity['skipped']}"
    model = tuner.models[chosen if chosen is not None else min(
        (i for i, t in enumerate(tuner.trials) if t.validation), key=lambda i: tuner.trials[i].validation.gate_loss)]
    latency = {"seq_lens": list(LATENCY_SEQ_LENS), "batch": LATENCY_BATCH, "threads": threads or physical_cores(),
               "compared": f"process CPU time per call at each of seq_lens (cpu_ms_by_len; on {TIMING_THREADS} thread "
                           "after re-timing, ONNX Runtime spinning off), but the served latency (served_ms_by_len: minimum "
                           f"wall ms per call as served) at {list(SERVED_SEQ_LENS)} tokens, interleaved rounds, "
                           "worst-length ratio to the fastest passing candidate (choice.cost_ms)"}
    return model, TuningReport(tuple(tuner.trials), chosen, reason, latency, sensitivity=sensitivity)
