"""The single place where ONNX Runtime sessions are configured.

Serve, benchmark and validate all call :func:`make_session`, so what is measured is what
is served. Imports only onnxruntime and the standard library (serving path).
"""

from __future__ import annotations

import base64
import functools
import logging
import math
import os
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

X64_QUANT_PRECISION = "session.x64quantprecision"

# A MatMulInteger graph, A uint8 [M, 64] × constant B int8 [64, 16] all 127 (opset 13, IR 8),
# serialized with onnx.helper and zlib-compressed (tests/test_x64quantprecision.py rebuilds it).
# With A all 255 every output is 255 * 127 * 64 = 2,072,640 exactly; the u8s8 VPMADDUBSW
# kernels that ONNX Runtime uses where VNNI is missing saturate each pair of products at
# 32,767 and return 1,048,544.
_U8S8_PROBE = ("eNrj4BDiyi3NKcksSy0qTrW6zcElwcXoyMXoJMQYqcTrm1jiW5rjmVeSmp5aJMRValFsEV9QlJ+UqtXDweHAISDA7MTo5NXAUT8KRsEoGLEgShBYa"
               "AjxcHFxMAmxcTFwMXE4JAGFIsFCbFAhAScWLgYBXgC3kBHS")


def cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def physical_cores() -> int:
    """Physical cores this process may use: the affinity mask, minus SMT siblings, capped by the cgroup quota.

    Never the host's logical CPU count: ORT with one thread per hyper-thread, or more
    threads than the container's quota, loses most of the int8 speed-up (PITFALLS.md).
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cpus = list(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            cores.add(("0", str(cpu)))
    n = max(1, len(cores))
    quota = cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return n


@functools.lru_cache(maxsize=1)
def u8s8_gemm_saturates() -> bool:
    """True when *this process's* ONNX Runtime computes u8×s8 int8 GEMMs with saturation.

    Runs a 64-deep MatMulInteger (uint8 255 × int8 127) through ORT's CPU kernels once per
    process (about 10 ms) and compares with the exact sum. It trusts the runtime, not
    ``/proc/cpuinfo``: an environment that hides AVX-512 VNNI from the process while the
    flags file still lists it (valgrind; some hypervisors) makes MLAS pick the saturating
    ``VPMADDUBSW`` path, and s8-weight bundles then silently return wrong outputs (cosine
    0.976 to PyTorch measured under valgrind, PITFALLS.md).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(zlib.decompress(base64.b64decode(_U8S8_PROBE)), sess_options=so,
                                   providers=["CPUExecutionProvider"])
    y = session.run(None, {"A": np.full((2, 64), 255, dtype=np.uint8)})[0]
    saturates = not bool((y == 255 * 127 * 64).all())
    if saturates:
        logging.getLogger("multiverse").warning(
            "ONNX Runtime's int8 GEMM in this process takes the non-VNNI (saturating u8s8) path, whatever "
            "/proc/cpuinfo lists; sessions set session.x64quantprecision=1 so int8 outputs stay exact (slower).")
    return saturates


def make_session(
    model_path: str | os.PathLike,
    threads: int | None = None,
    session_config: Mapping[str, str] | None = None,
    *,
    enable_profiling: bool = False,
) -> ort.InferenceSession:
    """Create the ONNX Runtime CPU session used everywhere.

    Args:
        model_path: ``.onnx`` file.
        threads: intra-op threads; default :func:`physical_cores`. Inter-op is always 1
            (sequential execution: encoder graphs are a chain).
        session_config: target-specific ``SessionOptions.add_session_config_entry`` pairs,
            e.g. ``{"session.x64quantprecision": "1"}`` on CPUs without VNNI. That option is
            also added whenever :func:`u8s8_gemm_saturates` (the runtime lacks VNNI whatever
            the target or ``/proc/cpuinfo`` says); it is exact but costs about 1.5× CPU time
            per int8 GEMM where VNNI exists, so it is not set there.
        enable_profiling: write an ORT profile JSON (for the benchmark's one-cell profile).

    Raises:
        onnxruntime exceptions propagate; callers wrap them in their stage's error.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or physical_cores())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Graph is already fused offline by fuse.py; ORT's own online passes (constant folding,
    # layout) are still worth running and are deterministic.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    config = dict(session_config or {})
    if X64_QUANT_PRECISION not in config and u8s8_gemm_saturates():
        config[X64_QUANT_PRECISION] = "1"
    for key, value in config.items():
        so.add_session_config_entry(str(key), str(value))
    so.enable_profiling = enable_profiling
    return ort.InferenceSession(str(model_path), sess_options=so, providers=["CPUExecutionProvider"])
