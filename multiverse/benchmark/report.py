"""The benchmark report: build it (:func:`build_report`), check it, and write it as files: ``report.json``,
``report.csv`` and matplotlib PNGs. The document's shape is the pydantic :class:`~multiverse.benchmark.schema.Report`
(schema in ``schema.py``); the rich and Markdown tables and the progress bar are ``views.py`` (re-exported here).

Times are milliseconds, throughput requests/s and samples/s (samples = texts).
"""

from __future__ import annotations

import csv
from collections import Counter
import datetime as _dt
import io
import json
import os
import platform
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from pydantic import ValidationError

from .schema import SCHEMA, BundleInfo, CellResult, GridConfig, HostInfo, Report, Speedup
from .views import RichBenchProgress, markdown_table, table

__all__ = ["CSV_COLUMNS", "CellResult", "Report", "RichBenchProgress", "SCHEMA", "STAT_KEYS", "Speedup",
           "build_report", "host_info", "library_versions", "markdown_table", "plot", "speedups", "table", "to_csv",
           "validate_report", "write"]

STAT_KEYS = ("n", "min_ms", "max_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "req_per_s",
             "samples_per_s")
CSV_COLUMNS = ("system", "cores", "seq_len", "batch_size", "status", *STAT_KEYS, "capped", "tokenization_ms",
               "inference_ms", "postprocess_ms", "http_compute_p50_ms", *(f"speedup_p50_vs_{b}" for b in ("transformers", "optimum", "openvino")),
               "reason")
_COLORS = {"multiverse": "#1f77b4", "transformers": "#d62728", "optimum": "#2ca02c", "multiverse-http": "#9467bd",
           "openvino": "#ff7f0e"}
_STYLES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
_SYSTEM_ORDER = ("multiverse", "multiverse-http", "transformers", "optimum", "openvino")


def host_info(available_cores: int | None = None) -> HostInfo:
    """CPU model, ISA flags, core counts, 1-minute load and platform of this host (``available_cores``: the
    caller's override of the physical core count, recorded when given)."""
    from ..runtime import physical_cores
    from ..targets import host_arch, host_cpu_name, host_flags

    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        load1 = None
    return HostInfo(cpu=host_cpu_name(), arch=host_arch(), flags=sorted(host_flags()), physical_cores=physical_cores(),
                    logical_cpus=os.cpu_count(), loadavg_1m=load1, platform=platform.platform(),
                    python=sys.version.split()[0], available_cores=available_cores)


def library_versions() -> dict:
    """Versions of multiverse and the libraries measured (``pipeline.versions``)."""
    from ..pipeline import versions

    return versions()


def speedups(rows: Sequence[CellResult], baselines: Sequence[str]) -> list[Speedup]:
    """Per cell where Multiverse and a baseline both succeeded: ``p50`` = baseline p50 / Multiverse p50 and
    ``throughput`` = Multiverse samples/s / baseline samples/s (both > 1 when Multiverse is faster), rounded to
    3 decimals, in (cores, seq_len, batch_size, baseline) order."""
    ok = {(r.system, *r.key): r.stats for r in rows if r.status == "ok"}
    out = []
    for (_, c, s, b), mv in sorted(((k, v) for k, v in ok.items() if k[0] == "multiverse"), key=lambda kv: kv[0][1:]):
        for base in baselines:
            bs = ok.get((base, c, s, b))
            if bs and mv.p50_ms > 0 and bs.samples_per_s > 0:
                out.append(Speedup(cores=c, seq_len=s, batch_size=b, baseline=base, p50=round(bs.p50_ms / mv.p50_ms, 3),
                                   throughput=round(mv.samples_per_s / bs.samples_per_s, 3)))
    return out


def _bundle_info(bundle) -> BundleInfo:
    m = bundle.manifest
    model = m.get("model") or {}
    src = m.get("source") or {}
    return BundleInfo(path=str(bundle.path), task=m.get("task"), target=(m.get("target") or {}).get("name"),
                      precision=m.get("precision"), model_type=model.get("model_type"),
                      num_layers=model.get("num_layers"), hidden_size=model.get("hidden_size"),
                      num_heads=model.get("num_heads"), source=src.get("repo_id") or src.get("local_path"),
                      max_sequence_length=m.get("max_sequence_length"), runtime=_runtime_info(bundle))


def _runtime_info(bundle) -> dict:
    """``{"name", "version", "version_built"}`` of the runtime that runs ``bundle`` (see ``BundleInfo.runtime``):
    OpenVINO for an IR (``model_file`` ending in ``.xml``), else ONNX Runtime."""
    from ..graphfiles import is_openvino_ir
    from ..runtime import engine_info

    ir = is_openvino_ir(str(bundle.manifest.get("model_file") or "model.onnx"))
    return engine_info("openvino" if ir else "onnxruntime", bundle.manifest)


def _order(r: CellResult) -> tuple:
    return (r.cores or 0, r.seq_len, r.batch_size, _SYSTEM_ORDER.index(r.system) if r.system in _SYSTEM_ORDER else 99)


def build_report(*, bundle, systems: Sequence[str], cells, rows: Sequence[CellResult | dict], budget,
                 accuracy: dict | None = None, checkpoint: str | None = None, optimum: dict | None = None,
                 notes: Sequence[str] = (), available_cores: int | None = None, profile: dict | None = None,
                 server: dict | None = None) -> Report:
    """Assemble the :class:`Report` from the runner's rows (``CellResult`` or their dicts), sorted by cores,
    length, batch and system; adds a note when the host's load exceeded what the benchmark itself explains.

    ``bundle``: a loaded bundle (``.path``, ``.manifest``); ``cells``: the ``grid.Cell`` list; ``budget``: the
    ``timing.Budget``. Raises ValidationError (a ValueError) for a malformed row."""
    rows = sorted((CellResult.model_validate(r) if isinstance(r, dict) else r for r in rows), key=_order)
    notes = list(notes)
    loads = [r.loadavg_1m for r in rows if r.loadavg_1m is not None]
    host = host_info(available_cores)
    cores_avail = available_cores or host.physical_cores
    # The benchmark's own busy threads add about one per pinned core to the load average.
    own = max([r.cores for r in rows if r.cores is not None and r.status == "ok"] or [0])
    if loads and max(loads) > own + 1:
        notes.append(f"the host's 1-minute load average reached {max(loads):.1f} on {cores_avail} physical cores during "
                     f"the run (the benchmark itself accounts for about {own}): other processes competed for the pinned "
                     "cores, so latencies (and OpenMP-based baselines most) are inflated; see each row's loadavg_1m")
    skipped = Counter(r.reason for r in rows if r.status == "skipped")
    notes += [f"{n} cell(s) skipped: {reason}" for reason, n in skipped.items()]
    if rows and not any(r.status == "ok" for r in rows):
        notes.append("no cell was measured: choose --cores, --seq-lens and --batch-sizes this host and model allow")
    if "openvino" in systems:
        from .openvino_system import bundle_precision

        p, name = bundle_precision(bundle), bundle.spec.target.name
        notes.append(f"openvino ran with INFERENCE_PRECISION_HINT {p}: the bundle's target, {name}, has no bf16 path"
                     if p else f"openvino ran at the CPU plugin's default precision (bf16 where this CPU has it), as "
                     f"it would on the bundle's target, {name}")
    for system, metrics in (accuracy or {}).items():
        notes.append(f"accuracy of {system} vs PyTorch: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    baselines = [s for s in systems if s not in ("multiverse", "multiverse-http")]
    return Report(
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host=host, versions=library_versions(), bundle=_bundle_info(bundle), checkpoint=checkpoint,
        optimum={k: v for k, v in (optimum or {}).items() if k != "checkpoint_hash"} or None,
        config=GridConfig(cores=sorted({c.cores for c in cells}), seq_lens=sorted({c.seq_len for c in cells}),
                          batch_sizes=sorted({c.batch_size for c in cells}), systems=list(systems), budget=budget),
        accuracy=accuracy or {}, results=rows, speedups=speedups(rows, baselines), notes=notes, profile=profile,
        server=server)


def validate_report(report: Report | dict) -> None:
    """Check a report document against :class:`Report` (an ok row needs every stat, a skipped or failed row a
    reason). Raises ValueError naming the first problem (its place in the document and what is wrong)."""
    try:
        Report.of(report)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"]).replace(".[", "[")
        raise ValueError(f"report.{where}: {err['msg']}" if where else f"report: {err['msg']}") from None


def to_csv(report: Report | dict) -> str:
    """One CSV row per result (columns :data:`CSV_COLUMNS`); Multiverse's rows carry its p50 speed-up against each
    baseline in the run (``speedup_p50_vs_<baseline>``, empty for a baseline not run)."""
    rep = Report.of(report)
    sp = {(s.baseline, s.cores, s.seq_len, s.batch_size): s.p50 for s in rep.speedups}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rep.results:
        row: dict[str, Any] = {"system": r.system, "cores": r.cores, "seq_len": r.seq_len, "batch_size": r.batch_size,
                               "status": r.status, "capped": r.capped, "reason": r.reason}
        row.update(asdict(r.stats) if r.stats else {})
        row.update(r.breakdown or {})
        if r.http:
            row["http_compute_p50_ms"] = r.http["compute_time"].p50_ms
        if r.system == "multiverse":
            row.update({f"speedup_p50_vs_{b}": sp[(b, *r.key)] for b in ("transformers", "optimum", "openvino")
                        if (b, *r.key) in sp})
        w.writerow(row)
    return buf.getvalue()


def plot(report: Report | dict, out_dir: str | Path, dpi: int = 80) -> list[Path]:
    """Write ``throughput.png`` (samples/s vs sequence length, one panel per core count),
    ``latency.png`` (p50 with p90/p95/p99 markers vs sequence length, batch 1 or the smallest batch) and
    ``speedup.png`` (p50 speed-up against each baseline) into ``out_dir``; returns the paths written
    (none when there are no successful cells). Uses the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = Report.of(report)
    out_dir = Path(out_dir)
    ok = rep.ok()
    if not ok:
        return []
    written = []
    cores = sorted({r.cores for r in ok if r.cores is not None}) or [None]
    batches = sorted({r.batch_size for r in ok})
    systems = [s for s in ("multiverse", "multiverse-http", "optimum", "openvino", "transformers") if any(r.system == s for r in ok)]
    title = (f"{Path(str(rep.bundle.source)).name} ({rep.bundle.model_type}, {rep.bundle.precision}) "
             f"on {rep.host.cpu}")
    seq_ticks = sorted({r.seq_len for r in ok})

    def x_axis(ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(seq_ticks)
        ax.set_xticklabels([str(s) for s in seq_ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("sequence length (tokens)")

    def series(system, c, b, key):
        pts = sorted((r.seq_len, getattr(r.stats, key)) for r in ok
                     if r.system == system and r.cores == c and r.batch_size == b)
        return [p[0] for p in pts], [p[1] for p in pts]

    def panel_title(c):
        return f"{c} core{'s' if c != 1 else ''}" if c else "server"

    # throughput
    fig, axes = plt.subplots(1, len(cores), figsize=(max(5.5, 4.2 * len(cores)), 3.8), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cores):
        for system in systems:
            for i, b in enumerate(batches):
                x, y = series(system, c, b, "samples_per_s")
                if x:
                    ax.plot(x, y, linestyle=_STYLES[i % len(_STYLES)], marker=".", color=_COLORS.get(system),
                            label=f"{system} b{b}")
        x_axis(ax)
        ax.set_yscale("log")
        ax.set_title(panel_title(c))
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("throughput (samples/s)")
    axes[0][-1].legend(fontsize=6, ncol=1 + len(batches) // 4)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "throughput.png")
    fig.savefig(written[-1], dpi=dpi)
    plt.close(fig)

    # latency percentiles at the smallest batch
    b0 = batches[0]
    fig, axes = plt.subplots(1, len(cores), figsize=(max(5.5, 4.2 * len(cores)), 3.8), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cores):
        for system in systems:
            x, p50 = series(system, c, b0, "p50_ms")
            if not x:
                continue
            ax.plot(x, p50, marker="o", markersize=3, color=_COLORS.get(system), label=f"{system} p50")
            for key, mk in (("p90_ms", "^"), ("p95_ms", "s"), ("p99_ms", "x")):
                _, y = series(system, c, b0, key)
                ax.scatter(x, y, marker=mk, s=10, color=_COLORS.get(system), alpha=0.6,
                           label=f"{system} {key[:3]}" if system == systems[0] else None)
        x_axis(ax)
        ax.set_yscale("log")
        ax.set_title(panel_title(c) + f", batch {b0}")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("end-to-end latency (ms)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "latency.png")
    fig.savefig(written[-1], dpi=dpi)
    plt.close(fig)

    # speed-up
    sp = rep.speedups
    if sp:
        baselines = sorted({s.baseline for s in sp})
        fig, axes = plt.subplots(1, len(baselines), figsize=(max(5.5, 4.6 * len(baselines)), 3.8), squeeze=False)
        for ax, base in zip(axes[0], baselines):
            for c in sorted({s.cores for s in sp}):
                for i, b in enumerate(batches):
                    pts = sorted((s.seq_len, s.p50) for s in sp if s.baseline == base and s.cores == c
                                 and s.batch_size == b)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".",
                                linestyle=_STYLES[i % len(_STYLES)], label=f"{c}c b{b}")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            x_axis(ax)
            ax.set_ylabel(f"p50 speed-up vs {base} (×)")
            ax.set_title(f"Multiverse vs {base}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        written.append(out_dir / "speedup.png")
        fig.savefig(written[-1], dpi=dpi)
        plt.close(fig)
    return written


def write(report: Report | dict, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``report.csv`` and (``plots``) the PNGs into ``out_dir`` (created).
    Returns ``{"json", "csv", "png": [...]}`` paths. Raises ValueError (ValidationError) for a malformed dict."""
    rep = Report.of(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"json": out / "report.json", "csv": out / "report.csv"}
    paths["json"].write_text(json.dumps(rep.to_dict(), indent=1) + "\n", encoding="utf-8")
    paths["csv"].write_text(to_csv(rep), encoding="utf-8")
    paths["png"] = plot(rep, out) if plots else []
    return paths
