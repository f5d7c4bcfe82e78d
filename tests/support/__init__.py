"""Test-only helpers (not shipped in the wheel): offline checkpoints, tiny random and MiniLM-based
trained, and a simulated Hub cache. Importable as ``support`` from ``tests/`` (pytest puts that
folder on ``sys.path``) and from ``benchmarks/`` scripts (which add it)."""

from .hubcache import hf_offline, write_hf_cache
from .ranker import bbc_ranker
from .tiny import BIO_LABELS, MODEL_TYPES, SENTIMENT_LABELS, TASKS, tiny_checkpoint
from .trained import bbc_classifier, torch_threads, wnut_ner
from .weak import bbc_weak_classifier

__all__ = ["BIO_LABELS", "MODEL_TYPES", "SENTIMENT_LABELS", "TASKS", "bbc_classifier", "bbc_ranker", "bbc_weak_classifier", "hf_offline",
           "tiny_checkpoint", "torch_threads", "wnut_ner", "write_hf_cache"]
