"""How busy the host is, so benchmark scripts can wait for a quiet moment (timing on a shared host is noise)."""

from __future__ import annotations

import time
from typing import Callable


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction (0..1) of the host's CPU time used by anything over ``seconds``, from /proc/stat (Linux)."""
    def snap():
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15, say: Callable[[str], None] | None = None,
                   sample_s: float = 1.0) -> float:
    """Wait up to ``max_wait_s`` seconds until the host is less than ``threshold`` busy (sampled over ``sample_s``
    seconds, every 10 s); ``say`` gets one line per wait. Returns the last busy fraction."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy(sample_s)
    while busy > threshold and time.monotonic() < deadline:
        if say:
            say(f"host is {busy:.0%} busy; waiting for a quiet moment …")
        time.sleep(10)
        busy = cpu_busy(sample_s)
    return busy
