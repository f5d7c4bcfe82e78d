"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: 0.1 ms … 10 s.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Route labels; any other path is counted as "other" (bounded label cardinality).
ROUTES = ("/", "/predict", "/embed", "/similarity", "/rerank", "/v1/embeddings", "/embeddings", "/v1/models",
          "/models", "/info", "/health", "/v2/health/live", "/v2/health/ready", "/metrics", "/docs", "/openapi.json")


class Metrics:
    """Request count and latency histograms (seconds) of the pipeline stages and of whole requests.

    Exposed names: ``multiverse_requests_total{route,status}``,
    ``multiverse_request_duration_seconds{route}`` (whole HTTP request, server side),
    ``multiverse_tokenization_duration_seconds``, ``multiverse_queue_duration_seconds``,
    ``multiverse_inference_duration_seconds``, ``multiverse_postprocess_duration_seconds``,
    ``multiverse_compute_duration_seconds`` (tokenize + inference + postprocess),
    ``multiverse_batch_rows`` (rows per model run), ``multiverse_inputs_total``,
    ``multiverse_tokens_total``, ``multiverse_queue_size``, ``multiverse_ready``, and
    ``multiverse_runtime_info{backend,version,version_built}`` (constant 1, Prometheus' info-metric
    convention: the runtime that runs the model, ``onnxruntime`` or ``openvino``, set when the model is loaded).
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("multiverse_requests", "HTTP requests by route and status.", ["route", "status"],
                                registry=r)
        self.request_seconds = Histogram("multiverse_request_duration_seconds",
                                         "Whole HTTP request time in the server (seconds).", ["route"],
                                         buckets=_BUCKETS, registry=r)
        self.tokenize = Histogram("multiverse_tokenization_duration_seconds", "Tokenization time (seconds).",
                                  buckets=_BUCKETS, registry=r)
        self.queue = Histogram("multiverse_queue_duration_seconds", "Time waiting for the model (seconds).",
                               buckets=_BUCKETS, registry=r)
        self.inference = Histogram("multiverse_inference_duration_seconds",
                                   "Model run time in the inference runtime, ONNX Runtime or OpenVINO "
                                   "(multiverse_runtime_info names it) (seconds).",
                                   buckets=_BUCKETS, registry=r)
        self.postprocess = Histogram("multiverse_postprocess_duration_seconds", "Post-processing time (seconds).",
                                     buckets=_BUCKETS, registry=r)
        self.compute = Histogram("multiverse_compute_duration_seconds",
                                 "Pipeline time: tokenization + inference + post-processing (seconds).",
                                 buckets=_BUCKETS, registry=r)
        self.batch_rows = Histogram("multiverse_batch_rows", "Rows per model run (ONNX Runtime or OpenVINO).",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.inputs = Counter("multiverse_inputs", "Inputs (texts or pairs) processed.", registry=r)
        self.tokens = Counter("multiverse_tokens", "Real (non-pad) tokens processed.", registry=r)
        self.queue_size = Gauge("multiverse_queue_size", "Requests waiting for the inference worker.", registry=r)
        self.ready = Gauge("multiverse_ready", "1 when the model is loaded and warmed up.", registry=r)
        self.runtime = Info("multiverse_runtime", "The inference runtime that runs the model (backend: onnxruntime "
                            "or openvino; version: the one running; version_built: the one that validated the "
                            "bundle).", registry=r)
        self._route_seconds = {route: self.request_seconds.labels(route) for route in ROUTES + ("other",)}
        self._counts: dict[tuple[str, int], object] = {}

    @staticmethod
    def route_label(path: str) -> str:
        return path if path in ROUTES else "other"

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its server-side duration."""
        route = path if path in ROUTES else "other"
        key = (route, status)
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = self.requests.labels(route, str(status))
        counter.inc()
        self._route_seconds[route].observe(seconds)

    def set_runtime(self, runtime: dict) -> None:
        """Set ``multiverse_runtime_info`` from ``ServerState.runtime_document()`` (``backend``,
        ``backend_version``, ``backend_version_built``; None becomes "")."""
        self.runtime.info({"backend": str(runtime.get("backend") or ""),
                           "version": str(runtime.get("backend_version") or ""),
                           "version_built": str(runtime.get("backend_version_built") or "")})

    def observe_result(self, result, n_inputs: int) -> None:
        """Record the stage times of one pipeline :class:`~multiverse.serve.engine.Result`."""
        self.tokenize.observe(result.tokenization_ms / 1e3)
        self.queue.observe(result.queue_ms / 1e3)
        self.inference.observe(result.inference_ms / 1e3)
        self.postprocess.observe(result.postprocess_ms / 1e3)
        self.compute.observe(result.compute_ms / 1e3)
        self.batch_rows.observe(result.batch_rows)
        self.inputs.inc(n_inputs)
        self.tokens.inc(result.n_tokens)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
