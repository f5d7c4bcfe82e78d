"""``multiverse benchmark``: the seed's 192-cell grid (cores × sequence lengths × batch sizes), end to end,
side by side with vanilla transformers and optimum-onnx (DESIGN.md §8).

Modules: ``grid`` (expansion, skipping, CPU picking), ``texts`` (real text cut to exact token counts),
``baselines`` (the systems), ``workers`` (pinned spawned processes on ``concurrent.futures``), ``runner`` (the
grid over those processes), ``profile`` (ORT profile of one cell), ``http`` (a running server), ``schema``
(the report's pydantic models), ``report`` (JSON, CSV, PNGs) and ``views`` (rich and Markdown tables).
Timing and statistics are ``multiverse.timing``. Importing this package imports no numerical library (the
pinned workers import it before pinning), so the ``timing`` names below are resolved on first use.
"""

from .grid import (QUICK_BATCH_SIZES, QUICK_CORES, QUICK_SEQ_LENS, SEED_BATCH_SIZES, SEED_CORES, SEED_SEQ_LENS, Cell,
                   expand, parse_int_list)

_TIMING = ("DEFAULT_BUDGET", "QUICK_BUDGET", "Budget", "LatencyStats", "measure", "summarize")

__all__ = ["Cell", "expand", "parse_int_list", "Budget", "LatencyStats", "measure", "summarize", "DEFAULT_BUDGET",
           "QUICK_BUDGET", "SEED_CORES", "SEED_SEQ_LENS", "SEED_BATCH_SIZES", "QUICK_CORES", "QUICK_SEQ_LENS",
           "QUICK_BATCH_SIZES", "run_grid", "GridSpec", "profile_cell"]


def __getattr__(name):
    if name in _TIMING:
        from .. import timing

        return getattr(timing, name)
    if name in ("run_grid", "GridSpec", "profile_cell", "BenchProgress"):
        from . import runner

        return getattr(runner, name)
    if name == "run_http":
        from .http import run_http

        return run_http
    raise AttributeError(name)
