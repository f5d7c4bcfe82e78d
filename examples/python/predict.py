"""Run a bundle in-process: the same pipeline `multiverse serve` runs behind /predict.

    python examples/python/predict.py BUNDLE "first text" "second text" ...

Runs with the lean runtime install (no torch). Prints one JSON result per text
(an embedding, labels with scores, entities, or a relevance score, by the bundle's task).
"""

import argparse
import json

import multiverse


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("texts", nargs="+")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: cores within the CPU quota)")
    args = ap.parse_args()
    predictor = multiverse.Predictor.from_bundle(args.bundle, threads=args.threads)
    inputs = args.texts
    if predictor.task == "ranking":  # a ranker scores (query, passage) pairs: the first text is the query
        inputs = [(args.texts[0], passage) for passage in args.texts[1:]]
    prediction = predictor.predict(inputs)
    for text, result in zip(args.texts if predictor.task != "ranking" else args.texts[1:], prediction.results):
        print(json.dumps({"text": text, "result": result}))
    print(f"# {len(prediction.results)} results in {prediction.total_ms:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
