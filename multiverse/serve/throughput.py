"""``multiverse serve --performance-hint throughput``: several model runs in flight instead of one fast one.

The default (``latency``) runs one request at a time on all the inference threads, which gives the lowest
latency per request. Under many concurrent clients a 2-core host does more requests per second when each core
runs its own request (a transformer run at 128 tokens does not scale perfectly over threads, and
tokenization and post-processing of one request overlap the run of another). The throughput mode:

* **streams**: ``streams`` engines (:class:`~multiverse.serve.engine.Engine`, one worker thread each) share one
  predictor and take requests in turn (each new request goes to the engine with the fewest unfinished ones);
  default one stream per inference thread.
* **threads per stream**: ONNX Runtime graphs run with ``threads // streams`` intra-op threads per run (one
  ``InferenceSession`` called from every worker; ONNX Runtime's ``Run`` is thread-safe). OpenVINO IRs are
  compiled with OpenVINO's own throughput mode: ``PERFORMANCE_HINT=THROUGHPUT``, ``NUM_STREAMS=streams`` and
  ``INFERENCE_NUM_THREADS=threads`` (OpenVINO splits the threads between its streams; each worker thread has
  its own infer request, so ``streams`` runs are in flight). The inference precision (the bundle's: f32, or bf16
  where it was validated so) and unpinned threads stay as the bundle's latency mode has them, so outputs are the
  same as ``Predictor.predict``'s (to float rounding).
* **batching** stays as ``--batch-tokens`` says (off by default), per engine. Measured with the real engines in
  process (8 concurrent clients, one 128-token text per request, 2 cores, interleaved rounds, load 10-16), on
  the DistilBERT-base shape (OpenVINO static int8 IR): two streams 19.9 req/s, two streams + ``batch_tokens``
  1024 19.6, one 2-thread engine + ``batch_tokens`` 1024 17.0, OpenVINO's own ``AsyncInferQueue`` 18.5; on
  all-MiniLM-L6-v2 (ONNX Runtime dynamic int8, no merging possible): two streams 44.1 vs one 2-thread engine
  19.1. Merging adds nothing once both cores run their own request, and it would make a result depend (to
  float rounding) on other clients' texts. ``benchmarks/peers_measure.py`` times the mode against OpenVINO's
  own THROUGHPUT hint (``benchmarks/results/serve_throughput.md``).

Sources: OpenVINO "High-level Performance Hints" and "CPU Device" (streams, ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``),
openvino 2026.4; ONNX Runtime "Thread management" (concurrent ``Run`` calls on one session).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from .engine import Engine, Overloaded
from .settings import ServeSettings


@dataclass(frozen=True)
class ThroughputPlan:
    """What the throughput mode runs.

    Attributes:
        streams: engines (worker threads), i.e. model runs in flight at once.
        threads: the session's ``threads`` argument (ONNX Runtime: intra-op threads of each run; OpenVINO:
            ``INFERENCE_NUM_THREADS``, all streams together).
        session_config: entries added to the bundle's ``session_config`` (OpenVINO compile properties).
        batch_tokens: padded-token budget of merged runs, per engine (``settings.batch_tokens``; 0: no merging).
    """

    streams: int
    threads: int
    session_config: dict
    batch_tokens: int


def plan(settings: ServeSettings, cores: int, openvino: bool) -> ThroughputPlan:
    """The throughput mode's streams, threads and session entries for ``settings`` on ``cores`` inference threads
    (``settings.threads`` or the physical cores within the CPU quota), for an OpenVINO IR or an ONNX graph.

    ``settings.streams`` defaults to ``settings.threads``, else ``cores``. :class:`ServeSettings` already checked
    ``streams ≤ threads``.
    """
    streams = int(settings.streams or settings.threads or cores)
    total = int(settings.threads or max(cores, streams))
    batch = int(settings.batch_tokens)
    if openvino:
        return ThroughputPlan(streams, total, {"openvino.PERFORMANCE_HINT": "THROUGHPUT",
                                               "openvino.NUM_STREAMS": str(streams)}, batch)
    return ThroughputPlan(streams, max(1, total // streams), {}, batch)


def load_predictor(source, settings: ServeSettings):
    """A :class:`~multiverse.inference.Predictor` for ``source`` (bundle folder or ``Bundle``) compiled as
    :func:`plan` says; returns ``(predictor, plan)``.

    Raises BundleError / IsaMismatchError as ``Predictor.from_bundle``.
    """
    from ..bundle import Bundle, load
    from ..inference import Predictor
    from ..runtime import physical_cores

    b = source if isinstance(source, Bundle) else load(source)
    p = plan(settings, physical_cores(), str(b.model_path).endswith(".xml"))
    config = {**b.session_config(allow_isa_mismatch=settings.allow_isa_mismatch), **p.session_config}
    predictor = Predictor(b.model_path, b.path, b.task, threads=p.threads, session_config=config,
                          max_length=b.manifest.get("max_sequence_length"))
    predictor.bundle = b
    return predictor, p


class EnginePool:
    """``streams`` :class:`Engine` s around one predictor, with the engine's interface (``submit``, ``start``,
    ``stop``, ``join``, ``draining``, ``queue_size``). A request goes to the engine with the fewest unfinished
    requests and stays there, so each engine's scheduling (turns, merging, draining) is the engine's own.

    Args:
        predictor: a loaded predictor whose ``run`` may be called from several threads at once.
        streams: engines (≥ 1).
        max_queue: requests that may wait in all engines together (each engine takes its share, at least 1).
        engine_kwargs: the other :class:`Engine` arguments (``batch_tokens``, ``max_rows`` ...).
    """

    def __init__(self, predictor, streams: int, *, max_queue: int = 128, **engine_kwargs):
        per_engine = max(1, -(-int(max_queue) // int(streams)))
        self.engines = [Engine(predictor, max_queue=per_engine, **engine_kwargs) for _ in range(int(streams))]
        self.predictor = predictor
        self.max_queue = per_engine * len(self.engines)
        self.batch_tokens = self.engines[0].batch_tokens

    def start(self) -> None:
        """Start every engine's worker thread (idempotent)."""
        for e in self.engines:
            e.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain every engine at once (see :meth:`Engine.stop`); returns after at most about ``timeout`` s."""
        threads = [threading.Thread(target=e.stop, args=(timeout,), daemon=True) for e in self.engines]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s in total for every worker thread to end; True when all have."""
        import time

        end = time.monotonic() + max(0.0, float(timeout))
        joined = [e.join(max(0.0, end - time.monotonic())) for e in self.engines]  # every engine, no short cut
        return all(joined)

    @property
    def draining(self) -> bool:
        return any(e.draining for e in self.engines)

    @property
    def queue_size(self) -> int:
        """Requests submitted and not finished yet, all engines together."""
        return sum(e.queue_size for e in self.engines)

    def submit(self, items: list, params: dict, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        """As :meth:`Engine.submit`, on the least busy engine; :class:`Overloaded` when every engine's queue is
        full, :class:`~multiverse.serve.engine.NotRunning` when draining."""
        last: Overloaded | None = None
        for engine in sorted(self.engines, key=lambda e: e.queue_size):
            try:
                return engine.submit(items, params, loop)
            except Overloaded as exc:
                last = exc
        raise last


def make_engine(predictor, settings: ServeSettings, streams: int, batch_tokens: int) -> EnginePool:
    """The :class:`EnginePool` the throughput mode serves with (limits from ``settings``)."""
    return EnginePool(predictor, streams, max_queue=settings.max_queue, batch_tokens=batch_tokens,
                      max_rows=settings.max_batch, max_run_tokens=settings.max_run_tokens,
                      max_request_tokens=settings.max_batch_tokens)
