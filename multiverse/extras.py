"""Which optional installs are present, checked without importing them (the serving path stays lean).

The base install is the serving runtime; ``optimize``, ``validate`` and the PyTorch side of
``benchmark`` need the ``optimize`` extra (torch, transformers, optimum-onnx, onnx,
neural-compressor, sentence-transformers, datasets).
"""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def no_telemetry():
    """While the block runs, OpenVINO's converter (``openvino.convert_model``) and NNCF send no usage telemetry.

    Both send events to Google Analytics through ``openvino-telemetry`` unless the user opted out or ``CI=true``
    (their ``disable_in_ci``; NNCF also reads ``NNCF_CI`` when it is first imported), and on Linux every event
    forks the process (``multiprocessing.Process``) to send it. Offline, a forked child can hang in DNS resolution on a
    lock another thread held at the fork; it then ignores ``terminate()``, because the SIGTERM handler of
    ``workdir.unwind_on_signals`` only runs between bytecodes, and the build hung at exit in ``multiprocessing``'s
    join (seen in CI: ``getaddrinfo("www.google-analytics.com")`` in the child, the parent in ``Py_Exit``). A build
    tool should not phone home either. Sets both variables for the block and restores them after."""
    saved = {k: os.environ.get(k) for k in ("CI", "NNCF_CI")}
    os.environ.update({"CI": "true", "NNCF_CI": "1"})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def import_openvino():
    """``import openvino`` (returns the module) inside :func:`no_telemetry`: importing ``openvino`` imports its
    converter, which sends a telemetry event (one forked process) at import time. Only the first import in a process
    counts; every Multiverse path calls this before its own ``import openvino``. Raises ImportError when it is not
    installed."""
    with no_telemetry():
        import openvino

    return openvino
