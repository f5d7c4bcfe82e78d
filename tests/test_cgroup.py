"""Threads come from the container's CPU quota: fake cgroup v1 and v2 trees (tmp dirs), no real cgroups."""

from __future__ import annotations

from pathlib import Path

import pytest

from multiverse.runtime import cgroup_cpu_quota, physical_cores


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp_path: Path, cpu_max: str | None, own: str = "/", parent_max: str | None = None) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    if cpu_max is not None:
        _write(root / own.strip("/") / "cpu.max", cpu_max)
    if parent_max is not None:
        _write((root / own.strip("/")).parent / "cpu.max", parent_max)
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, f"0::{own}\n")
    return root, proc


def _v1(tmp_path: Path, quota: int, period: int = 100000, mount: str = "cpu", own: str = "/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    d = root / mount / own.strip("/")
    _write(d / "cpu.cfs_quota_us", f"{quota}\n")
    _write(d / "cpu.cfs_period_us", f"{period}\n")
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, f"4:memory:{own}\n2:cpuacct,cpu:{own}\n0::/\n" if mount != "cpu" else f"4:memory:{own}\n1:cpu:{own}\n0::/\n")
    return root, proc


@pytest.mark.parametrize("cpu_max, expected", [("200000 100000\n", 2.0), ("150000 100000", 1.5),
                                               ("max 100000\n", None), ("garbage", None)])
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, expected):
    root, proc = _v2(tmp_path, cpu_max)
    assert cgroup_cpu_quota(root, proc) == expected


def test_cgroup_v2_nested_path_and_ancestor_limit(tmp_path):
    # Host-side view (no cgroup namespace): the process sits in a nested cgroup; the parent's limit is tighter.
    root, proc = _v2(tmp_path, "400000 100000", own="/kubepods/pod1/ctr", parent_max="100000 100000")
    assert cgroup_cpu_quota(root, proc) == 1.0


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(tmp_path, mount):
    root, proc = _v1(tmp_path, 300000, mount=mount)
    assert cgroup_cpu_quota(root, proc) == 3.0


def test_cgroup_v1_unlimited_and_missing(tmp_path):
    root, proc = _v1(tmp_path, -1)
    assert cgroup_cpu_quota(root, proc) is None
    assert cgroup_cpu_quota(tmp_path / "nowhere", tmp_path / "nothing") is None


def test_cgroup_v1_nested_own_path(tmp_path):
    root, proc = _v1(tmp_path, 50000, own="/docker/abc")
    assert cgroup_cpu_quota(root, proc) == 0.5


def test_physical_cores_capped_by_quota(tmp_path):
    unlimited = physical_cores(*_v1(tmp_path / "a", -1))
    root, proc = _v2(tmp_path / "b", "100000 100000")
    assert physical_cores(root, proc) == 1
    root, proc = _v2(tmp_path / "c", "50000 100000")  # half a CPU still gets one thread
    assert physical_cores(root, proc) == 1
    root, proc = _v2(tmp_path / "d", f"{100000 * (unlimited + 4)} 100000")  # a quota above the cores changes nothing
    assert physical_cores(root, proc) == unlimited
