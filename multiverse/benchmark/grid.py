"""The benchmark grid: which (cores, sequence length, batch size) cells to run, and which this host cannot.

Pure Python (no onnxruntime/torch): the runner imports it in a child process *before* pinning
the CPU affinity and loading the numerical libraries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import UsageError

#: The seed's 192-experiment grid: 4 core counts × 8 sequence lengths × 6 batch sizes.
SEED_CORES: tuple[int, ...] = (1, 2, 4, 8)
SEED_SEQ_LENS: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 384, 512)
SEED_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

#: ``--quick``: a small grid (8 cells, fewer where the host has one core).
QUICK_CORES: tuple[int, ...] = (1, 2)
QUICK_SEQ_LENS: tuple[int, ...] = (8, 128)
QUICK_BATCH_SIZES: tuple[int, ...] = (1, 8)


@dataclass(frozen=True, order=True)
class Cell:
    """One experiment: ``cores`` pinned physical cores (= threads), ``batch_size`` texts of exactly
    ``seq_len`` tokens each (special tokens included). ``skip_reason`` is set when the host cannot run it."""

    cores: int
    seq_len: int
    batch_size: int
    skip_reason: str | None = None

    @property
    def skipped(self) -> bool:
        """True when the host cannot run this cell (see ``skip_reason``)."""
        return self.skip_reason is not None

    @property
    def key(self) -> tuple[int, int, int]:
        """``(cores, seq_len, batch_size)``."""
        return (self.cores, self.seq_len, self.batch_size)


def parse_int_list(value: str | Sequence[int] | None, name: str, default: Sequence[int]) -> tuple[int, ...]:
    """``"1,2,4"`` (or a sequence of ints) → ``(1, 2, 4)``; None or ``""`` → ``default``.

    Duplicates are dropped and the order is ascending. Raises UsageError for anything that is
    not a comma-separated list of positive integers, naming the option ``name``.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return tuple(default)
    items: Iterable = value.split(",") if isinstance(value, str) else value
    out = set()
    for item in items:
        text = str(item).strip()
        try:
            n = int(text)
        except ValueError:
            raise UsageError(f"{name} {value!r}: {text!r} is not an integer; pass a comma-separated list such as 1,2,4.") from None
        if n <= 0:
            raise UsageError(f"{name} {value!r}: values must be positive integers, got {n}.")
        out.add(n)
    if not out:
        raise UsageError(f"{name} is empty; pass a comma-separated list such as 1,2,4.")
    return tuple(sorted(out))


def expand(cores: Sequence[int], seq_lens: Sequence[int], batch_sizes: Sequence[int], *,
           available_cores: int, max_length: int | None = None) -> list[Cell]:
    """Every (cores, seq_len, batch_size) combination, in run order (cores, then length, then batch).

    Args:
        available_cores: physical cores this process may use (``runtime.physical_cores()``).
        max_length: the model's usable sequence length in tokens; longer cells are skipped.

    Returns one :class:`Cell` per combination; cells asking for more cores than available, or a
    length over ``max_length``, carry a ``skip_reason`` instead of being dropped or invented.
    """
    cells = []
    for c in sorted(set(cores)):
        for s in sorted(set(seq_lens)):
            for b in sorted(set(batch_sizes)):
                reason = None
                if c > available_cores:
                    reason = f"needs {c} physical cores; this host allows {available_cores}"
                elif max_length is not None and s > max_length:
                    reason = f"sequence length {s} exceeds the model's limit of {max_length} tokens"
                cells.append(Cell(c, s, b, reason))
    return cells


def require_runnable(cells: Sequence[Cell], *, available_cores: int, max_length: int | None) -> None:
    """Raise UsageError (exit 2) when every cell of the grid would be skipped, naming each reason and the option
    values this host and model allow (``--cores`` up to ``available_cores``, ``--seq-lens`` up to
    ``max_length`` tokens): a run that measures nothing is a mistake in the command line, not a result."""
    if not cells or any(not c.skipped for c in cells):
        return
    reasons = sorted({c.skip_reason for c in cells})
    fixes = []
    if any(c.cores > available_cores for c in cells):
        fixes.append(f"--cores at most {available_cores}")
    if max_length is not None and any(c.seq_len > max_length for c in cells):
        fixes.append(f"--seq-lens at most {max_length}")
    raise UsageError(f"Every benchmark cell would be skipped ({'; '.join(reasons)}), so nothing would be measured. "
                     f"Choose {' and '.join(fixes) or 'a grid this host can run'}.")


def cpu_topology(cpus: Iterable[int] | None = None) -> dict[tuple[str, str], list[int]]:
    """Allowed logical CPUs grouped by physical core: ``{(package_id, core_id): [cpu, ...]}``, in CPU order."""
    if cpus is None:
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - macOS
            cpus = list(range(os.cpu_count() or 1))
    cores: dict[tuple[str, str], list[int]] = {}
    for cpu in sorted(cpus):
        base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            key = ((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip())
        except OSError:
            key = ("0", f"cpu{cpu}")
        cores.setdefault(key, []).append(cpu)
    return cores


def pick_cpus(n: int, topology: dict[tuple[str, str], list[int]] | None = None) -> list[int]:
    """``n`` logical CPUs on ``n`` distinct physical cores (one hyper-thread each), packages filled in order.

    Raises UsageError when fewer than ``n`` physical cores are allowed.
    """
    topology = cpu_topology() if topology is None else topology
    if n > len(topology):
        raise UsageError(f"{n} cores requested but only {len(topology)} physical cores are allowed here.")
    ordered = sorted(topology.items(), key=lambda kv: (kv[0][0], kv[1][0]))
    return [cpus[0] for _, cpus in ordered[:n]]
