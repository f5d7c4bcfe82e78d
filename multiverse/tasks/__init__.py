"""Per-task pre/post-processing. Serving imports only onnxruntime, tokenizers and numpy from here."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import feature_extraction, ranking, text_classification, token_classification
from .base import Encoded, TextTokenizer, max_sequence_length

TASKS = ("feature-extraction", "text-classification", "token-classification", "ranking")

_HANDLERS = {
    "feature-extraction": feature_extraction.Handler,
    "text-classification": text_classification.Handler,
    "token-classification": token_classification.Handler,
    "ranking": ranking.Handler,
}


def make_handler(task: str, model_dir: str | Path, config: dict):
    """The post-processing handler of ``task`` (one of :data:`TASKS`). Raises UsageError for an unknown task."""
    try:
        cls = _HANDLERS[task]
    except KeyError:
        raise UsageError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.") from None
    return cls(model_dir, config)


__all__ = ["TASKS", "Encoded", "TextTokenizer", "make_handler", "max_sequence_length"]
