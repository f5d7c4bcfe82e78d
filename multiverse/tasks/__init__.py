"""Per-task pre/post-processing. Serving imports only onnxruntime, tokenizers and numpy from here."""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from . import feature_extraction, ranking, text_classification, token_classification
from .base import Encoded, Task, TaskParams, TextTokenizer, max_sequence_length

#: Every task, by name → its :class:`~multiverse.tasks.base.Task` (the task module's ``Handler`` class).
TASKS: dict[str, type[Task]] = {t.name: t for t in (feature_extraction.Handler, text_classification.Handler,
                                                    token_classification.Handler, ranking.Handler)}


def get_task(task: str) -> type[Task]:
    """The :class:`~multiverse.tasks.base.Task` named ``task``. Raises UsageError for an unknown task."""
    try:
        return TASKS[task]
    except KeyError:
        raise UsageError(f"Unknown task {task!r}; choose one of: {', '.join(TASKS)}.") from None


def make_handler(task: str, model_dir: str | Path, config: dict) -> Task:
    """The task object of ``task`` for one model (its ``config.json`` as ``config``). Raises UsageError for an
    unknown task."""
    return get_task(task)(model_dir, config)


__all__ = ["TASKS", "Encoded", "Task", "TaskParams", "TextTokenizer", "get_task", "make_handler", "max_sequence_length"]
