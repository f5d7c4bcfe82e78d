"""token-classification (NER): per-token softmax and entity aggregation with character offsets.

Aggregation follows the Hugging Face pipeline's ``aggregation_strategy="simple"``: a ``B-X``
token starts an entity, following ``I-X`` tokens (or tokens of the same bare label ``X``)
extend it, ``O`` ends it. The entity's ``word`` is exactly ``text[start:end]`` from the
tokenizer's character offsets, never decoded tokens (PITFALLS.md, Task output parity).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Encoded
from .text_classification import id2label, softmax

OUTPUT = "logits"


def split_tag(label: str) -> tuple[str, str]:
    """``"B-PER"`` → ``("B", "PER")``; ``"O"`` → ``("O", "")``; a bare ``"PER"`` → ``("I", "PER")``."""
    if label == "O" or not label:
        return "O", ""
    if len(label) > 2 and label[1] in "-_" and label[0] in "BIES":
        return label[0], label[2:]
    return "I", label


def aggregate(text: str, offsets: list[tuple[int, int]], special: list[int], probs: np.ndarray,
              labels: list[str], ignore: tuple[str, ...] = ("O",)) -> list[dict]:
    """Group token predictions of one text into entities.

    Args:
        text: the original text.
        offsets: (start, end) character offsets per token into ``text``.
        special: 1 for special/padding tokens (skipped).
        probs: float32 [seq_len, num_labels] token probabilities.
    Returns:
        ``[{"entity_group", "score", "word", "start", "end"}]`` with ``word == text[start:end]``.
    """
    entities: list[dict] = []
    current: dict | None = None
    for i, (start, end) in enumerate(offsets):
        if special[i] or end <= start:
            continue
        best = int(probs[i].argmax())
        prefix, kind = split_tag(labels[best])
        score = float(probs[i, best])
        if labels[best] in ignore or prefix == "O":
            current = None
            continue
        if current is not None and kind == current["entity_group"] and prefix in ("I", "E"):
            current["end"] = end
            current["_scores"].append(score)
            continue
        if current is not None and kind == current["entity_group"] and start == current["end"] and prefix == "B" \
                and not text[start - 1:start].isspace():
            # A sub-word piece predicted B- inside a word continues the entity.
            current["end"] = end
            current["_scores"].append(score)
            continue
        current = {"entity_group": kind, "start": start, "end": end, "_scores": [score]}
        entities.append(current)
    out = []
    for e in entities:
        out.append({"entity_group": e["entity_group"], "score": float(np.mean(e["_scores"])),
                    "word": text[e["start"]:e["end"]], "start": e["start"], "end": e["end"]})
    return out


class Handler:
    """Logits [batch, seq_len, num_labels] → entities per text."""

    name = "token-classification"
    output = OUTPUT
    accepts_pairs = False
    requires_pairs = False
    reference_class = "AutoModelForTokenClassification"
    optimum_task = "token-classification"
    pipeline_task = "token-classification"
    pipeline_kwargs: dict = {"aggregation_strategy": "simple"}
    ort_model_class = "ORTModelForTokenClassification"

    @staticmethod
    def agreement(reference: list, candidate: list) -> dict:
        """``entity_agreement``: fraction of texts with identical entity groups and spans."""
        def key(r):
            return [(e.get("entity_group") or e.get("entity"), e.get("start"), e.get("end")) for e in r]

        return {"n": len(reference),
                "entity_agreement": sum(key(x) == key(y) for x, y in zip(reference, candidate)) / len(reference)}

    def __init__(self, model_dir: str | Path, config: dict):
        self.config = config

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list[list[dict]]:
        params = params or {}
        probs = softmax(output)
        labels = id2label(self.config, probs.shape[-1])
        ignore = tuple(params.get("ignore_labels") or ("O",))
        out = []
        for b, (text, e) in enumerate(zip(enc.texts, enc.encodings)):
            special = [max(s, 1 - a) for s, a in zip(e.special_tokens_mask, e.attention_mask)]
            out.append(aggregate(text, e.offsets, special, probs[b], labels, ignore))
        return out
