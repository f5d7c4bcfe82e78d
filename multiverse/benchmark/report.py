"""The benchmark report: one JSON document (schema below), a CSV, matplotlib PNGs and a rich table.

Report schema (``schema: "multiverse-benchmark/1"``)::

    {
      "schema": "multiverse-benchmark/1",
      "created_at": ISO-8601 UTC,
      "host": {"cpu", "arch", "flags": [...], "physical_cores", "logical_cpus", "loadavg_1m", "platform", "python"},
      "versions": {"multiverse", "onnxruntime", "torch", "transformers", "optimum-onnx", ...},
      "bundle": {"path", "task", "target", "precision", "model_type", "num_layers", "hidden_size", "source"},
      "checkpoint": original checkpoint folder (the baselines' model) or null,
      "optimum": {"recipe", "workaround", ...} or null,
      "config": {"cores", "seq_lens", "batch_sizes", "systems", "budget": {...}},
      "accuracy": {system: {"n", "label_agreement" | "mean_cosine" | ...}}  (vs the PyTorch model),
      "results": [{"system", "cores", "seq_len", "batch_size", "status": "ok" | "skipped" | "error",
                   "reason"?, "capped"?, "cpus"?, "stats"?: {"n", "min_ms", "max_ms", "mean_ms", "std_ms",
                   "p50_ms", "p90_ms", "p95_ms", "p99_ms", "total_s", "req_per_s", "samples_per_s"},
                   "breakdown"?: {"tokenization_ms", "inference_ms", "postprocess_ms"},
                   "http"?: {"compute_time": stats of x-compute-time}}],
      "speedups": [{"cores", "seq_len", "batch_size", "baseline", "p50": baseline p50 / multiverse p50,
                    "throughput": multiverse samples/s / baseline samples/s}],
      "notes": [str], "profile": {...} or null
    }

Times are milliseconds, throughput requests/s and samples/s (samples = texts).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

SCHEMA = "multiverse-benchmark/1"
STAT_KEYS = ("n", "min_ms", "max_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "req_per_s",
             "samples_per_s")
CSV_COLUMNS = ("system", "cores", "seq_len", "batch_size", "status", *STAT_KEYS, "capped", "tokenization_ms",
               "inference_ms", "postprocess_ms", "http_compute_p50_ms", "speedup_p50_vs_transformers", "reason")
_COLORS = {"multiverse": "#1f77b4", "transformers": "#d62728", "optimum": "#2ca02c", "multiverse-http": "#9467bd"}


def host_info() -> dict:
    """CPU model, ISA flags, core counts, load and platform of this host."""
    from ..runtime import physical_cores
    from ..targets import host_arch, host_cpu_name, host_flags

    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        load1 = None
    return {"cpu": host_cpu_name(), "arch": host_arch(), "flags": sorted(host_flags()),
            "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(), "loadavg_1m": load1,
            "platform": platform.platform(), "python": sys.version.split()[0]}


def library_versions() -> dict:
    """Versions of multiverse and the libraries measured (``pipeline.versions``)."""
    from ..pipeline import versions

    return versions()


def speedups(rows: Sequence[dict], baselines: Sequence[str]) -> list[dict]:
    """Per cell where Multiverse and a baseline both succeeded: ``p50`` = baseline p50 / Multiverse p50 and
    ``throughput`` = Multiverse samples/s / baseline samples/s (both > 1 when Multiverse is faster)."""
    ok = {(r["system"], r["cores"], r["seq_len"], r["batch_size"]): r["stats"] for r in rows if r.get("status") == "ok"}
    out = []
    for (system, c, s, b), mv in sorted(((k, v) for k, v in ok.items() if k[0] == "multiverse"), key=lambda kv: kv[0][1:]):
        for base in baselines:
            bs = ok.get((base, c, s, b))
            if bs and mv["p50_ms"] > 0 and bs["samples_per_s"] > 0:
                out.append({"cores": c, "seq_len": s, "batch_size": b, "baseline": base,
                            "p50": round(bs["p50_ms"] / mv["p50_ms"], 3),
                            "throughput": round(mv["samples_per_s"] / bs["samples_per_s"], 3)})
    return out


def _bundle_info(bundle) -> dict:
    m = bundle.manifest
    model = m.get("model") or {}
    src = m.get("source") or {}
    return {"path": str(bundle.path), "task": m.get("task"), "target": (m.get("target") or {}).get("name"),
            "precision": m.get("precision"), "model_type": model.get("model_type"), "num_layers": model.get("num_layers"),
            "hidden_size": model.get("hidden_size"), "num_heads": model.get("num_heads"),
            "source": src.get("repo_id") or src.get("local_path"), "max_sequence_length": m.get("max_sequence_length")}


def _order(r: dict) -> tuple:
    systems = ("multiverse", "multiverse-http", "transformers", "optimum")
    return (r.get("cores") or 0, r["seq_len"], r["batch_size"],
            systems.index(r["system"]) if r["system"] in systems else 99)


def build_report(*, bundle, systems: Sequence[str], cells, rows: list[dict], budget, accuracy: dict | None = None,
                 checkpoint: str | None = None, optimum: dict | None = None, notes: Sequence[str] = (),
                 available_cores: int | None = None, profile: dict | None = None) -> dict:
    """Assemble the report dict (schema in the module docstring) from the runner's rows."""
    rows = sorted(rows, key=_order)
    notes = list(notes)
    loads = [r["loadavg_1m"] for r in rows if r.get("loadavg_1m") is not None]
    cores_avail = available_cores or host_info()["physical_cores"]
    # The benchmark's own busy threads add about one per pinned core to the load average.
    own = max([r["cores"] for r in rows if isinstance(r.get("cores"), int) and r.get("status") == "ok"] or [0])
    if loads and max(loads) > own + 1:
        notes.append(f"the host's 1-minute load average reached {max(loads):.1f} on {cores_avail} physical cores during "
                     f"the run (the benchmark itself accounts for about {own}): other processes competed for the pinned "
                     "cores, so latencies (and OpenMP-based baselines most) are inflated; see each row's loadavg_1m")
    baselines = [s for s in systems if s not in ("multiverse", "multiverse-http")]
    return {
        "schema": SCHEMA,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {**host_info(), **({"available_cores": available_cores} if available_cores else {})},
        "versions": library_versions(),
        "bundle": _bundle_info(bundle),
        "checkpoint": checkpoint,
        "optimum": {k: v for k, v in (optimum or {}).items() if k != "checkpoint_hash"} or None,
        "config": {"cores": sorted({c.cores for c in cells}), "seq_lens": sorted({c.seq_len for c in cells}),
                   "batch_sizes": sorted({c.batch_size for c in cells}), "systems": list(systems),
                   "budget": budget.to_dict()},
        "accuracy": accuracy or {},
        "results": rows,
        "speedups": speedups(rows, baselines),
        "notes": list(notes),
        "profile": profile,
    }


def validate_report(report: dict) -> None:
    """Check a report's shape (the schema above). Raises ValueError naming the first problem."""
    for key in ("schema", "created_at", "host", "versions", "bundle", "config", "results", "speedups", "notes"):
        if key not in report:
            raise ValueError(f"report lacks {key!r}")
    if report["schema"] != SCHEMA:
        raise ValueError(f"unknown schema {report['schema']!r}")
    for key in ("cpu", "flags", "physical_cores"):
        if key not in report["host"]:
            raise ValueError(f"report.host lacks {key!r}")
    for i, r in enumerate(report["results"]):
        for key in ("system", "cores", "seq_len", "batch_size", "status"):
            if key not in r:
                raise ValueError(f"results[{i}] lacks {key!r}")
        if r["status"] == "ok":
            missing = [k for k in STAT_KEYS if k not in (r.get("stats") or {})]
            if missing:
                raise ValueError(f"results[{i}] is ok but its stats lack {missing}")
        elif r["status"] in ("skipped", "error"):
            if not r.get("reason"):
                raise ValueError(f"results[{i}] is {r['status']} without a reason")
        else:
            raise ValueError(f"results[{i}] has unknown status {r['status']!r}")


def to_csv(report: dict) -> str:
    """One CSV row per result (columns :data:`CSV_COLUMNS`), with the p50 speed-up against transformers."""
    sp = {(s["cores"], s["seq_len"], s["batch_size"]): s["p50"] for s in report["speedups"] if s["baseline"] == "transformers"}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in report["results"]:
        row: dict[str, Any] = {k: r.get(k) for k in ("system", "cores", "seq_len", "batch_size", "status", "capped", "reason")}
        row.update(r.get("stats") or {})
        row.update(r.get("breakdown") or {})
        if r.get("http"):
            row["http_compute_p50_ms"] = r["http"]["compute_time"]["p50_ms"]
        if r["system"] == "multiverse":
            row["speedup_p50_vs_transformers"] = sp.get((r["cores"], r["seq_len"], r["batch_size"]))
        w.writerow(row)
    return buf.getvalue()


def _ok(report: dict) -> list[dict]:
    return [r for r in report["results"] if r["status"] == "ok"]


def plot(report: dict, out_dir: str | Path, dpi: int = 80) -> list[Path]:
    """Write ``throughput.png`` (samples/s vs sequence length, one panel per core count),
    ``latency.png`` (p50 with p90/p95/p99 markers vs sequence length, batch 1 or the smallest batch) and
    ``speedup.png`` (p50 speed-up against each baseline) into ``out_dir``; returns the paths written
    (none when there are no successful cells). Uses the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    ok = _ok(report)
    if not ok:
        return []
    written = []
    cores = sorted({r["cores"] for r in ok if r["cores"] is not None}) or [None]
    batches = sorted({r["batch_size"] for r in ok})
    systems = [s for s in ("multiverse", "multiverse-http", "optimum", "transformers") if any(r["system"] == s for r in ok)]
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
    title = (f"{Path(str(report['bundle'].get('source'))).name} ({report['bundle'].get('model_type')}, "
             f"{report['bundle'].get('precision')}) on {report['host']['cpu']}")
    seq_ticks = sorted({r["seq_len"] for r in ok})

    def x_axis(ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(seq_ticks)
        ax.set_xticklabels([str(s) for s in seq_ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("sequence length (tokens)")

    def series(system, c, b, key):
        pts = sorted((r["seq_len"], r["stats"][key]) for r in ok
                     if r["system"] == system and r["cores"] == c and r["batch_size"] == b)
        return [p[0] for p in pts], [p[1] for p in pts]

    # throughput
    fig, axes = plt.subplots(1, len(cores), figsize=(max(5.5, 4.2 * len(cores)), 3.8), squeeze=False, sharey=True)
    for ax, c in zip(axes[0], cores):
        for system in systems:
            for i, b in enumerate(batches):
                x, y = series(system, c, b, "samples_per_s")
                if x:
                    ax.plot(x, y, linestyle=styles[i % len(styles)], marker=".", color=_COLORS.get(system),
                            label=f"{system} b{b}")
        x_axis(ax)
        ax.set_yscale("log")
        ax.set_title(f"{c} core{'s' if c != 1 else ''}" if c else "server")
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
        ax.set_title((f"{c} core{'s' if c != 1 else ''}" if c else "server") + f", batch {b0}")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("end-to-end latency (ms)")
    axes[0][-1].legend(fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "latency.png")
    fig.savefig(written[-1], dpi=dpi)
    plt.close(fig)

    # speed-up
    sp = report["speedups"]
    if sp:
        baselines = sorted({s["baseline"] for s in sp})
        fig, axes = plt.subplots(1, len(baselines), figsize=(max(5.5, 4.6 * len(baselines)), 3.8), squeeze=False)
        for ax, base in zip(axes[0], baselines):
            for c in sorted({s["cores"] for s in sp}):
                for i, b in enumerate(batches):
                    pts = sorted((s["seq_len"], s["p50"]) for s in sp if s["baseline"] == base and s["cores"] == c
                                 and s["batch_size"] == b)
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", linestyle=styles[i % len(styles)],
                                label=f"{c}c b{b}")
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


def write(report: dict, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``report.json``, ``report.csv`` and (``plots``) the PNGs into ``out_dir`` (created).
    Returns ``{"json", "csv", "png": [...]}`` paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Any] = {"json": out / "report.json", "csv": out / "report.csv"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    paths["csv"].write_text(to_csv(report), encoding="utf-8")
    paths["png"] = plot(report, out) if plots else []
    return paths


def table(report: dict, title: str | None = None):
    """A rich Table: one row per cell and system (p50/p90/p99/mean ms, req/s, samples/s, speed-up vs transformers)."""
    from rich.table import Table

    sp = {(s["cores"], s["seq_len"], s["batch_size"], s["baseline"]): s["p50"] for s in report["speedups"]}
    bases = [s for s in report["config"]["systems"] if s not in ("multiverse", "multiverse-http")]
    t = Table(title=title or f"{report['bundle'].get('source')} on {report['host']['cpu']}", title_style="bold")
    for col in ("cores", "seq", "batch", "system", "p50 ms", "p90 ms", "p99 ms", "mean ms", "req/s", "samples/s"):
        t.add_column(col, justify="right" if col != "system" else "left")
    for base in bases:
        t.add_column(f"× {base}", justify="right")
    has_http = any(r.get("http") for r in report["results"])
    if has_http:
        t.add_column("server p50 ms", justify="right")
    for r in report["results"]:
        st = r.get("stats")
        key = (r["cores"], r["seq_len"], r["batch_size"])
        head = [str(r["cores"]) if r["cores"] is not None else "srv", str(r["seq_len"]), str(r["batch_size"]), r["system"]]
        if st:
            cells = [f"{st['p50_ms']:.2f}", f"{st['p90_ms']:.2f}", f"{st['p99_ms']:.2f}", f"{st['mean_ms']:.2f}",
                     f"{st['req_per_s']:.1f}", f"{st['samples_per_s']:.1f}"]
            extra = [f"{sp[key + (b,)]:.1f}" if r["system"] == "multiverse" and key + (b,) in sp else "" for b in bases]
        else:
            cells = [f"[dim]{r['status']}[/dim]", "", "", "", "", ""]
            extra = [""] * len(bases)
        if has_http:
            extra.append(f"{r['http']['compute_time']['p50_ms']:.2f}" if r.get("http") else "")
        t.add_row(*head, *cells, *extra)
    return t


def markdown_table(report: dict, batch_size: int = 1, cores: int | None = None) -> str:
    """A Markdown table for READMEs: per sequence length, p50/p99 (ms) of every system and the p50 speed-ups."""
    ok = {(r["system"], r["cores"], r["seq_len"], r["batch_size"]): r["stats"] for r in _ok(report)}
    systems = [s for s in report["config"]["systems"]]
    cores = cores if cores is not None else max((k[1] for k in ok if k[1] is not None), default=None)
    seqs = sorted({k[2] for k in ok if k[1] == cores and k[3] == batch_size})
    bases = [s for s in systems if s != "multiverse"]
    head = ["seq len"] + [f"{s} p50 / p99 (ms)" for s in systems] + [f"× {b} (p50)" for b in bases]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in seqs:
        row = [str(s)]
        for system in systems:
            st = ok.get((system, cores, s, batch_size))
            row.append(f"{st['p50_ms']:.2f} / {st['p99_ms']:.2f}" if st else "-")
        mv = ok.get(("multiverse", cores, s, batch_size))
        for b in bases:
            st = ok.get((b, cores, s, batch_size))
            row.append(f"{st['p50_ms'] / mv['p50_ms']:.1f}×" if st and mv else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


class RichBenchProgress:
    """A rich progress bar over the cells (stderr), for ``multiverse benchmark``; implements ``runner.BenchProgress``."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        if console is None and not self.console.is_terminal:  # CI logs: never cut a number with "…" (rich
            self.console = Console(stderr=True, width=max(self.console.width, 240))  # assumes 80 columns there)
        self._progress = None
        self._task = None

    def start(self, total: int) -> None:
        """Show a bar over ``total`` steps."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.stop()
        self._progress = Progress(TextColumn("[bold]benchmark"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                  TextColumn("{task.description}"), console=self.console, transient=False)
        self._progress.start()
        self._task = self._progress.add_task("", total=total)

    def advance(self, description: str, n: int = 1) -> None:
        """Advance the bar and show what finished (one line per step when stderr is not a terminal)."""
        if self._progress is not None and not self.console.is_terminal:
            task = self._progress.tasks[0]
            self.console.print(f"  [{int(task.completed) + n}/{int(task.total or 0)}] {description}", highlight=False,
                               soft_wrap=True)
        if self._progress is not None:
            self._progress.update(self._task, advance=n, description=description)

    def log(self, message: str) -> None:
        """Print a line above the bar."""
        (self._progress.console if self._progress else self.console).print(f"  {message}", highlight=False,
                                                                            soft_wrap=True)  # never wrapped in logs

    def stop(self) -> None:
        """Remove the live bar (its last state stays printed)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
