"""One exception tree for Multiverse.

Every error message says what went wrong *and what to do next*. Each class carries the
process exit code the CLI uses (``exit_code``) and, for errors a request can cause, the HTTP
status and ``error_type`` the server answers with (``http_status``, ``error_type``): only
``cli.py`` turns errors into exit codes and only ``multiverse.serve`` into HTTP responses, each
by reading these attributes, never by a table of its own.
"""

from __future__ import annotations


class MultiverseError(Exception):
    """Base class of every error Multiverse raises on purpose.

    ``exit_code`` is the process exit code the CLI uses: 1 runtime error, 2 usage or
    recipe error, 3 accuracy gate failed.
    """

    exit_code: int = 1
    http_status: int = 500
    error_type: str = "InternalServerError"


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
    http_status = 422
    error_type = "InvalidInput"


class RequestTooLarge(InputError):
    """A request carries more tokens than the server's per-request budget (TEI's ``max_batch_tokens``).

    The message names the limit and the request's token count; the client should split the batch.
    """

    http_status = 413
    error_type = "PayloadTooLarge"


class InputTooLong(InputError):
    """A text (or pair) has more tokens than the model's limit and the request said not to truncate it
    (``truncate: false``). TEI answers this 422 ("`inputs` must have less than N tokens"); so does Multiverse.
    The client should shorten the text, or allow truncation."""

    error_type = "InputTooLong"


class TooManyCharacters(InputError):
    """A text (or one side of a pair) has more characters than the server accepts per text (``--max-chars``),
    checked before tokenizing and whatever ``truncate`` says: truncation cannot help, since the server refuses to
    tokenize it. TEI answers its own character limit 422 ("`inputs` must have less than N characters"); so does
    Multiverse. The client should split or shorten the text; the operator can raise ``--max-chars``."""

    error_type = "TooManyCharacters"


class ImageError(MultiverseError):
    """A container image could not be built: no working container engine, the build or save failed."""


class BenchmarkError(MultiverseError):
    """A benchmark system could not be built or run (missing original checkpoint, optimum failure, server unreachable)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while a command ran (see :func:`multiverse.workdir.unwind_on_signals`).

    A ``BaseException`` like ``KeyboardInterrupt``, so ``except Exception`` blocks do not swallow it and
    every ``finally`` (work-folder cleanup, atomic bundle writes) runs while it unwinds. ``exit_code`` is
    the shell convention for death by that signal: 128 + signal number (130 SIGINT, 143 SIGTERM).
    """

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")
