"""Choose what to ship: the fastest candidate that passes the accuracy gate.

Every candidate (int8 configurations, and the fused fp32 graph) is validated against the
PyTorch reference and timed end to end on this host (sequence length 128, batch 1, the
target's thread count). Int8 is never shipped because it is int8 (PITFALLS.md, Speed):
fp32 is shipped, and the report says so, when no int8 candidate is both accurate and faster.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import MultiverseError
from .export import OnnxModel
from .inference import Predictor
from .progress import Progress
from .quantize import quantize as quantize_model
from .runtime import physical_cores
from .targets import QuantConfig, Target
from .validate import ValidationReport, reference_outputs, validate

LATENCY_SEQ_LEN = 128
LATENCY_BATCH = 1


@dataclass(frozen=True)
class Trial:
    """One candidate: its quantization config (None = fp32), validation and p50 latency (ms)."""

    label: str
    config: dict | None
    validation: ValidationReport | None
    p50_ms: float | None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.validation is not None and self.validation.passed

    def to_dict(self) -> dict:
        d = asdict(self)
        d["validation"] = self.validation.to_dict() if self.validation else None
        return d


@dataclass(frozen=True)
class TuningReport:
    """All trials, which one was chosen (index into ``trials``) and why."""

    trials: tuple[Trial, ...]
    chosen: int | None
    reason: str
    latency: dict = field(default_factory=dict)
    strategy: str = "target default"

    @property
    def chosen_trial(self) -> Trial | None:
        return None if self.chosen is None else self.trials[self.chosen]

    @property
    def chosen_validation(self) -> ValidationReport | None:
        t = self.chosen_trial
        return t.validation if t else (self.best_trial().validation if self.best_trial() else None)

    def best_trial(self) -> Trial | None:
        """The most accurate validated trial (lowest relative loss)."""
        done = [t for t in self.trials if t.validation is not None]
        return min(done, key=lambda t: t.validation.relative_loss) if done else None

    def summary(self) -> str:
        t = self.chosen_trial
        if t is None:
            b = self.best_trial()
            return f"no candidate passed; best {b.label}: {b.validation.metric} {b.validation.optimised:.4f}" if b else "no candidate"
        v = t.validation
        return (f"chose {t.label}: {v.metric} {v.optimised:.4f} vs {v.reference:.4f} "
                f"(loss {v.relative_loss:.4f}), p50 {t.p50_ms:.2f} ms; {self.reason}")

    def to_dict(self) -> dict:
        return {"strategy": self.strategy, "latency": self.latency, "chosen": self.chosen, "reason": self.reason,
                "trials": [t.to_dict() for t in self.trials]}


def measure_p50(predictor: Predictor, text: str, *, seq_len: int = LATENCY_SEQ_LEN, batch: int = LATENCY_BATCH,
                min_runs: int = 30, min_seconds: float = 1.0, max_seconds: float = 4.0) -> float:
    """Median end-to-end latency (ms, ``time.perf_counter``) of ``predictor.predict`` on ``batch`` copies of
    ``text`` cut to ``seq_len`` tokens, after 5 warm-up runs; runs until both ``min_runs`` and ``min_seconds``."""
    cut = predictor.text_of_length(text, min(seq_len, predictor.max_length))
    inputs = [cut] * batch if predictor.task != "ranking" else [(cut[: len(cut) // 3], cut)] * batch
    for _ in range(5):
        predictor.predict(inputs)
    times = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        predictor.predict(inputs)
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if (len(times) >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            break
    return float(np.median(times) * 1e3)


def candidates(target: Target) -> list[QuantConfig]:
    """Int8 configurations to try, the target's own first."""
    return [target.quantization]


def _latency_text(data) -> str:
    texts = list(data.texts) or [p for g in data.groups for p in g.passages]
    return " ".join(texts)


def tune(ckpt, fused: OnnxModel, target: Target, data, tolerance: float, workdir: str | Path, *,
         quantize: bool = True, max_trials: int | None = None, threads: int | None = None,
         configs: Sequence[QuantConfig] | None = None, progress: Progress | None = None) -> tuple[OnnxModel, TuningReport]:
    """Validate and time each candidate; return the model to ship and the report.

    The chosen model is the fastest passing candidate; ties and "int8 not faster" go to fp32.
    When nothing passes, ``chosen`` is None and the most accurate candidate's model is returned
    (the pipeline's gate decides what to do).
    """
    progress = progress or Progress()
    workdir = Path(workdir)
    reference = reference_outputs(ckpt, data, fused.model_dir, threads)
    text = _latency_text(data)
    session = dict(target.session)
    models: list[OnnxModel] = []
    trials: list[Trial] = []

    def run(label: str, model: OnnxModel, config: dict | None) -> None:
        predictor = Predictor(model.path, model.model_dir, ckpt.task, threads=threads, session_config=session)
        report = validate(ckpt, predictor, data, tolerance, reference)
        p50 = measure_p50(predictor, text)
        trials.append(Trial(label, config, report, p50))
        models.append(model)
        progress.info(f"{label:<34} {report.metric} {report.optimised:.4f} (loss {report.relative_loss:+.4f}) "
                      f"{'pass' if report.passed else 'FAIL'}  p50 {p50:.2f} ms")

    run("fp32 (fused)", fused, None)
    if quantize:
        todo = list(configs or candidates(target))[: max_trials or None]
        for i, cfg in enumerate(todo):
            try:
                q = quantize_model(fused, workdir / f"trial-{i}", cfg)
            except MultiverseError as exc:
                trials.append(Trial(cfg.label(), cfg.model_dump(mode="json"), None, None, str(exc)))
                models.append(fused)
                progress.warn(f"{cfg.label()}: {exc}")
                continue
            run(cfg.label(), q, q.quantization)
    chosen, reason = choose(trials)
    if chosen is None:
        best = min((i for i, t in enumerate(trials) if t.validation), key=lambda i: trials[i].validation.relative_loss)
        model = models[best]
    else:
        model = models[chosen]
    return model, TuningReport(tuple(trials), chosen, reason,
                               {"seq_len": LATENCY_SEQ_LEN, "batch": LATENCY_BATCH, "threads": threads or physical_cores()})


def choose(trials: Sequence[Trial]) -> tuple[int | None, str]:
    """Index of the fastest passing trial (fp32 is trial 0) and the reason, or (None, reason)."""
    passing = [i for i, t in enumerate(trials) if t.passed and t.p50_ms is not None]
    if not passing:
        return None, "no candidate met the tolerance"
    best = min(passing, key=lambda i: trials[i].p50_ms)
    if trials[best].config is None:
        int8_pass = [i for i in passing if trials[i].config is not None]
        if int8_pass:
            return best, "fp32 shipped: the passing int8 candidates were not faster than fp32 on this host"
        if any(t.config is not None for t in trials):
            return best, "fp32 shipped: no int8 candidate met the tolerance"
        return best, "fp32 shipped: quantization disabled"
    speedup = trials[0].p50_ms / trials[best].p50_ms if trials[0].p50_ms else float("nan")
    return best, f"fastest passing candidate, {speedup:.2f}× fp32"
