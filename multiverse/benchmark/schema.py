"""The benchmark report as pydantic models; :meth:`Report.to_dict` is the ``report.json`` document.

Document (``schema: "multiverse-benchmark/1"``); keys marked ``?`` are left out when they do not apply::

    {
      "schema": "multiverse-benchmark/1",
      "created_at": ISO-8601 UTC,
      "host": {"cpu", "arch", "flags": [...], "physical_cores", "logical_cpus", "loadavg_1m", "platform", "python",
               "available_cores"?},
      "versions": {"multiverse", "onnxruntime", "torch", "transformers", "optimum-onnx", ...},
      "bundle": {"path", "task", "target", "precision", "model_type", "num_layers", "hidden_size", "num_heads",
                 "source", "max_sequence_length", "runtime": {"name": "onnxruntime" | "openvino", "version",
                 "version_built"}},
      "checkpoint": original checkpoint folder (the baselines' model) or null,
      "optimum": {"path", "recipe", "workaround", ...} or null,
      "config": {"cores", "seq_lens", "batch_sizes", "systems", "budget": {...}},
      "accuracy": {system: {"n", "label_agreement" | "mean_cosine" | ...}}  (vs the PyTorch model),
      "results": [{"system", "cores", "seq_len", "batch_size", "status": "ok" | "skipped" | "error",
                   "reason"?, "capped"?, "rounds"?, "stats"?: {"n", "batch_size", "min_ms", "max_ms", "mean_ms",
                   "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "total_s", "req_per_s", "samples_per_s"},
                   "loadavg_1m"?, "breakdown"?: {"tokenization_ms", "inference_ms", "postprocess_ms"},
                   "http"?: {"compute_time": stats of x-compute-time}, "cpus"?}],
      "speedups": [{"cores", "seq_len", "batch_size", "baseline", "p50": baseline p50 / multiverse p50,
                    "throughput": multiverse samples/s / baseline samples/s}],
      "notes": [str], "profile": {...} or null, "server"?: {"url", "info"}
    }

Times are milliseconds, throughput requests/s and samples/s (samples = texts); ``stats`` is
``timing.LatencyStats``. Other top-level keys a caller adds (``benchmarks/peers.py`` adds ``acceptance``) are kept.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from ..timing import Budget, LatencyStats

SCHEMA = "multiverse-benchmark/1"


class _Part(BaseModel):
    """A part of the document: the fields named in ``_absent_when_none`` are left out of it when None."""

    model_config = ConfigDict(extra="forbid")
    _absent_when_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler):
        data = handler(self)
        for key in self._absent_when_none:
            if data.get(key, 0) is None:
                del data[key]
        return data


class HostInfo(_Part):
    """The machine: CPU model, ISA flags, core counts, 1-minute load average at the end of the run."""

    cpu: str
    arch: str
    flags: list[str]
    physical_cores: int
    logical_cpus: int | None
    loadavg_1m: float | None
    platform: str
    python: str
    available_cores: int | None = None  # set when the caller overrode the physical core count

    _absent_when_none = ("available_cores",)


class BundleInfo(_Part):
    """The measured bundle, from its manifest (null where the manifest lacks a value)."""

    path: str
    task: str | None
    target: str | None
    precision: str | None
    model_type: str | None
    num_layers: int | None
    hidden_size: int | None
    num_heads: int | None
    source: str | None
    max_sequence_length: int | None
    #: The runtime that ran the bundle: ``name`` (``onnxruntime`` | ``openvino``), ``version`` (installed in the
    #: benchmark's process) and ``version_built`` (the manifest's ``runtime.engine.version``, the one that validated
    #: it; null when not recorded). None only in reports written before this field existed.
    runtime: dict[str, str | None] | None = Field(None, exclude_if=lambda v: v is None)  # old reports stay byte for byte


class GridConfig(_Part):
    """What was asked for: the grid axes, the systems in run order and the per-cell timing budget."""

    cores: list[int]
    seq_lens: list[int]
    batch_sizes: list[int]
    systems: list[str]
    budget: Budget


class CellResult(_Part):
    """One system on one cell: ``cores`` pinned physical cores (null over HTTP), ``batch_size`` texts of
    ``seq_len`` tokens.

    ``status`` ok carries ``stats`` (and ``capped``: the time cap ended a slice; ``rounds``: interleaved slices;
    ``loadavg_1m``: the highest 1-minute load seen; ``breakdown``: mean ms per pipeline step, Multiverse only;
    ``http.compute_time``: stats of the server's ``x-compute-time``; ``cpus``: the logical CPUs pinned).
    skipped and error carry ``reason``. Raises ValidationError (a ValueError) otherwise.
    """

    system: str
    cores: int | None
    seq_len: int
    batch_size: int
    status: Literal["ok", "skipped", "error"]
    reason: str | None = None
    capped: bool | None = None
    rounds: int | None = None
    stats: LatencyStats | None = None
    loadavg_1m: float | None = None
    breakdown: dict[str, float] | None = None
    http: dict[str, LatencyStats] | None = None
    cpus: list[int] | None = None

    _absent_when_none = ("reason", "capped", "rounds", "stats", "loadavg_1m", "breakdown", "http", "cpus")

    @model_validator(mode="after")
    def _status_has_its_fields(self) -> CellResult:
        if self.status == "ok" and self.stats is None:
            raise ValueError("status is ok but the row has no stats")
        if self.status != "ok" and not self.reason:
            raise ValueError(f"status is {self.status} without a reason")
        return self

    @property
    def key(self) -> tuple[int | None, int, int]:
        """``(cores, seq_len, batch_size)``."""
        return (self.cores, self.seq_len, self.batch_size)


class Speedup(_Part):
    """Multiverse against one baseline on one cell: ``p50`` = baseline p50 / Multiverse p50 and ``throughput`` =
    Multiverse samples/s / baseline samples/s (both > 1 when Multiverse is faster)."""

    cores: int
    seq_len: int
    batch_size: int
    baseline: str
    p50: float
    throughput: float


class Report(_Part):
    """The whole report (see the module docstring). ``Report.model_validate(json.loads(text))`` reads a
    ``report.json``; :meth:`to_dict` writes one."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_: Literal["multiverse-benchmark/1"] = Field(SCHEMA, alias="schema")
    created_at: str
    host: HostInfo
    versions: dict[str, str | None]
    bundle: BundleInfo
    checkpoint: str | None
    optimum: dict[str, Any] | None
    config: GridConfig
    accuracy: dict[str, dict[str, int | float | str]]
    results: list[CellResult]
    speedups: list[Speedup]
    notes: list[str]
    profile: dict[str, Any] | None = None
    server: dict[str, Any] | None = None  # --http: the server's URL and its /info

    _absent_when_none = ("server",)

    @classmethod
    def of(cls, report: Report | dict) -> Report:
        """``report`` itself, or the dict read as a Report. Raises ValidationError (a ValueError) for a bad dict."""
        return report if isinstance(report, Report) else cls.model_validate(report)

    def to_dict(self) -> dict:
        """The JSON document: plain dicts, lists, str, int, float, bool and None, keys in schema order."""
        return self.model_dump(by_alias=True)

    def ok(self) -> list[CellResult]:
        """The rows that were measured (``status == "ok"``)."""
        return [r for r in self.results if r.status == "ok"]
