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
SPINNING = "session.intra_op.allow_spinning"  # "1" (default here): idle intra-op threads spin; "0": they sleep

# A MatMulInteger graph, A uint8 [M, 64] × constant B int8 [64, 16] all 127 (opset 13, IR 8),
# serialized with onnx.helper and zlib-compressed (tests/test_x64quantprecision.py rebuilds it).
# With A all 255 every output is 255 * 127 * 64 = 2,072,640 exactly; the u8s8 VPMADDUBSW
# kernels that ONNX Runtime uses where VNNI is missing saturate each pair of products at
# 32,767 and return 1,048,544.
_U8S8_PROBE = ("eNrj4BDiyi3NKcksSy0qTrW6zcElwcXoyMXoJMQYqcTrm1jiW5rjmVeSmp5aJMRValFsEV9QlJ+UqtXDweHAISDA7MTo5NXAUT8KRsEoGLEgShBYa"
               "AjxcHFxMAmxcTFwMXE4JAGFIsFCbFAhAScWLgYBXgC3kBHS")


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def _own_cgroup_dirs(root: Path, proc_self_cgroup: Path, controller: str | None) -> list[Path]:
    """This process's cgroup folder under ``root`` and every ancestor up to ``root``, innermost first.

    ``controller`` None reads the cgroup v2 line (``0::/path``); otherwise the v1 line whose
    controller list contains it (``4:cpu,cpuacct:/path``). Inside a container with its own cgroup
    namespace the path is ``/`` and the list is just ``[root]``.
    """
    rel = "/"
    try:
        for line in proc_self_cgroup.read_text().splitlines():
            hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
            if (controller is None and hid == "0" and controllers == "") or (
                    controller is not None and controller in controllers.split(",")):
                rel = path or "/"
                break
    except OSError:
        pass
    dirs, cur = [], root / rel.strip("/")
    while True:
        dirs.append(cur)
        if cur == root or root not in cur.parents:
            return dirs
        cur = cur.parent


def cgroup_cpu_quota(root: str | os.PathLike = CGROUP_ROOT,
                     proc_self_cgroup: str | os.PathLike = PROC_SELF_CGROUP) -> float | None:
    """CPUs this process may use by its cgroup CPU quota, or None when no quota applies.

    cgroup v2: ``<root>/<own path>/cpu.max`` (``"200000 100000"`` → 2.0; ``"max 100000"`` → no
    quota). cgroup v1: ``<root>/cpu/<own path>/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    (``-1`` → no quota; the ``cpu,cpuacct`` mount name is tried too). Ancestors are read as well
    and the smallest quota wins, as the kernel enforces every level. This is what
    ``docker run --cpus 2`` / a Kubernetes CPU limit sets, and what ONNX Runtime's thread pool
    should be sized from instead of the host's core count.

    Args:
        root: the cgroup mount (default ``/sys/fs/cgroup``); tests pass a fake tree.
        proc_self_cgroup: the ``/proc/self/cgroup`` file naming this process's cgroup.

    Returns: a float number of CPUs (may be fractional, e.g. 1.5), or None. Never raises:
    unreadable or malformed files count as "no quota".
    """
    root, proc = Path(root), Path(proc_self_cgroup)
    quotas: list[float] = []
    if (root / "cgroup.controllers").exists() or any(d.joinpath("cpu.max").is_file()
                                                     for d in _own_cgroup_dirs(root, proc, None)):
        for d in _own_cgroup_dirs(root, proc, None):
            try:
                quota, period = d.joinpath("cpu.max").read_text().split()[:2]
                if quota != "max" and int(period) > 0 and int(quota) > 0:
                    quotas.append(int(quota) / int(period))
            except (OSError, ValueError):
                continue
    else:
        for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            base = root / mount
            if not base.is_dir():
                continue
            for d in _own_cgroup_dirs(base, proc, "cpu"):
                try:
                    q = int(d.joinpath("cpu.cfs_quota_us").read_text())
                    p = int(d.joinpath("cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                if q > 0 and p > 0:
                    quotas.append(q / p)
            break
    return min(quotas) if quotas else None


def physical_cores(cgroup_root: str | os.PathLike = CGROUP_ROOT,
                   proc_self_cgroup: str | os.PathLike = PROC_SELF_CGROUP) -> int:
    """Physical cores this process may use: the affinity mask, minus SMT siblings, capped by the cgroup quota.

    Never the host's logical CPU count: ORT with one thread per hyper-thread, or more
    threads than the container's quota, loses most of the int8 speed-up.
    A fractional quota rounds down (1.5 CPUs → 1 thread), never below 1.

    Args:
        cgroup_root, proc_self_cgroup: passed to :func:`cgroup_cpu_quota` (tests use fake trees).
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
    quota = cgroup_cpu_quota(cgroup_root, proc_self_cgroup)
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
    0.976 to PyTorch measured under valgrind).
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


def engine_version(name: str) -> str | None:
    """The version of runtime ``name`` (``onnxruntime`` or ``openvino``) installed in this process, e.g. ``1.23.2``
    or ``2026.4.1``; None when it is not installed. Imports nothing new (OpenVINO's is read from its metadata)."""
    if name == "openvino":
        from .ovsession import openvino_version

        return openvino_version()
    return ort.__version__


def engine_info(name: str, manifest: dict | None = None) -> dict:
    """The runtime that runs a bundle: ``{"name": name, "version": engine_version(name), "version_built": ...}``,
    ``version_built`` being the version the bundle's ``manifest`` records under ``runtime.engine`` (the one that
    validated it), None when the manifest records none or another runtime."""
    recorded = ((manifest or {}).get("runtime") or {}).get("engine") or {}
    return {"name": name, "version": engine_version(name),
            "version_built": recorded.get("version") if recorded.get("name", name) == name else None}


def make_session(
    model_path: str | os.PathLike | bytes,
    threads: int | None = None,
    session_config: Mapping[str, str] | None = None,
    *,
    enable_profiling: bool = False,
) -> ort.InferenceSession:
    """Create the ONNX Runtime CPU session used everywhere.

    Args:
        model_path: ``.onnx`` file, or a serialized graph (bytes, under 2 GB).
        threads: intra-op threads; default :func:`physical_cores`. Inter-op is always 1
            (sequential execution: encoder graphs are a chain).
        session_config: target-specific ``SessionOptions.add_session_config_entry`` pairs,
            e.g. ``{"session.x64quantprecision": "1"}`` on CPUs without VNNI. That option is
            also added whenever :func:`u8s8_gemm_saturates` (the runtime lacks VNNI whatever
            the target or ``/proc/cpuinfo`` says); it is exact but costs about 1.5× CPU time
            per int8 GEMM where VNNI exists, so it is not set there.
        enable_profiling: write an ORT profile JSON (for the benchmark's one-cell profile).

    An OpenVINO IR (``.xml``) opens as :class:`multiverse.ovsession.OpenVinoSession` (same calls; OpenVINO
    compile properties from ``openvino.``-prefixed ``session_config`` entries; ``enable_profiling`` ignored).

    Raises:
        onnxruntime exceptions propagate; callers wrap them in their stage's error.
        MissingExtraError: an IR without the ``openvino`` package.
    """
    if not isinstance(model_path, bytes) and str(model_path).endswith(".xml"):
        from .ovsession import OpenVinoSession

        return OpenVinoSession(model_path, int(threads or physical_cores()), session_config)
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or physical_cores())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Graph is already fused offline by fuse.py; ORT's own online passes (constant folding,
    # layout) are still worth running and are deterministic.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    config = {SPINNING: "1", **(session_config or {})}  # one entry per key: ORT warns when a key is set twice
    if X64_QUANT_PRECISION not in config and u8s8_gemm_saturates():
        config[X64_QUANT_PRECISION] = "1"
    for key, value in config.items():
        so.add_session_config_entry(str(key), str(value))
    so.enable_profiling = enable_profiling
    model = model_path if isinstance(model_path, bytes) else str(model_path)
    return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
