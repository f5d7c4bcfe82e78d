"""OpenVINO + NNCF int8 as the tuner's second runtime (``optimize --runtime auto|onnxruntime|openvino``).

The candidates are ``multiverse.ovquant.OvInt8Config``: NNCF int8 of the fp32 model as OpenVINO's PyTorch
frontend converts it (:func:`openvino_source`; the *exported*, unfused ONNX graph when that fails: OpenVINO does
its own fusion, the ORT-fused graph's ``com.microsoft`` ops are not for it), calibrated on the built-in texts
(:func:`calibration_set`). They go through the same INC loop, the same gate (``validate``, run through the same
``Predictor``: ``runtime.make_session`` opens the IR with OpenVINO) and the same interleaved timing and choice as
ONNX Runtime's candidates, so an OpenVINO bundle ships only when it passes and is the fastest at equal fidelity.
"""

from __future__ import annotations

import re

from .choice import passed_with_margin
from .errors import MissingExtraError, UsageError
from .evaldata import EvalSet
from .extras import missing_distributions
from .validate import model_inputs

RUNTIMES = ("auto", "onnxruntime", "openvino")
OPENVINO_DISTRIBUTIONS = ("openvino", "nncf")
OPENVINO_HINT = 'pip install "multiverse[optimize]"'
#: Calibration examples for NNCF's statistics (NNCF's own default ``subset_size`` is 300).
CALIBRATION_ITEMS = 300


def runtimes(runtime: str, precision: str) -> tuple[bool, bool, str | None]:
    """Which runtimes' candidates to try for ``--runtime`` / ``--precision``: ``(onnxruntime, openvino, note)``;
    ``note`` says why OpenVINO was skipped under ``auto``.

    Raises UsageError for an unknown runtime or ``openvino`` with ``fp32`` (OpenVINO candidates are int8), and
    MissingExtraError when ``openvino`` is asked for and openvino/nncf are not installed.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime!r}: choose {', '.join(RUNTIMES)}.")
    missing = missing_distributions(OPENVINO_DISTRIBUTIONS)
    if runtime == "openvino":
        if precision == "fp32":
            raise UsageError("--runtime openvino builds NNCF int8 candidates; for an fp32 bundle use --runtime "
                             "onnxruntime (or auto) with --precision fp32.")
        if missing:
            raise MissingExtraError(f"--runtime openvino needs {', '.join(missing)}: {OPENVINO_HINT}")
        return False, True, None
    if runtime == "onnxruntime" or precision == "fp32":
        return True, False, None
    if missing:
        return True, False, (f"OpenVINO candidates skipped ({', '.join(missing)} not installed; {OPENVINO_HINT} "
                             "to try them)")
    return True, True, None


def calibration_set(data: EvalSet) -> EvalSet:
    """What NNCF calibrates on: the task's built-in texts, not the eval data the gate scores, so that static
    scales cannot fit the very examples they are judged on. Measured: calibrated on the BBC classifier's
    validation split, NNCF static int8 passed the gate there and then lost 0.94 points of held-out accuracy (τ 0.5 %).
    When the gate itself runs on the built-in set (``--eval-data builtin``, the default), there is nothing else
    to calibrate on and the two overlap."""
    from .evaldata import builtin

    return builtin(data.task)


def calibration_feeds(predictor, data: EvalSet, n: int = CALIBRATION_ITEMS) -> list[dict]:
    """NNCF calibration samples: up to ``n`` evenly spaced examples of :func:`calibration_set` (ranking: pairs),
    each tokenized alone as the server runs it (``predictor.encode``: int64 [1, seq] arrays by input name)."""
    items = model_inputs(calibration_set(data))
    return [predictor.encode([x]).arrays for x in items[:: max(1, len(items) // n)][:n]]


#: An encoder layer's module path in OpenVINO node names: ``/encoder/layer.3/...`` (ONNX frontend: the ONNX
#: export's node names) and ``__module.encoder.layer.3.attention...`` (PyTorch frontend: the traced module path).
LAYER = r"layers?[./]\d+[./]"


def head_nodes(names: list[str]) -> list[str]:
    """The task head among an encoder's quantizable OpenVINO nodes (``ovquant.node_names``): every node outside
    the encoder's ``layer.N`` / ``layers.N`` modules (Hugging Face module paths survive as node names in both
    frontends: ``/bert/pooler/dense/Gemm/WithoutBiases``, ``/classifier/MatMul``,
    ``__module.pre_classifier/aten::linear/MatMul``). They stay fp32, as the ONNX Runtime candidates' heads do: a
    few hundred MACs per sequence, and the output's error."""
    return [n for n in names if not re.search(LAYER, n)]


def openvino_source(ckpt, exported, workdir, progress):
    """What the OpenVINO candidates quantize: the checkpoint converted by OpenVINO's PyTorch frontend
    (``ovfrontend.pytorch_ir``: fewer kernels per attention block than the ONNX frontend's graph, same outputs to
    1e-4) as an fp32 IR in ``workdir``, or ``exported`` (the fp32 ONNX export, converted by the ONNX frontend)
    when that conversion fails, with a progress line saying so."""
    from .errors import QuantizationError
    from .ovfrontend import pytorch_ir

    progress.activity("converting the PyTorch model with OpenVINO")
    try:
        return pytorch_ir(ckpt.path, ckpt.task, exported, workdir)
    except QuantizationError as exc:
        progress.info(f"OpenVINO candidates start from the ONNX export: {exc}")
        return exported


def openvino_configs(exported) -> list:
    """The NNCF configurations the tuner tries on ``exported`` (the fp32 ``OnnxModel``: ONNX export or
    :func:`openvino_source`'s IR), in order
    (``multiverse.ovquant.OvInt8Config``), each with the task head in fp32 (:func:`head_nodes`):

    1. ``static`` (NNCF's defaults for transformers: SmoothQuant 0.95, per-tensor activation scales calibrated on
       :func:`calibration_set`): 0.65-0.8x ONNX Runtime's CPU time per call from 64 tokens up on MiniLM, but mean / min
       cosine 0.9926 / 0.872 there; label agreement 1.0 on a DistilBERT-base-shaped classifier. The gate decides.
       Tried first: when it passes with margin it is the cost the other candidates must come near to ship
       (:func:`openvino_rest`, ``tuning.tune``).
    2. ``dynamic`` g64 and g32: int8 weights (``nncf.compress_weights``), activations quantized at run time per
       token in groups of 64 (32) channels by the CPU plugin. On all-MiniLM-L6-v2 (built-in texts) mean / min cosine
       0.9988 / 0.9918 (g64) and 0.9990 / 0.9929 (g32), the only OpenVINO mode that met the issue's bar there (0.995
       / 0.99; ``benchmarks/results/ov_recipes.json``). g64 took 0.88-0.93x g32's CPU time per call (16 and 128
       tokens, 1 and 2 threads); g128 0.84-0.92x but min cosine 0.9881, one scale per token (g384) 0.89-0.93x at 0.9686;
       static int8 with dynamic FFN and attention-output MatMuls reached at best 0.9961 / 0.9542
       (``benchmarks/ov_dynamic_mix.py``). Both are built: g32 is 1.07-1.14x g64's time, near enough the
       ``choice.LATENCY_TIE`` that its extra fidelity may ship it.
    3. ``static`` with each layer's FFN output projection in fp32 as well (:func:`ffn_output_nodes`): on a weak
       BBC classifier (test accuracy 0.74) held-out label agreement 99.3 % vs 97.2 % for 1, at 1.67x vs 2.56x the
       fp32 ONNX Runtime graph's CPU speed (``benchmarks/results/weak_head.json``: ONNX frontend, calibrated on
       the validation texts). As the tuner builds it (PyTorch frontend, built-in calibration texts) it missed
       the gate there: expected agreement 0.9896 on validation (bar 0.99), 98.1 % held out, 1.54x at 128 tokens;
       calibrated on the validation texts 0.9917 / 98.1 %. No smaller fp32 set helps: each layer's six MatMuls,
       all QKV, attention-output or FFN-input MatMuls, or one FFN output in fp32 moved the expected agreement
       from 0.9833 to 0.9815-0.9855 (``benchmarks/results/weak_head_gate.md``).
    Other NNCF knobs (SmoothQuant α < 0.95, full bias correction, range estimators, accuracy control, per-node
    fp32 fallback: sensitivity is spread over every layer, best 0.9968 / 0.978 with 6 MatMuls in fp32) were
    measured and not kept.
    """
    from .ovquant import OvInt8Config, node_names

    names = node_names(exported)
    head = tuple(head_nodes(names))
    return [OvInt8Config(ignored_nodes=head), OvInt8Config(mode="dynamic", dynamic_group_size=64, ignored_nodes=head),
            OvInt8Config(mode="dynamic", dynamic_group_size=32, ignored_nodes=head),
            OvInt8Config(ignored_nodes=head + tuple(ffn_output_nodes(names)))]


def ffn_output_nodes(names: list[str]) -> list[str]:
    """Each encoder layer's FFN output projection (the MatMul after GELU: BERT/RoBERTa ``layer.N/output/dense``,
    DistilBERT ``layer.N/ffn/lin2``), whose input has the widest activation range of a layer."""
    return [n for n in names if re.search(LAYER + r"(output[./]dense|ffn[./]lin2)/", n)]


def openvino_static(tuner, configs: list, budget: int) -> int | None:
    """The first OpenVINO candidate (static int8, :func:`openvino_configs`) in the tuner's INC loop
    (``tuning._Tuner``), within what is left of ``budget``. Returns its trial index when it passed with margin
    (``choice.passed_with_margin``): the anchor whose cost decides which other candidates can still ship."""
    first = len(tuner.trials)
    tuner.inc_loop(configs[:1], budget - (first - 1), "openvino", stop_at_first=False)
    done = tuner.trials[first:]
    return first if done and done[0].passed and passed_with_margin(done[0]) else None


def openvino_rest(tuner, configs: list, budget: int, static: int | None) -> None:
    """The other OpenVINO candidates after :func:`openvino_static`, within what is left of ``budget``; none when
    static int8 passed with margin (``static`` is its trial index). Dynamic g64/g32 run the same int8 weight GEMMs
    plus a per-token activation quantization at run time, and static with the FFN outputs in fp32 runs more fp32
    GEMMs: neither is faster than static. Measured, CPU time per call (16 and 128 tokens, interleaved): dynamic
    1.36-1.46x static on a DistilBERT-base-shaped classifier; on all-MiniLM-L6-v2 dynamic is 0.91-0.97x ONNX
    Runtime's int8 where static is 0.65-0.8x, and 1.5x at 8-16 tokens. ``choice.choose`` ships a slower
    candidate only within ``FIDELITY_TRADE`` of the fastest, so building them would only cost build time."""
    if static is not None or len(configs) < 2:
        return
    tuner.inc_loop(configs[1:], budget - (len(tuner.trials) - 1), "openvino", stop_at_first=False)


def openvino_bf16(tuner, budget: int) -> None:
    """On a target whose CPUs all have bf16 (``Target.inference_precisions``), the static OpenVINO candidates that
    passed at f32 again, compiled with ``INFERENCE_PRECISION_HINT=bf16`` (the same IR: no quantization is re-run;
    ``quantization.inference_precision`` says how to compile it), each validated and timed like any candidate
    within what is left of ``budget``; ``choice.choose`` then weighs their speed against their fidelity as it does
    for every candidate. Nothing on other targets, nor when this host lacks bf16 (a bf16 candidate could not be
    validated here: OpenVINO would compile it at f32).

    Which ones, measured (``benchmarks/ov_bf16.py``: AMD EPYC with AVX-512 BF16, 2 threads, CPU time per call
    bf16 / f32 at 16 and 128 tokens, interleaved, two runs at load 13 and 9): static 0.91-0.96 / 0.95-0.97
    (DistilBERT-base shape) and 0.91-0.99 / 0.94-0.97 (all-MiniLM-L6-v2); static with the FFN outputs in fp32
    0.69-0.73 / 0.73 and 0.71-0.75 / 0.76-0.82 (its fp32 GEMMs run in bf16); dynamic g32 0.95-0.98 / 0.92-0.96 and
    0.92-1.08 / 1.02-1.04: no gain on MiniLM, the model where it is built (on the DistilBERT shape static passes
    with margin, so dynamic is not), so it is not retried. bf16 moved no gate decision: MiniLM min cosine 0.9529 →
    0.9494 (static, failed at both), 0.9937 → 0.9931 (FFN fp32), 0.9929 → 0.9929 (dynamic); label agreement 1.0
    at both on the DistilBERT shape. So a candidate that failed at f32 is not retried either. One already retried
    (an earlier call: ``tuning.tune`` calls this right after an anchor) is not retried again."""
    from dataclasses import replace

    from .choice import trial_runtime
    from .errors import IsaMismatchError
    from .targets import BF16_FLAG, missing_isa

    if "bf16" not in tuner.target.inference_precisions:
        return
    if missing_isa(None, [BF16_FLAG]):
        tuner.progress.info(f"bf16 candidates skipped: this host lacks {BF16_FLAG}, so they cannot be validated here")
        return
    tried = {t.label for t in tuner.trials}
    passed = [i for i, t in enumerate(tuner.trials) if t.passed and trial_runtime(t.config) == "openvino"
              and t.config.get("mode") == "static" and t.config.get("inference_precision", "f32") == "f32"
              and f"{t.label} bf16" not in tried]
    for i in passed[:max(0, budget - (len(tuner.trials) - 1))]:
        quantization = {**tuner.models[i].quantization, "inference_precision": "bf16"}
        try:
            tuner.run(f"{tuner.trials[i].label} bf16", replace(tuner.models[i], quantization=quantization),
                      quantization, "openvino bf16")
        except IsaMismatchError as exc:  # OpenVINO compiled it at f32 whatever /proc/cpuinfo lists
            tuner.progress.info(f"bf16 candidates skipped: {exc}")
            return


def openvino_reason(trials, chosen: int, reason: str, progress) -> str:
    """``choice.choose``'s reason for trial ``chosen`` under ``--runtime openvino``: said so, and, when it takes more CPU
    time than the fused fp32 ONNX Runtime graph (trial 0) on this host, that too (also a warning on ``progress``)."""
    from .choice import cost_ms, speedup_text

    reason = reason.replace("int8 requested: ", "--runtime openvino: ", 1)
    if (cost := cost_ms(trials, [0, chosen]))[chosen] > cost[0]:
        slower = (f"it takes {speedup_text(trials, chosen, 0)} the CPU time of the fused fp32 ONNX Runtime "
                  "graph on this host; --runtime auto would ship the faster one")
        reason = f"{reason}; {slower}"
        progress.warn(f"--runtime openvino: {trials[chosen].label} ships although {slower}")
    return reason
