"""OpenVINO's CPU plugin behind the part of ``onnxruntime.InferenceSession``'s API that Multiverse calls.

A bundle may ship an OpenVINO IR (``model.xml`` + ``model.bin``, NNCF static int8) instead of an ONNX graph.
:func:`multiverse.runtime.make_session` opens it with :class:`OpenVinoSession`, so the Predictor, the server's
engine, validation and the benchmark run it through the same code as an ONNX Runtime session: ``get_inputs()``,
``get_outputs()`` (objects with ``.name``) and ``run(output_names, feeds) -> [np.ndarray]``.

Compile properties (OpenVINO "CPU device" guide, openvino 2026.4):

* ``INFERENCE_NUM_THREADS`` = the intra-op threads Multiverse would give ONNX Runtime;
* ``PERFORMANCE_HINT`` = ``LATENCY`` (one stream: a request uses every thread, as ORT's intra-op pool does);
* ``INFERENCE_PRECISION_HINT`` = ``f32``. The plugin's default is bf16 for every non-int8 layer on CPUs with
  AVX-512 BF16 or AMX and f32 elsewhere, so the same IR would give different outputs on different hosts, and
  not the ones the accuracy gate validated. Measured on all-MiniLM-L6-v2 NNCF int8 (SmoothQuant 0.5), cosine
  to PyTorch on the built-in texts: min 0.9614 f32 vs 0.9512 bf16. The hint is fixed here and recorded.
  A bundle built for a target whose CPUs all have bf16 (``targets.Target.inference_precisions``) may record
  ``quantization.inference_precision = bf16`` (the tuner validated it so); :func:`precision_config` turns that
  into ``openvino.INFERENCE_PRECISION_HINT = bf16``, and a session asked for bf16 that OpenVINO compiles at
  another precision (a CPU or process without bf16) is refused rather than run at a precision nobody validated.

* ``ENABLE_CPU_PINNING`` = ``NO``. Pinned inference threads wait for their own core when another process holds
  it: on a loaded 2-core host MiniLM's p50 at 8 tokens was 16-20 ms pinned vs 2.8-3.1 ms unpinned, at similar
  CPU time (``benchmarks/ov_recipes.py``). A server shares its cores with the HTTP loop and the tokenizer.

``session_config`` entries named ``openvino.<PROPERTY>`` override these; other (ONNX Runtime) entries are
ignored. Needs the ``openvino`` distribution (the ``openvino`` extra); imported only when an IR is opened.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

#: ``session_config`` keys with this prefix are OpenVINO compile properties.
PROPERTY_PREFIX = "openvino."
DEFAULT_PROPERTIES = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": "NO"}
#: ``INFERENCE_PRECISION_HINT`` values a candidate or bundle may record (``quantization.inference_precision``).
INFERENCE_PRECISIONS = ("f32", "bf16")
PRECISION_KEY = PROPERTY_PREFIX + "INFERENCE_PRECISION_HINT"


@dataclass(frozen=True)
class Port:
    """An input or output of the compiled model, as ``onnxruntime.NodeArg`` shows it (name only)."""

    name: str


def openvino_version() -> str | None:
    """The installed ``openvino`` version (e.g. ``2026.4.1``), or None when it is not installed. Imports nothing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("openvino")
    except PackageNotFoundError:
        return None


def compile_properties(threads: int, session_config: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OpenVINO CPU compile properties for ``threads`` intra-op threads and a bundle's ``session_config``
    (``openvino.``-prefixed entries override :data:`DEFAULT_PROPERTIES`; others are ONNX Runtime's, ignored)."""
    props = {"INFERENCE_NUM_THREADS": str(int(threads)), **DEFAULT_PROPERTIES}
    for key, value in (session_config or {}).items():
        if str(key).startswith(PROPERTY_PREFIX):
            props[str(key)[len(PROPERTY_PREFIX):]] = str(value)
    return props


def inference_precision(quantization: Mapping | None) -> str:
    """The OpenVINO inference precision a candidate's or bundle's quantization record asks for:
    ``quantization["inference_precision"]`` (``f32`` or ``bf16``), ``f32`` when it records none (ONNX Runtime
    candidates, OpenVINO bundles written before the key existed). Raises ValueError for another value."""
    precision = str((quantization or {}).get("inference_precision") or "f32")
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference_precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")
    return precision


def precision_config(quantization: Mapping | None) -> dict[str, str]:
    """``session_config`` entries for :func:`inference_precision` of ``quantization``: ``{}`` for f32 (already
    :data:`DEFAULT_PROPERTIES`), ``{"openvino.INFERENCE_PRECISION_HINT": "bf16"}`` for bf16."""
    precision = inference_precision(quantization)
    return {} if precision == "f32" else {PRECISION_KEY: precision}


class OpenVinoSession:
    """An OpenVINO IR compiled for the CPU, called like an ``onnxruntime.InferenceSession``.

    Args:
        model_path: the IR's ``.xml`` (its ``.bin`` beside it).
        threads: ``INFERENCE_NUM_THREADS``.
        session_config: see :func:`compile_properties`.
    ``run`` may be called from several threads: each thread gets its own ``InferRequest`` (a request is not
    thread-safe; the compiled model is), kept until the session is released. Outputs are copied out of the request's buffers, which the next
    inference on that request overwrites.

    Raises MissingExtraError when ``openvino`` is not installed; IsaMismatchError when the properties ask for a
    lower inference precision (bf16) than OpenVINO compiled (it falls back to f32 on a CPU without bf16); OpenVINO's
    own exceptions when the IR does not compile (callers wrap them in their stage's error).
    """

    def __init__(self, model_path: str | os.PathLike, threads: int, session_config: Mapping[str, str] | None = None):
        try:
            from .extras import import_openvino

            ov = import_openvino()
        except ImportError as exc:
            from .errors import MissingExtraError

            raise MissingExtraError(f"{model_path} is an OpenVINO IR and the openvino package is not installed: "
                                    'pip install "multiverse[openvino]" (or the versions in the bundle\'s '
                                    "requirements.txt).") from exc
        self.properties = compile_properties(threads, session_config)
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", dict(self.properties))
        asked, got = self.properties["INFERENCE_PRECISION_HINT"].lower(), self.precision
        if asked != "f32" and got != asked:
            from .errors import IsaMismatchError

            raise IsaMismatchError(f"{model_path} asks for OpenVINO inference precision {asked}, and OpenVINO compiles "
                                   f"it at {got} in this process (this CPU lacks {asked}); a bundle validated at {asked} "
                                   f"runs only at {asked}: run it on a CPU with {asked}, or rebuild the bundle for this "
                                   "host (`multiverse optimize ... --target native`).")
        self._inputs = [Port(p.get_any_name()) for p in self.compiled.inputs]
        self._input_names = frozenset(p.name for p in self._inputs)
        self._outputs = [Port(p.get_any_name()) for p in self.compiled.outputs]
        self._requests: dict[int, object] = {}  # thread id → InferRequest (see _request)
        self._lock = threading.Lock()

    @property
    def precision(self) -> str:
        """The inference precision OpenVINO compiled with (``f32``, ``bf16``): its ``INFERENCE_PRECISION_HINT``."""
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def get_inputs(self) -> list[Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[Port]:
        return list(self._outputs)

    def _request(self):
        """The calling thread's infer request. Requests live as long as the session, not as their thread: a
        worker thread that ends (a server's engine stopping) does not destroy an OpenVINO request on its way
        out, and a later thread with the same id reuses it (live threads have distinct ids)."""
        key = threading.get_ident()
        request = self._requests.get(key)
        if request is None:
            with self._lock:
                request = self._requests.setdefault(key, self.compiled.create_infer_request())
        return request

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One synchronous inference. ``feeds``: int64 arrays [batch, seq] by input name; returns the named
        outputs (all when None) as new float32 arrays, e.g. [batch, seq, hidden] or [batch, num_labels]."""
        request = self._request()
        request.infer({k: v for k, v in feeds.items() if k in self._input_names})
        names = [p.name for p in self._outputs] if output_names is None else list(output_names)
        return [np.array(request.get_tensor(name).data, copy=True) for name in names]

    def profiling_info(self) -> list:
        """The calling thread's last inference, per layer: OpenVINO ``ProfilingInfo`` objects (``node_name``,
        ``node_type``, ``exec_type``, ``real_time``/``cpu_time`` as ``timedelta``, ``status``). Empty unless the
        session was compiled with ``openvino.PERF_COUNT = YES``."""
        return list(self._request().profiling_info)

    def get_session_options(self):
        """ONNX Runtime's options do not apply; callers that inspect them (tests, profiling) get None."""
        return None
