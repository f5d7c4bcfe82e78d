"""Test helpers: offline checkpoints (tiny random and MiniLM-based trained) and a simulated Hub cache."""

from .checkpoints import (BIO_LABELS, MODEL_TYPES, SENTIMENT_LABELS, TASKS, bbc_classifier, bbc_ranker,
                          bbc_weak_classifier, hf_offline, tiny_checkpoint, torch_threads, wnut_ner, write_hf_cache)

__all__ = ["BIO_LABELS", "MODEL_TYPES", "SENTIMENT_LABELS", "TASKS", "bbc_classifier", "bbc_ranker",
           "bbc_weak_classifier", "hf_offline", "tiny_checkpoint", "torch_threads", "wnut_ner", "write_hf_cache"]
