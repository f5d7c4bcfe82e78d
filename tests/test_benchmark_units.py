"""Benchmark library units: grid expansion and skipping, statistics from an injected clock, report schema."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from multiverse import timing as stats
from multiverse.benchmark import grid, report
from multiverse.benchmark.options import parse_baselines, plan
from multiverse.errors import UsageError


# ---- grid -------------------------------------------------------------------------------------

def test_seed_grid_is_the_192_experiments():
    cells = grid.expand(grid.SEED_CORES, grid.SEED_SEQ_LENS, grid.SEED_BATCH_SIZES, available_cores=8)
    assert len(cells) == 4 * 8 * 6 == 192
    assert not any(c.skipped for c in cells)
    assert cells[0].key == (1, 8, 1) and cells[-1].key == (8, 512, 32)
    assert [c.key for c in cells] == sorted(c.key for c in cells)  # run order: cores, length, batch


def test_cells_the_host_cannot_run_are_skipped_with_a_reason_not_dropped():
    cells = grid.expand([1, 2, 4, 8], [8, 512], [1], available_cores=2, max_length=256)
    by = {c.key: c for c in cells}
    assert len(cells) == 8
    assert not by[(1, 8, 1)].skipped and not by[(2, 8, 1)].skipped
    assert by[(4, 8, 1)].skipped and "4 physical cores" in by[(4, 8, 1)].skip_reason and "allows 2" in by[(4, 8, 1)].skip_reason
    assert by[(8, 8, 1)].skipped
    assert by[(1, 512, 1)].skipped and "256" in by[(1, 512, 1)].skip_reason


def test_parse_int_list():
    assert grid.parse_int_list("4, 1,2,2", "--cores", (9,)) == (1, 2, 4)
    assert grid.parse_int_list(None, "--cores", (1, 2)) == (1, 2)
    assert grid.parse_int_list("", "--cores", (3,)) == (3,)
    assert grid.parse_int_list([8, 16], "--seq-lens", ()) == (8, 16)
    for bad in ("1,x", "0", "-2", ",,"):
        with pytest.raises(UsageError, match="--cores"):
            grid.parse_int_list(bad, "--cores", (1,))


def test_pick_cpus_takes_one_hyperthread_per_physical_core():
    topo = {("0", "0"): [0, 4], ("0", "1"): [1, 5], ("0", "2"): [2, 6], ("0", "3"): [3, 7]}
    assert grid.pick_cpus(2, topo) == [0, 1]
    assert grid.pick_cpus(4, topo) == [0, 1, 2, 3]
    with pytest.raises(UsageError):
        grid.pick_cpus(5, topo)
    assert len(grid.pick_cpus(1)) == 1  # this host


def test_options_plan_defaults_quick_and_overrides():
    p = plan()
    assert (p.cores, p.seq_lens, p.batch_sizes) == (grid.SEED_CORES, grid.SEED_SEQ_LENS, grid.SEED_BATCH_SIZES)
    assert p.systems == ("multiverse", "transformers") and p.budget == stats.DEFAULT_BUDGET
    q = plan(quick=True, baselines=["none"], min_runs=5)
    assert q.systems == ("multiverse",) and q.seq_lens == grid.QUICK_SEQ_LENS and q.budget.min_runs == 5
    assert len(grid.expand(q.cores, q.seq_lens, q.batch_sizes, available_cores=8)) <= 8
    assert parse_baselines(["transformers,optimum", "optimum"]) == ["transformers", "optimum"]
    with pytest.raises(UsageError, match="baseline"):
        parse_baselines(["tensorflow"])
    with pytest.raises(UsageError):
        plan(min_runs=0)


# ---- stats ------------------------------------------------------------------------------------

class FakeClock:
    """Each call to the measured function advances time by the next scripted duration (s)."""

    def __init__(self, durations):
        self.now = 100.0
        self.durations = list(durations)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def work(self):
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_measure_runs_until_min_runs_and_min_seconds_are_both_met():
    clock = FakeClock([0.010])
    m = stats.measure(clock.work, stats.Budget(warmup_runs=3, min_runs=5, min_seconds=0.1, max_seconds=10), clock=clock)
    # 3 warm-up calls untimed; 10 ms each: min_seconds (0.1 s) needs 10 calls, more than min_runs.
    assert clock.calls == 3 + 10 and len(m.durations) == 10 and not m.capped
    assert m.durations == pytest.approx([0.010] * 10)

    clock = FakeClock([0.5])
    m = stats.measure(clock.work, stats.Budget(warmup_runs=0, min_runs=7, min_seconds=0.1, max_seconds=100), clock=clock)
    assert len(m.durations) == 7 and not m.capped  # here min_runs binds


def test_measure_caps_very_slow_cells_but_keeps_a_floor():
    clock = FakeClock([4.0])
    m = stats.measure(clock.work, stats.Budget(warmup_runs=1, min_runs=20, min_seconds=1, max_seconds=10, floor_runs=3),
                      clock=clock)
    assert len(m.durations) == 3 and m.capped  # 12 s ≥ 10 s cap after the 3-run floor

    clock = FakeClock([4.0])  # warm-up of a slow cell stops after max_seconds / 3 (at least one call)
    stats.measure(clock.work, stats.Budget(warmup_runs=5, min_runs=1, min_seconds=0, max_seconds=9), clock=clock)
    assert clock.calls == 1 + 1


def test_summarize_percentiles_and_throughput_from_known_durations():
    ds = [0.001 * (i + 1) for i in range(100)]  # 1..100 ms
    s = stats.summarize(ds, batch_size=4)
    ms = np.array(ds) * 1e3
    assert s.n == 100 and s.min_ms == pytest.approx(1) and s.max_ms == pytest.approx(100)
    assert s.mean_ms == pytest.approx(50.5)
    for q, got in ((50, s.p50_ms), (90, s.p90_ms), (95, s.p95_ms), (99, s.p99_ms)):
        assert got == pytest.approx(np.percentile(ms, q))
    assert s.total_s == pytest.approx(5.05)
    assert s.req_per_s == pytest.approx(100 / 5.05) and s.samples_per_s == pytest.approx(4 * 100 / 5.05)
    assert s.std_ms == pytest.approx(np.std(ms, ddof=1))
    one = stats.summarize([0.002])
    assert one.p50_ms == one.p99_ms == one.min_ms == pytest.approx(2.0) and one.std_ms == 0
    with pytest.raises(ValueError):
        stats.summarize([])
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_measure_with_the_real_clock_times_the_call():
    import time

    m = stats.measure(lambda: time.sleep(0.002), stats.Budget(warmup_runs=1, min_runs=3, min_seconds=0.0))
    assert len(m.durations) == 3 and all(d >= 0.0019 for d in m.durations)


# ---- report -----------------------------------------------------------------------------------

def _fake_report(available_cores=2):
    bundle = SimpleNamespace(path=Path("/b"), manifest={"task": "text-classification", "target": {"name": "icelake"},
                                                         "precision": "int8", "model": {"model_type": "distilbert"},
                                                         "source": {"local_path": "/ckpt"}})
    cells = grid.expand([1, 2, 4], [8, 64], [1], available_cores=2)
    rows = []
    for c in cells:
        for system, scale in (("multiverse", 1.0), ("transformers", 10.0)):
            if c.skipped:
                rows.append({"system": system, "cores": c.cores, "seq_len": c.seq_len, "batch_size": c.batch_size,
                             "status": "skipped", "reason": c.skip_reason})
                continue
            ds = [scale * c.seq_len / c.cores * 1e-4 * (1 + 0.01 * i) for i in range(20)]
            row = {"system": system, "cores": c.cores, "seq_len": c.seq_len, "batch_size": c.batch_size,
                   "status": "ok", "capped": False, "loadavg_1m": 0.5, "stats": stats.summarize(ds, c.batch_size).to_dict()}
            if system == "multiverse":
                row["breakdown"] = {"tokenization_ms": 0.1, "inference_ms": 1.0, "postprocess_ms": 0.05}
            rows.append(row)
    return report.build_report(bundle=bundle, systems=["multiverse", "transformers"], cells=cells, rows=rows,
                               budget=stats.DEFAULT_BUDGET, accuracy={"optimum": {"n": 3, "label_agreement": 1.0}},
                               checkpoint="/ckpt", available_cores=available_cores).to_dict()


def test_report_schema_host_versions_results_and_speedups():
    rep = _fake_report()
    report.validate_report(rep)
    assert rep["schema"] == report.SCHEMA
    host = rep["host"]
    assert host["cpu"] and isinstance(host["flags"], list) and host["physical_cores"] >= 1
    assert rep["versions"]["onnxruntime"] and rep["versions"]["multiverse"]
    assert rep["config"]["cores"] == [1, 2, 4] and rep["config"]["budget"]["min_runs"] == stats.DEFAULT_BUDGET.min_runs
    statuses = {(r["system"], r["cores"], r["seq_len"]): r["status"] for r in rep["results"]}
    assert statuses[("multiverse", 4, 8)] == "skipped" and statuses[("transformers", 2, 64)] == "ok"
    sp = {(s["cores"], s["seq_len"]): s for s in rep["speedups"]}
    assert set(sp) == {(1, 8), (1, 64), (2, 8), (2, 64)}
    assert all(s["p50"] == pytest.approx(10.0) and s["throughput"] == pytest.approx(10.0) for s in sp.values())
    json.loads(json.dumps(rep))  # JSON-serialisable

    broken = json.loads(json.dumps(rep))
    broken["results"][0]["stats"].pop("p99_ms")
    with pytest.raises(ValueError, match="p99_ms"):
        report.validate_report(broken)
    broken = json.loads(json.dumps(rep))
    next(r for r in broken["results"] if r["status"] == "skipped").pop("reason")
    with pytest.raises(ValueError, match="reason"):
        report.validate_report(broken)


def test_report_notes_a_loaded_host():
    rep = _fake_report()
    assert not any("load average" in n for n in rep["notes"])
    rep["results"][0]["loadavg_1m"] = 9.0
    again = report.build_report(bundle=SimpleNamespace(path=Path("/b"), manifest={"task": "x"}), systems=["multiverse"],
                                cells=[], rows=rep["results"], budget=stats.DEFAULT_BUDGET, available_cores=2)
    assert any("load average reached 9.0" in n for n in again.notes)


def test_csv_table_markdown_and_plots(tmp_path):
    rep = _fake_report()
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    assert len(rows) == len(rep["results"]) and set(report.CSV_COLUMNS) == set(rows[0])
    mv = next(r for r in rows if r["system"] == "multiverse" and r["status"] == "ok")
    assert float(mv["speedup_p50_vs_transformers"]) == pytest.approx(10.0) and float(mv["inference_ms"]) == 1.0
    md = report.markdown_table(rep, batch_size=1, cores=2)
    assert md.count("\n") == 3 and "10.0×" in md
    paths = report.write(rep, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["schema"] == report.SCHEMA
    assert sorted(p.name for p in paths["png"]) == ["latency.png", "speedup.png", "throughput.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" and p.stat().st_size < 200_000 for p in paths["png"])
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report.table(rep))
    text = console.export_text()
    assert "multiverse" in text and "skipped" in text and "10.0" in text


def test_ort_profile_summary():
    from multiverse.benchmark.profile import summarize_ort_profile

    events = [
        {"cat": "Session", "name": "model_run", "dur": 2000},
        {"cat": "Session", "name": "model_run", "dur": 2000},
        {"cat": "Node", "name": "mm1_kernel_time", "dur": 1500, "args": {"op_name": "MatMulInteger"}},
        {"cat": "Node", "name": "mm2_kernel_time", "dur": 1500, "args": {"op_name": "MatMulInteger"}},
        {"cat": "Node", "name": "att_kernel_time", "dur": 1000, "args": {"op_name": "Attention"}},
        {"cat": "Node", "name": "att_fence_before", "dur": 5, "args": {"op_name": "Attention"}},
    ]
    s = summarize_ort_profile(events, runs=2)
    assert s["model_run_ms"] == pytest.approx(2.0) and s["kernel_ms"] == pytest.approx(2.0)
    assert s["ops"][0] == {"op_type": "MatMulInteger", "ms": 1.5, "share": 0.75, "nodes": 2}
    warm = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 90000},
            {"cat": "Node", "name": "w_kernel_time", "ts": 10, "dur": 80000, "args": {"op_name": "MatMulInteger"}}]
    later = [dict(e, ts=100000 + i) for i, e in enumerate(events)]
    s = summarize_ort_profile(warm + later, runs=2, skip_runs=1)  # the warm-up run is left out
    assert s["kernel_ms"] == pytest.approx(2.0) and s["model_run_ms"] == pytest.approx(2.0)


def test_http_system_records_client_latency_and_compute_time():
    import httpx

    from multiverse.benchmark.baselines import BenchmarkError
    from multiverse.benchmark.http import HttpSystem

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path != "/predict" or not body["inputs"]:
            return httpx.Response(400, json={"error": "bad"})
        return httpx.Response(200, json=[[{"label": "a", "score": 1.0}]] * len(body["inputs"]),
                              headers={"x-compute-time": "1.250"})

    system = HttpSystem("http://test", client=httpx.Client(transport=httpx.MockTransport(handler)))
    m = stats.measure(lambda: system(["one", "two"]), stats.Budget(warmup_runs=1, min_runs=4, min_seconds=0))
    assert len(m.durations) == 4 and system.compute_ms == [1.25] * 5
    with pytest.raises(BenchmarkError, match="400"):
        system([])


def test_interleaved_slices_split_the_budget_and_pool_durations():
    from multiverse.benchmark.runner import merge_slices, slice_budget

    b = stats.Budget(warmup_runs=5, min_runs=200, min_seconds=3.0, max_seconds=60.0, floor_runs=30)
    first, later = slice_budget(b, 3, True), slice_budget(b, 3, False)
    assert (first.warmup_runs, later.warmup_runs) == (5, 1)
    assert first.min_runs == 67 and first.min_seconds == pytest.approx(1.0) and first.max_seconds == 20 and first.floor_runs == 10
    slices = [{"durations": [0.001] * 10, "capped": False, "loadavg_1m": 0.5,
               "breakdown": {"tokenization_ms": 0.1, "inference_ms": 0.8, "postprocess_ms": 0.1}},
              {"durations": [0.003] * 10, "capped": True, "loadavg_1m": 1.5,
               "breakdown": {"tokenization_ms": 0.3, "inference_ms": 2.4, "postprocess_ms": 0.3}}]
    row = merge_slices("multiverse", 2, 8, 1, slices, [], cpus=[0, 1])
    assert row.status == "ok" and row.stats.n == 20 and row.capped and row.rounds == 2 and row.cpus == [0, 1]
    assert row.stats.p50_ms == pytest.approx(2.0) and row.loadavg_1m == 1.5
    assert row.breakdown["inference_ms"] == pytest.approx(1.6)
    bad = merge_slices("optimum", 2, 8, 1, slices[:1], ["RuntimeError: boom"])
    assert bad.status == "error" and "boom" in bad.reason
    assert list(bad.model_dump()) == ["system", "cores", "seq_len", "batch_size", "status", "reason"]


def test_http_report_keeps_server_and_compute_time():
    bundle = SimpleNamespace(path=Path("/b"), manifest={"task": "text-classification"})
    cells = grid.expand([1], [8], [2], available_cores=1)
    st = stats.summarize([0.002, 0.003], 2).to_dict()
    rows = [{"system": "multiverse-http", "cores": None, "seq_len": 8, "batch_size": 2, "status": "ok", "capped": False,
             "stats": st, "http": {"compute_time": stats.summarize([0.001, 0.001], 2).to_dict()}}]
    rep = report.build_report(bundle=bundle, systems=["multiverse-http"], cells=cells, rows=rows,
                              budget=stats.QUICK_BUDGET, server={"url": "http://x", "info": {}}).to_dict()
    report.validate_report(rep)
    assert list(rep)[-1] == "server" and rep["results"][0]["cores"] is None
    assert list(rep["results"][0]) == ["system", "cores", "seq_len", "batch_size", "status", "capped", "stats", "http"]
    assert rep["results"][0]["http"]["compute_time"]["p50_ms"] == pytest.approx(1.0) and rep["speedups"] == []
    without = report.build_report(bundle=bundle, systems=["multiverse-http"], cells=cells, rows=rows,
                                  budget=stats.QUICK_BUDGET).to_dict()
    assert "server" not in without and "available_cores" not in without["host"]
    row = next(csv.DictReader(io.StringIO(report.to_csv(rep))))
    assert row["cores"] == "" and float(row["http_compute_p50_ms"]) == pytest.approx(1.0)


def test_notes_say_why_cells_were_skipped_and_the_accuracy():
    """Skipped cells' reasons and the accuracy comparison reach the notes the CLI prints (not only the CSV/JSON)."""
    rep = _fake_report()
    assert any(n.startswith("4 cell(s) skipped: ") and "4" in n for n in rep["notes"]), rep["notes"]
    assert "accuracy of optimum vs PyTorch: n 3, label_agreement 1.0000" in rep["notes"]
    assert not any("no cell was measured" in n for n in rep["notes"])


def test_http_benchmark_says_the_baselines_were_not_run(monkeypatch):
    from multiverse.benchmark import http as http_mod, options

    monkeypatch.setattr(http_mod, "run_http", lambda *a, **k: {"notes": []})
    spec = options.plan(cores=None, seq_lens="8", batch_sizes="1", quick=True, baselines=["transformers"])
    rep = options.execute("bundle", spec, http="http://x")
    assert rep["notes"] == ["--http times the server only; baseline(s) transformers were not run (run `multiverse "
                            "benchmark BUNDLE` without --http to compare them)"]
    none = options.plan(cores=None, seq_lens="8", batch_sizes="1", quick=True, baselines=["none"])
    assert options.execute("bundle", none, http="http://x")["notes"] == []
