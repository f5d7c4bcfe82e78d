"""Server settings: limits and knobs of ``multiverse serve`` with their defaults (all documented in ``/info``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UsageError

#: Seconds uvicorn's ``timeout_graceful_shutdown`` exceeds ``graceful_timeout``: time to write the
#: 503 answers of the requests the drain could not finish, before uvicorn cancels anything.
GRACE_MARGIN = 5.0


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``multiverse serve`` can be told.

    Attributes:
        host: address to bind. ``127.0.0.1`` (loopback only) unless told otherwise.
        port: TCP port (0: any free port; the chosen one is logged).
        threads: ONNX Runtime intra-op threads (OpenVINO: ``INFERENCE_NUM_THREADS``); ``None`` = physical
            cores allowed by the affinity mask and the cgroup CPU quota (``multiverse.runtime.physical_cores``).
        api_key: when set, every route except the health probes needs
            ``Authorization: Bearer <key>`` (or ``x-api-key: <key>``); else 401.
        allow_isa_mismatch: serve a bundle whose target needs CPU flags this host lacks
            (then ``session.x64quantprecision=1`` is set).
        max_batch: inputs per request (texts, pairs or rerank passages); more is 422. TEI calls
            it ``max_client_batch_size`` (the CLI takes both names).
        max_chars: characters per text (each side of a pair); more is 422. Texts longer
            than the model's token limit are truncated, not rejected.
        max_body_bytes: request body size; more is 413.
        max_queue: requests waiting for the inference worker; when full the answer is 429.
        batch_tokens: server-side batching. 0 (default) runs each request on its own; N > 0
            merges queued requests into one ONNX Runtime run while
            ``rows × longest sequence ≤ N`` padded tokens. Batching raises throughput under
            load but, with dynamic int8 activation scales, lets a result depend (slightly)
            on other clients' requests, so it is opt-in.
        max_run_tokens: padded tokens (rows × longest sequence) of one ONNX Runtime run; a
            larger request is split into several runs (its results are joined in order). This
            bounds the memory the session's arena grows to; the warm-up runs this shape once.
        max_batch_tokens: real tokens (after truncation) one request may carry, all its texts
            together (TEI's ``max_batch_tokens``, default 16384 as TEI's); more is 413
            ``PayloadTooLarge``. 0 = no limit. Checked by the engine after tokenization.
        graceful_timeout: seconds queued and running requests get to finish after SIGTERM
            (drain); readiness answers 503 from the signal on, and whatever is unfinished
            at the end gets 503 with ``Retry-After``. uvicorn's own timeout is set
            ``GRACE_MARGIN`` seconds longer, so it never cancels a request (which would be a 500).
        header_timeout: seconds a client has, from connecting (or from the end of the previous
            response plus ``keep_alive_timeout``), to send a complete request head; else the
            connection is closed. Stops connections that send nothing or trickle headers.
        body_timeout: seconds a client has to send the whole request body once its head is in;
            else 408 ``RequestTimeout`` and the connection is closed.
        keep_alive_timeout: seconds an idle keep-alive connection stays open between requests
            (uvicorn's ``timeout_keep_alive``).
        max_connections: open HTTP connections; a connection beyond it gets 503 with
            ``Retry-After`` at once and is closed.
        performance_hint: ``latency`` (default: one request at a time on all ``threads``) or
            ``throughput`` (``streams`` runs in flight, each on ``threads // streams`` threads; OpenVINO IRs
            compiled with OpenVINO's THROUGHPUT hint; see :mod:`multiverse.serve.throughput`).
        streams: model runs in flight under ``performance_hint="throughput"`` (default: one per thread);
            must not exceed ``threads``, and is a usage error with the latency hint.
        warmup: run a few inferences (short, batched and longest) before reporting ready.
        model_name: name reported by ``/info`` and ``/v1/embeddings`` (default: the bundle's source).
        log_level: uvicorn log level.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None
    api_key: str | None = None
    allow_isa_mismatch: bool = False
    max_batch: int = 256
    max_chars: int = 50_000
    max_body_bytes: int = 4 * 1024 * 1024
    max_queue: int = 128
    batch_tokens: int = 0
    max_run_tokens: int = 4096
    max_batch_tokens: int = 16384
    graceful_timeout: float = 30.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 30.0
    max_connections: int = 512
    performance_hint: str = "latency"
    streams: int | None = None
    warmup: bool = True
    model_name: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port < 65536, f"--port {self.port} must be in 0..65535 (0: any free port, logged)."),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads} must be ≥ 1."),
            (self.max_batch >= 1, f"--max-batch {self.max_batch} must be ≥ 1."),
            (self.max_chars >= 1, f"--max-chars {self.max_chars} must be ≥ 1."),
            (self.max_body_bytes >= 1024, f"--max-body {self.max_body_bytes} must be ≥ 1024 bytes."),
            (self.max_queue >= 1, f"--max-queue {self.max_queue} must be ≥ 1."),
            (self.batch_tokens >= 0, f"--batch-tokens {self.batch_tokens} must be ≥ 0 (0 disables batching)."),
            (self.max_run_tokens >= 1, f"--max-run-tokens {self.max_run_tokens} must be ≥ 1."),
            (self.max_batch_tokens >= 0, f"--max-batch-tokens {self.max_batch_tokens} must be ≥ 0 (0: no limit)."),
            (self.graceful_timeout > 0, f"--graceful-timeout {self.graceful_timeout} must be > 0 seconds."),
            (self.header_timeout > 0, f"--header-timeout {self.header_timeout} must be > 0 seconds."),
            (self.body_timeout > 0, f"--body-timeout {self.body_timeout} must be > 0 seconds."),
            (self.keep_alive_timeout > 0, f"--keep-alive-timeout {self.keep_alive_timeout} must be > 0 seconds."),
            (self.max_connections >= 1, f"--max-connections {self.max_connections} must be ≥ 1."),
            (self.api_key is None or len(self.api_key) > 0, "--api-key must not be empty."),
            *_hint_checks(self),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    def public(self) -> dict:
        """The settings without secrets (for ``/info``)."""
        d = asdict(self)
        d["api_key"] = self.api_key is not None
        return d


#: ``--performance-hint`` values (OpenVINO's hint names, lower case).
PERFORMANCE_HINTS = ("latency", "throughput")


def _hint_checks(s: ServeSettings) -> list[tuple[bool, str]]:
    """The ``performance_hint`` / ``streams`` checks of :class:`ServeSettings` as (ok, message) pairs."""
    return [
        (s.performance_hint in PERFORMANCE_HINTS,
         f"--performance-hint {s.performance_hint!r} must be one of: {', '.join(PERFORMANCE_HINTS)}."),
        (s.streams is None or s.streams >= 1, f"--streams {s.streams} must be ≥ 1."),
        (s.streams is None or s.performance_hint == "throughput",
         f"--streams {s.streams} needs --performance-hint throughput (the latency hint runs one request at a time)."),
        (s.streams is None or s.threads is None or s.streams <= s.threads,
         (f"--streams {s.streams} exceeds --threads {s.threads}: each stream needs at least one thread. Lower "
          "--streams or raise --threads.")),
    ]
