"""Phase 2 of the tuner, the per-node fp32 fallback (``tuning._Tuner.fallback_phase``): whether it runs after phase 1,
and the manifest's ``sensitivity`` record of it. Pure functions over :class:`choice.Trial` records, like ``choice.py``."""

from __future__ import annotations

from collections.abc import Sequence

from .choice import SAFETY_MARGIN, Trial, choose, passed_with_margin, trial_runtime


def fallback_plan(trials: Sequence[Trial], precision: str = "auto", runtime: str = "auto") -> tuple[str, int] | None:
    """Whether phase 2 (per-node fp32 fallback) should run after phase 1's ``trials``: ``(why, base)`` with
    ``base`` the index of the trial whose configuration the fallbacks extend, or None.

    It runs when no int8 candidate passed (base: the lowest gate loss), or when the candidate
    :func:`choose` would ship is int8 and passed narrowly, with gate loss above ``SAFETY_MARGIN`` × the
    tolerance it was validated at (base: that candidate; see the constant for the measurement behind it).
    The fallback keeps ONNX Runtime nodes in fp32, so its base is always an ONNX Runtime trial.
    """
    int8 = [i for i, t in enumerate(trials) if t.config is not None and t.validation is not None
            and trial_runtime(t.config) == "onnxruntime"]
    if not int8:
        return None
    if not any(trials[i].passed for i in int8):
        return "no int8 candidate passed", min(int8, key=lambda i: trials[i].validation.gate_loss)
    chosen, _ = choose(trials, precision, runtime)
    if chosen is not None and chosen in int8 and not passed_with_margin(trials[chosen]):
        return (f"{trials[chosen].label} passed narrowly (gate loss {trials[chosen].validation.gate_loss:.2g} > "
                f"{SAFETY_MARGIN:g} × tolerance)"), chosen
    return None


def skipped_fallback(why: str, budget: int, need: int, default: int) -> dict:
    """The manifest's ``sensitivity`` record when phase 2 (per-node fp32 fallback) should run (``why``, from
    :func:`fallback_plan`) but the trial budget was used up: it needs ``need`` trials (``default``: the tuner's)."""
    skipped = (f"per-node fp32 fallback was skipped: the trial budget ({budget}) was used up by the configuration "
               f"phase; it needs at least {need} trials (--max-trials {need} or more, default {default}; each fallback "
               "trial keeps more nodes in fp32)")
    return {"skipped": skipped, "why": why, "trials_needed": need}


def fallback_record(base: str, why: str, kept: Sequence[str], measured: dict) -> dict:
    """The manifest's ``sensitivity`` record of phase 2 from trial ``base`` (label): ``why`` it ran, the nodes ``kept``
    in fp32 by the base configuration, and the per-node sensitivity ``measured`` (``{"order", "output_nmse",
    "flip_rate"}`` of ``sensitivity.node_sensitivity``), to 3 significant digits."""
    order, flips = measured["order"], measured["flip_rate"]
    return {"base": base, "why": why, "kept_fp32": list(kept),
            "metric": ("label flip rate over (eval margin, node logit error) pairs, node quantized alone, squared "
                       "per MAC per token; ties by output NMSE") if flips else "output NMSE, node quantized alone",
            "node_output_nmse": {k: float(f"{measured['output_nmse'][k]:.3g}") for k in order},
            **({"node_flip_rate": {k: float(f"{flips[k]:.3g}") for k in order}} if flips else {})}
