"""Pinned benchmark workers (``concurrent.futures`` with a spawn context and a pinning initializer) and the
report's pydantic models against the reports shipped in ``benchmarks/results``. No model is loaded here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multiverse.benchmark import report
from multiverse.benchmark.schema import Report
from multiverse.benchmark.workers import PinnedProcess, TaskFailed, WorkerLost, time_slice

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "benchmarks" / "results").glob("*/report.json"))


def _one_cpu() -> list[int]:
    return sorted(os.sched_getaffinity(0))[-1:] if hasattr(os, "sched_getaffinity") else [0]


def _gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_the_worker_module_imports_no_numerical_library():
    # The spawned child imports it (to run the initializer) before it pins: numpy/ORT/torch must come later.
    code = ("import sys, multiverse.benchmark.workers; "
            "print(sorted(m for m in ('numpy', 'onnxruntime', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux affinity")
def test_the_process_is_pinned_with_capped_threads_and_reports_task_errors():
    cpus = _one_cpu()
    with PinnedProcess("multiverse", cpus, 1) as w:
        assert w.call(os.sched_getaffinity, 0, timeout_s=120) == set(cpus)
        assert [w.call(os.getenv, v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")] == ["1"] * 3
        pid = w.call(os.getpid)
        assert pid != os.getpid()
        with pytest.raises(TaskFailed, match=r"^RuntimeError: no system was built"):  # one cell fails ...
            w.call(time_slice, ["text"], None)
        assert w.call(os.getpid) == pid and w.error is None  # ... and the same process goes on


def test_a_hanging_task_times_out_and_its_process_is_terminated():
    w = PinnedProcess("optimum", _one_cpu(), 1)
    try:
        pid = w.call(os.getpid, timeout_s=120)
        t0 = time.monotonic()
        with pytest.raises(WorkerLost, match="the optimum process did not answer within 1 s"):
            w.call(time.sleep, 60, timeout_s=1)
        assert time.monotonic() - t0 < 30 and _gone(pid)
        with pytest.raises(WorkerLost, match="did not answer"):  # every later call fails at once
            w.call(os.getpid, timeout_s=1)
    finally:
        w.close()


def test_a_process_that_dies_is_reported_not_waited_for():
    with PinnedProcess("transformers", _one_cpu(), 1) as w:
        with pytest.raises(WorkerLost, match="the transformers process died"):
            w.call(os._exit, 3, timeout_s=120)
        assert w.error and "died" in w.error


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_shipped_reports_read_and_write_back_byte_for_byte(path, tmp_path):
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text)
    rep = Report.model_validate(doc)
    assert rep.to_dict() == doc and list(rep.to_dict()) == list(doc)  # same keys, same order, nothing added
    report.validate_report(doc)
    written = report.write(doc, tmp_path, plots=False)
    assert written["json"].read_text(encoding="utf-8") == text
    assert written["csv"].read_text(encoding="utf-8") == (path.parent / "report.csv").read_text(encoding="utf-8")


def test_a_bad_row_is_named_in_the_validation_error():
    doc = json.loads(SHIPPED[0].read_text(encoding="utf-8"))
    doc["results"][1]["status"] = "crashed"
    with pytest.raises(ValueError, match=r"report\.results\[1\]\.status"):
        report.validate_report(doc)
