"""Optimize a checkpoint for a CPU target with the library API and print what ships.

    python examples/python/optimize.py [MODEL] [--target native] [--out multiverse-bundles]

MODEL: a Hub id, a local folder or a short recipe name; default the embedded all-MiniLM-L6-v2.
Needs the build stack: pip install "multiverse[optimize]".
"""

import argparse

import multiverse
from multiverse.errors import AccuracyGateError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--target", default="native")
    ap.add_argument("--out", default="multiverse-bundles")
    ap.add_argument("--tolerance", type=float, default=0.01)
    args = ap.parse_args()
    try:
        bundle = multiverse.optimize(args.model, args.target, out=args.out, tolerance=args.tolerance, overwrite=True)
    except AccuracyGateError as exc:  # exit code 3, like the CLI
        print(f"accuracy gate failed: {exc}")
        return 3
    m = bundle.manifest
    v = m["validation"]
    print(f"bundle:    {bundle.path}")
    print(f"precision: {m['precision']} for {m['target']['name']}")
    print(f"accuracy:  {v['metric']} {v['optimised']:.4f} vs {v['reference']:.4f} (passed: {v['passed']})")
    print(f"runtime:   onnxruntime=={m['runtime']['requirements']['onnxruntime']} (pinned in requirements.txt)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
