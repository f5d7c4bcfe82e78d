"""The benchmark report on screen: a rich table, a Markdown table for READMEs, and the rich progress bar."""

from __future__ import annotations

from .schema import Report

_OWN = ("multiverse", "multiverse-http")


def table(report: Report | dict, title: str | None = None):
    """A rich Table titled with the bundle's source, its runtime and version (``onnxruntime 1.23.2``) and the CPU:
    one row per cell and system (p50/p90/p99/mean ms, req/s, samples/s, speed-up vs each baseline, and the server's
    p50 for rows measured over HTTP)."""
    from rich.table import Table

    rep = Report.of(report)
    sp = {(s.cores, s.seq_len, s.batch_size, s.baseline): s.p50 for s in rep.speedups}
    bases = [s for s in rep.config.systems if s not in _OWN]
    runtime = rep.bundle.runtime or {}
    engine = f" ({runtime.get('name')} {runtime.get('version') or ''})".replace(" )", ")") if runtime else ""
    t = Table(title=title or f"{rep.bundle.source}{engine} on {rep.host.cpu}", title_style="bold")
    for col in ("cores", "seq", "batch", "system", "p50 ms", "p90 ms", "p99 ms", "mean ms", "req/s", "samples/s"):
        t.add_column(col, justify="right" if col != "system" else "left")
    for base in bases:
        t.add_column(f"× {base}", justify="right")
    has_http = any(r.http for r in rep.results)
    if has_http:
        t.add_column("server p50 ms", justify="right")
    for r in rep.results:
        st = r.stats
        head = [str(r.cores) if r.cores is not None else "srv", str(r.seq_len), str(r.batch_size), r.system]
        if st:
            cells = [f"{st.p50_ms:.2f}", f"{st.p90_ms:.2f}", f"{st.p99_ms:.2f}", f"{st.mean_ms:.2f}",
                     f"{st.req_per_s:.1f}", f"{st.samples_per_s:.1f}"]
            extra = [f"{sp[r.key + (b,)]:.1f}" if r.system == "multiverse" and r.key + (b,) in sp else "" for b in bases]
        else:
            cells = [f"[dim]{r.status}[/dim]", "", "", "", "", ""]
            extra = [""] * len(bases)
        if has_http:
            extra.append(f"{r.http['compute_time'].p50_ms:.2f}" if r.http else "")
        t.add_row(*head, *cells, *extra)
    return t


def markdown_table(report: Report | dict, batch_size: int = 1, cores: int | None = None) -> str:
    """A Markdown table for READMEs: per sequence length, p50/p99 (ms) of every system and the p50 speed-ups
    (baseline p50 / Multiverse p50) at ``batch_size`` and ``cores`` (default: the most cores measured)."""
    rep = Report.of(report)
    ok = {(r.system, *r.key): r.stats for r in rep.ok()}
    systems = list(rep.config.systems)
    cores = cores if cores is not None else max((k[1] for k in ok if k[1] is not None), default=None)
    seqs = sorted({k[2] for k in ok if k[1] == cores and k[3] == batch_size})
    bases = [s for s in systems if s != "multiverse"]
    head = ["seq len"] + [f"{s} p50 / p99 (ms)" for s in systems] + [f"× {b} (p50)" for b in bases]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in seqs:
        row = [str(s)]
        for system in systems:
            st = ok.get((system, cores, s, batch_size))
            row.append(f"{st.p50_ms:.2f} / {st.p99_ms:.2f}" if st else "-")
        mv = ok.get(("multiverse", cores, s, batch_size))
        for b in bases:
            st = ok.get((b, cores, s, batch_size))
            row.append(f"{st.p50_ms / mv.p50_ms:.1f}×" if st and mv else "-")
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
