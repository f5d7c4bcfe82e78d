"""Check a bundle the way `multiverse inspect` does: manifest, sha256 of every file, can this CPU run it.

    python examples/python/inspect_bundle.py BUNDLE

Runs with the lean runtime install (no torch). Exit code 1 when a file is corrupted.
"""

import argparse
import json

from multiverse.bundle import Bundle, read_manifest, verify_files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    args = ap.parse_args()
    manifest = read_manifest(args.bundle)
    problems = verify_files(args.bundle)
    b = Bundle(args.bundle, manifest)
    print(json.dumps({
        "task": b.task,
        "target": manifest["target"]["name"],
        "precision": manifest.get("precision"),
        "validated": b.passed,
        "intact": not problems,
        "problems": problems,
        "host_missing_flags": b.missing_flags(),
        "runtime": (manifest.get("runtime") or {}).get("requirements", {}).get("onnxruntime"),
    }, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
