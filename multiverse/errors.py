"""One exception tree for Multiverse.

Every error message says what went wrong *and what to do next*. Only ``cli.py`` maps
these to exit codes (``exit_code``) and only ``multiverse.serve`` maps them to HTTP statuses.
"""

from __future__ import annotations


class MultiverseError(Exception):
    """Base class of every error Multiverse raises on purpose.

    ``exit_code`` is the process exit code the CLI uses: 1 runtime error, 2 usage or
    recipe error, 3 accuracy gate failed.
    """

    exit_code: int = 1


class UsageError(MultiverseError):
    """Bad command-line input (unknown task, existing output folder, bad option value)."""

    exit_code = 2


class MissingExtraError(UsageError):
    """A command needs an optional install (the ``optimize`` build stack) that is not installed."""


class RecipeError(MultiverseError):
    """A recipe YAML is missing, malformed, or names an unknown target or key."""

    exit_code = 2


class HubError(MultiverseError):
    """A model could not be found or read (Hub id, HF cache, local folder, short name)."""


class ExportError(MultiverseError):
    """ONNX export failed, or the exported graph disagrees with PyTorch."""


class FusionError(MultiverseError):
    """The ONNX Runtime transformer optimizer fused less than the architecture requires."""


class QuantizationError(MultiverseError):
    """onnxruntime.quantization failed on the graph."""


class EvalDataError(MultiverseError):
    """Evaluation data is unreadable, empty, unlabelled where labels are needed, or of the wrong shape."""

    exit_code = 2


class AccuracyGateError(MultiverseError):
    """The optimised model lost more accuracy than the tolerance allows.

    ``report`` holds the :class:`multiverse.validate.ValidationReport` (or the tuning
    report) that failed, so callers can print the numbers.
    """

    exit_code = 3

    def __init__(self, message: str, report: object | None = None):
        super().__init__(message)
        self.report = report


class BundleError(MultiverseError):
    """A bundle is missing, corrupted (hash mismatch), of an unknown schema, or unsafe to load."""


class IsaMismatchError(BundleError):
    """The host CPU lacks instruction-set flags that the bundle's target requires."""


class InputError(MultiverseError):
    """A request's inputs are invalid for the bundle's task (empty, wrong shape, too large)."""

    exit_code = 2


class ImageError(MultiverseError):
    """A container image could not be built: no working container engine, the build or save failed."""


class BenchmarkError(MultiverseError):
    """A benchmark system could not be built or run (missing original checkpoint, optimum failure, server unreachable)."""
