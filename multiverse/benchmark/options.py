"""Command-line options → a benchmark plan → a report (what ``multiverse benchmark`` calls)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from .baselines import BASELINES
from .grid import (QUICK_BATCH_SIZES, QUICK_CORES, QUICK_SEQ_LENS, SEED_BATCH_SIZES, SEED_CORES, SEED_SEQ_LENS,
                   parse_int_list)
from .runner import BenchProgress, GridSpec
from ..timing import DEFAULT_BUDGET, QUICK_BUDGET


def parse_baselines(values: Sequence[str] | None) -> list[str]:
    """``["transformers", "optimum", "openvino"]``, ``["transformers,optimum"]`` or ``["none"]`` → baseline names.

    Raises UsageError for an unknown name."""
    names: list[str] = []
    for v in values or []:
        for name in str(v).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name == "none":
                return []
            if name not in BASELINES:
                raise UsageError(f"Unknown baseline {name!r}; choose from {', '.join(BASELINES)} or none.")
            names.append(name)
    return list(dict.fromkeys(names))


def plan(*, cores=None, seq_lens=None, batch_sizes=None, quick: bool = False, baselines=("transformers",),
         min_runs: int | None = None, min_seconds: float | None = None, max_seconds: float | None = None,
         accuracy: bool = True) -> GridSpec:
    """The :class:`runner.GridSpec` for the options: seed grid by default, the quick grid and budget with ``quick``;
    explicit axes and budget values override either. Raises UsageError for bad values, MissingExtraError for the
    ``openvino`` baseline without the ``peers`` extra (before anything runs)."""
    names = parse_baselines(baselines)
    if "openvino" in names:
        from .openvino_system import require_openvino

        require_openvino("`multiverse benchmark --baseline openvino`")
    budget = QUICK_BUDGET if quick else DEFAULT_BUDGET
    if min_runs is not None:
        if min_runs < 1:
            raise UsageError("--min-runs must be at least 1.")
        budget = replace(budget, min_runs=min_runs, floor_runs=min(budget.floor_runs, min_runs))
    if min_seconds is not None:
        if min_seconds < 0:
            raise UsageError("--min-seconds must be >= 0.")
        budget = replace(budget, min_seconds=min_seconds, max_seconds=max(budget.max_seconds, min_seconds))
    if max_seconds is not None:
        if max_seconds <= 0:
            raise UsageError("--max-seconds must be > 0.")
        budget = replace(budget, max_seconds=max_seconds)
    return GridSpec(
        cores=parse_int_list(cores, "--cores", QUICK_CORES if quick else SEED_CORES),
        seq_lens=parse_int_list(seq_lens, "--seq-lens", QUICK_SEQ_LENS if quick else SEED_SEQ_LENS),
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes", QUICK_BATCH_SIZES if quick else SEED_BATCH_SIZES),
        systems=("multiverse", *names),
        budget=budget,
        accuracy=accuracy,
    )


def execute(bundle: str | Path, spec: GridSpec, *, checkpoint: str | Path | None = None, http: str | None = None,
            api_key: str | None = None, profile: bool = False, work_dir: str | Path | None = None,
            progress: BenchProgress | None = None) -> dict:
    """Run ``spec`` on ``bundle`` (or, with ``http``, against a running server) and return the report dict.

    ``profile`` adds a profile of one cell (the most cores that ran, the longest length, batch 1) under
    ``report["profile"]``: ONNX Runtime's profiler, or OpenVINO's per-layer counters for an IR bundle (with a
    note in ``report["notes"]`` saying so). Errors: see ``runner.run_grid`` and ``http.run_http``.
    """
    if http:
        from .http import run_http

        rep = run_http(http, bundle, spec.seq_lens, spec.batch_sizes, budget=spec.budget, api_key=api_key,
                       progress=progress)
        dropped = [s for s in spec.systems if s != "multiverse"]
        if dropped:  # the server is timed alone: baselines run in-process, not behind this server's URL
            rep["notes"].append(f"--http times the server only; baseline(s) {', '.join(dropped)} were not run (run "
                                "`multiverse benchmark BUNDLE` without --http to compare them)")
        return rep
    from .runner import profile_cell, run_grid

    rep = run_grid(bundle, spec, checkpoint=checkpoint, work_dir=work_dir, progress=progress)
    if profile:
        ran = [r for r in rep["results"] if r["status"] == "ok" and r["system"] == "multiverse"]
        if ran:
            c = max(r["cores"] for r in ran)
            s = max(r["seq_len"] for r in ran if r["cores"] == c)
            rep["profile"] = profile_cell(bundle, c, s, 1)
            if rep["profile"].get("note"):  # an OpenVINO bundle: say which profiler the op table comes from
                rep["notes"].append(f"--profile: {rep['profile']['note']}")
    return rep
