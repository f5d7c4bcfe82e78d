"""Multiverse: make transformer encoders fast on CPUs.

Library API::

    import multiverse
    bundle = multiverse.optimize("sentence-transformers/all-MiniLM-L6-v2", target="icelake")
    predictor = multiverse.Predictor.from_bundle(bundle.path)
    predictor.predict(["Hello world"]).results
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: serving must not import torch/transformers through here
    if name == "optimize":
        from .extras import require_optimize

        require_optimize("multiverse.optimize")  # MissingExtraError: pip install "multiverse[optimize]"
        from .pipeline import optimize

        return optimize
    if name == "Predictor":
        from .inference import Predictor

        return Predictor
    if name == "load_bundle":
        from .bundle import load

        return load
    raise AttributeError(name)


__all__ = ["__version__", "optimize", "Predictor", "load_bundle"]
