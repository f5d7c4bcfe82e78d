"""Build time: ``multiverse optimize`` vs optimum-onnx's export + O2 + avx512_vnni dynamic quantization, same model,
same host, same run (goal: Multiverse ≤ 3× optimum).

Each build runs in its own process (``--repeats`` times, alternating M O M O … so that both see the same host
drift); reported per build: wall seconds and CPU seconds of the child (user + system, ``resource.getrusage``),
and the host's load average before it. The ratio is taken on the medians. CPU seconds say how much work a
build does whatever else the host runs; wall seconds are what a user waits.

Default model: the DistilBERT-base-shaped classifier of ``peers.py`` (built into ``--work`` if missing).

    python benchmarks/build_time.py [--model PATH] [--repeats 1] [--compare SOURCE_TREE] [--out results/build_time.json]

``--compare /work/main`` also builds with another source tree's ``multiverse`` (its folder on ``PYTHONPATH``),
alternating with the others: the speed-up of a change measured under the same host drift.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent

OPTIMUM = """
import sys
from multiverse.benchmark.baselines import build_optimum
print(build_optimum(sys.argv[1], sys.argv[2], sys.argv[3]))
"""
MULTIVERSE = """
import sys
from multiverse.cli import main
sys.argv = ["multiverse", "optimize", *sys.argv[1:]]
sys.exit(main())
"""


def timed(cmd: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (in ``env``, default this process's); wall and child CPU seconds, the 1-minute load average
    before, the exit code."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        # in the log's folder: a source tree in the current folder would shadow PYTHONPATH ('' comes first)
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or os.environ, cwd=log.parent).returncode
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "loadavg_1m": round(load, 2), "exit_code": rc,
            "log": str(log)}


def stages(log: Path) -> tuple[dict[str, float], list[str]]:
    """Where a Multiverse build's time went, from its progress log: ``{stage: seconds}`` ("✓ export  done: … (10.7 s)")
    and the tuner's trial labels in the order they ran."""
    import re

    text = log.read_text(errors="replace")
    done = {m[1]: float(m[2]) for m in re.finditer(r"✓ (\w+)\s+done: .*\(([\d.]+) s\)$", text, re.M)}
    trials = re.findall(r"^\[\s*[\d.]+s\]\s{3}(\S.*?)\s{2,}\S+ [\d.]+ \(gate loss", text, re.M)
    return done, trials


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the DistilBERT-base shape)")
    ap.add_argument("--task", default="text-classification")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--compare", default=None, metavar="SOURCE_TREE",
                    help="also build with the multiverse package of this source tree (e.g. a checkout of main), "
                         "as system 'multiverse-compare', in the same alternation")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "results" / "build_time.json"))
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="build-time-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        sys.path.insert(0, str(ROOT))
        from peers import build_distilbert

        model = str(build_distilbert(work / "distilbert"))
    runs = []
    systems = ("multiverse", "optimum") + (("multiverse-compare",) if args.compare else ())
    for rep in range(args.repeats):
        for system in systems:
            env = None
            if system == "optimum":
                out = work / f"optimum-{rep}"
                shutil.rmtree(out, ignore_errors=True)  # build_optimum reuses an earlier build in the same folder
                cmd = [sys.executable, "-c", OPTIMUM, model, args.task, str(out)]
            else:
                cmd = [sys.executable, "-c", MULTIVERSE, model, "--target", "icelake", "--overwrite",
                       "--out", str(work / f"{system}-{rep}")]
                if system == "multiverse-compare":
                    env = {**os.environ, "PYTHONPATH": str(Path(args.compare).resolve())}
            r = {"system": system, "repeat": rep, **timed(cmd, work / f"{system}-{rep}.log", env)}
            if system != "optimum":
                r["stages_s"], r["trials"] = stages(Path(r["log"]))
            print(r, flush=True)
            runs.append(r)
    med = {s: {k: statistics.median(r[k] for r in runs if r["system"] == s) for k in ("wall_s", "cpu_s")}
           for s in systems}
    ratio = {k: round(med["multiverse"][k] / med["optimum"][k], 2) for k in ("wall_s", "cpu_s")}
    report = {"model": model, "repeats": args.repeats, "runs": runs, "median": med, "multiverse_over_optimum": ratio,
              "goal": "multiverse_over_optimum.wall_s <= 3"}
    if args.compare:
        report["compare"] = {"source_tree": args.compare, "multiverse_compare_over_optimum": {
            k: round(med["multiverse-compare"][k] / med["optimum"][k], 2) for k in ("wall_s", "cpu_s")}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({"median": med, "ratio": ratio}, indent=1))


if __name__ == "__main__":
    main()
