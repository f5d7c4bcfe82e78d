"""Which optional installs are present, checked without importing them (the serving path stays lean).

The base install is the serving runtime; ``optimize``, ``validate`` and the PyTorch side of
``benchmark`` need the ``optimize`` extra (torch, transformers, optimum-onnx, onnx,
neural-compressor, sentence-transformers, datasets).
"""

from __future__ import annotations

from importlib import metadata

#: Distributions of the ``optimize`` extra that the build stack cannot work without.
OPTIMIZE_DISTRIBUTIONS = ("torch", "transformers", "optimum-onnx", "onnx", "neural-compressor",
                          "sentence-transformers", "datasets")
#: Top-level module names of those distributions (and of optimum, which optimum-onnx extends).
OPTIMIZE_MODULES = frozenset({"torch", "transformers", "optimum", "onnx", "neural_compressor",
                              "sentence_transformers", "datasets"})
HINT = 'pip install "multiverse[optimize]"'


def missing_distributions(dists) -> list[str]:
    """Those of ``dists`` (distribution names, as pip spells them) that are not installed; imports nothing."""
    missing = []
    for dist in dists:
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return missing


def missing_optimize() -> list[str]:
    """Distributions of the ``optimize`` extra that are not installed (``[]`` when all are)."""
    return missing_distributions(OPTIMIZE_DISTRIBUTIONS)


def message(what: str, missing: list[str] | tuple[str, ...]) -> str:
    """The one-line error: what needs the build stack, what is missing, the install command."""
    return f"{what} needs the build stack ({', '.join(missing)} not installed): {HINT}"


def require_optimize(what: str) -> None:
    """Raises MissingExtraError (exit code 2) with a one-line ``pip install "multiverse[optimize]"`` hint
    when any distribution of the ``optimize`` extra is missing. Imports nothing."""
    from .errors import MissingExtraError

    missing = missing_optimize()
    if missing:
        raise MissingExtraError(message(what, missing))
