"""token-classification (NER): per-token softmax and entity aggregation with character offsets.

Grouping is exactly the Hugging Face ``token-classification`` pipeline's
``aggregation_strategy="simple"`` (transformers 4.57 ``TokenClassificationPipeline.group_entities``):
special tokens are skipped; each token takes its argmax label; a token joins the running group
when its tag (label without a ``B-``/``I-`` prefix; any other label is its own tag) equals the
group's and it is not ``B-``; a group's ``entity_group`` is its first label after the first
``-``, its score the mean of its tokens' scores; ``ignore_labels`` (default ``["O"]``; ``[]``
keeps everything) drops groups afterwards. Only the character span differs, on purpose
(the pipeline decodes tokens, which re-spaces or lower-cases the text): the entity's ``word`` is exactly
``text[start:end]`` from the tokenizer's offsets (never decoded tokens), stripped of
surrounding whitespace; a bare SentencePiece ``"▁"`` piece adds no characters (its offset is
the space before a word, or the word's first letter at the start of a text); an entity whose
span is then empty is dropped, and one that starts inside the previous kept entity (byte-level
pieces of one character) is cut to start after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Iterable

import numpy as np
from pydantic import Field, StringConstraints

from .. import metrics
from ..errors import EvalDataError, InputError
from .base import Encoded, TaskParams
from .evaluation import EvalSet, TaskOutputs, TaskScore, bound, need_column, need_labels, row_value
from .text_classification import id2label, softmax

OUTPUT = "logits"
METASPACE = "\u2581"  # "▁", SentencePiece's word-boundary marker


def split_tag(label: str) -> tuple[str, str]:
    """The HF pipeline's ``get_tag``: ``"B-PER"`` → ``("B", "PER")``, ``"I-PER"`` → ``("I", "PER")``;
    anything else (``"O"``, ``"PER"``, ``"E-PER"``) → ``("I", label)``."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _span(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def aggregate(text: str, offsets: list[tuple[int, int]], special: list[int], probs: np.ndarray,
              labels: list[str], ignore: tuple[str, ...] = ("O",), tokens: list[str] | None = None) -> list[dict]:
    """Group token predictions of one text into entities (see the module docstring for the rules).

    Args:
        text: the original text.
        offsets: (start, end) character offsets per token into ``text``.
        special: 1 for special/padding tokens (skipped, as the HF pipeline skips them).
        probs: float32 [seq_len, num_labels] token probabilities.
        labels: label name per class index.
        ignore: ``entity_group`` values to drop (``()`` keeps every group, ``O`` included).
        tokens: token strings (to recognise bare ``"▁"`` pieces); None treats none as bare.
    Returns:
        ``[{"entity_group", "score", "word", "start", "end"}]`` in text order, with
        ``word == text[start:end]``, non-empty, without surrounding whitespace, not overlapping.
    """
    best = probs.argmax(axis=-1)
    groups: list[list[int]] = []
    for i in range(len(offsets)):
        if special[i]:
            continue
        if groups:
            bi, tag = split_tag(labels[int(best[i])])
            if tag == split_tag(labels[int(best[groups[-1][-1]])])[1] and bi != "B":
                groups[-1].append(i)
                continue
        groups.append([i])
    out: list[dict] = []
    for group in groups:
        entity = labels[int(best[group[0]])].split("-", 1)[-1]
        if entity in ignore:
            continue
        chars = [offsets[i] for i in group
                 if offsets[i][1] > offsets[i][0] and not (tokens and tokens[i] and not tokens[i].strip(METASPACE))]
        if not chars:
            continue
        start, end = _span(text, chars[0][0], chars[-1][1])
        if out and start < out[-1]["end"]:
            start, end = _span(text, out[-1]["end"], max(end, out[-1]["end"]))
        if end <= start:
            continue
        score = float(np.nanmean([probs[i].max() for i in group]))
        out.append({"entity_group": entity, "score": score, "word": text[start:end], "start": start, "end": end})
    return out


def ignore_labels(params: dict) -> tuple[str, ...]:
    """``parameters.ignore_labels``: absent or None → ``("O",)``; a list (``[]`` ignores nothing).
    Raises InputError for anything but a list of strings."""
    value = params.get("ignore_labels")
    if value is None:
        return ("O",)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InputError("`ignore_labels` must be a list of label strings, e.g. [\"O\"] (or [] to keep every group).")
    return tuple(value)


def bio_to_spans(words: list[str], tags: list[str]) -> list[tuple[int, int, str]]:
    """Character spans ``(start, end, type)`` in ``" ".join(words)`` of the entities in BIO ``tags``.

    Chunking follows conlleval/seqeval (IOB2, default mode): an entity starts at ``B-X``, or at
    ``I-X`` not continuing an entity of type X; it ends before ``O``, ``B-*`` or an ``I-`` of
    another type. ``end`` is exclusive. Raises EvalDataError when lengths differ or a tag is
    not ``O``, ``B-TYPE`` or ``I-TYPE``.
    """
    if len(words) != len(tags):
        raise EvalDataError(f"{len(words)} tokens but {len(tags)} tags; give one BIO tag per token.")
    spans, current, offset = [], None, 0
    for word, tag in zip(words, tags):
        if not isinstance(tag, str) or (tag != "O" and tag[:2] not in ("B-", "I-")):
            raise EvalDataError(f"Tag {tag!r} is not a BIO tag; use the strings O, B-TYPE or I-TYPE.")
        if current and (tag == "O" or tag.startswith("B-") or tag[2:] != current[2]):
            spans.append(tuple(current))
            current = None
        if tag != "O":
            if current is None:
                current = [offset, offset + len(word), tag[2:]]
            current[1] = offset + len(word)
        offset += len(word) + 1
    if current:
        spans.append(tuple(current))
    return spans


def _check_entity_types(name: str, gold: list[set], config: dict) -> None:
    """Raises EvalDataError when the eval set's entity types and the model's (``config.json`` ``id2label``, BIO
    prefixes dropped) share none: every prediction would then be wrong, the reference's and the candidate's entity
    F1 would both be 0 and the gate could not fail. Skipped when the config names no labels or there is no gold
    entity."""
    model_types = {split_tag(str(v))[1] for v in (config.get("id2label") or {}).values()} - {"O"}
    gold_types = {t for row in gold for _, _, t in row}
    if model_types and gold_types and not gold_types & model_types:
        raise EvalDataError(
            f"{name}: none of its entity types ({', '.join(sorted(gold_types))}) is one the model predicts "
            f"({', '.join(sorted(model_types))}), so the accuracy gate could not fail; rename the tags to the "
            "model's (config.json id2label), or use eval data labelled for this model.")


def _char_spans(name: str, n: str, text: str, label: list) -> list[tuple[int, int, str]]:
    spans = []
    for span in label:
        ok = isinstance(span, (list, tuple)) and len(span) == 3 and isinstance(span[2], str)
        ok = ok and all(isinstance(x, int) and not isinstance(x, bool) for x in span[:2])
        ok = ok and 0 <= span[0] < span[1] <= len(text)
        if not ok:
            raise EvalDataError(f"{name} {n}: span {span!r} is not [start, end, type] within the text; "
                                "use character offsets with end exclusive.")
        spans.append((span[0], span[1], span[2]))
    return spans


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

    sentence_embeddings = False
    continuous_metric = False
    fidelity_metric = "token_agreement"
    reports_metric_step = True  # gate() measures the step of one entity (validate.resolution_note uses it, not n)
    eval_labels = "spans"
    eval_columns: dict = {"text": "text", "label": "label"}
    word_columns: dict = {"text": "tokens", "label": "ner_tags"}

    def collect(self, batches: Iterable[tuple[np.ndarray, Encoded]]) -> TaskOutputs:
        """``values``: per text int [n_tokens_i] argmax label ids over real tokens; ``logits`` per text float32
        [n_tokens_i, num_labels]; ``entities``: :meth:`postprocess` per text (default parameters)."""
        logits, entities = [], []
        for raw, enc in batches:
            mask = enc.attention_mask.astype(bool)
            logits.extend(raw[b][mask[b]].astype(np.float32) for b in range(raw.shape[0]))
            entities.extend(self.postprocess(raw, enc))
        return TaskOutputs([p.argmax(-1) for p in logits], entities, logits)

    @staticmethod
    def gate(data: EvalSet, reference: TaskOutputs, candidate: TaskOutputs, config: dict,
             tolerance: float) -> TaskScore:
        """Relative loss of entity F1 (labelled, exact spans and types) or of token-label agreement with the
        reference ≤ τ. Details: ``token_agreement``, ``logit_nmse`` and ``entity_agreement_f1`` (the
        candidate's entities scored against the reference's); labelled, also ``metric_step``: the relative change
        of entity F1 when one entity changes, 1 / the reference's true positives (F1 = 2·TP / (predicted + gold)
        is linear in TP), which is coarser than 1/n when the model finds few entities (measured with the test suite's
        WNUT-16 model: 0.021 on the 230 validation tweets, where the reference finds 47 of 125 gold entities; 0.013 on the
        459 test tweets, 77 of 281)."""
        agree = np.concatenate([a == b for a, b in zip(reference.values, candidate.values)])
        details = {"token_agreement": float(agree.mean()) if agree.size else 1.0}
        if reference.logits is not None and candidate.logits is not None:
            details["logit_nmse"] = metrics.nmse(np.concatenate(reference.logits), np.concatenate(candidate.logits))

        def spans(entities: list) -> list[set]:
            return [{(e["start"], e["end"], e["entity_group"]) for e in row} for row in entities]

        details["entity_agreement_f1"] = metrics.entity_f1(spans(candidate.entities), spans(reference.entities))["f1"]
        if data.labels is not None:
            gold = [{(int(s), int(e), str(t)) for s, e, t in row} for row in data.labels]
            _check_entity_types(data.name, gold, config)
            ref_scores = metrics.entity_f1(spans(reference.entities), gold)
            r, o = ref_scores["f1"], metrics.entity_f1(spans(candidate.entities), gold)["f1"]
            true_positives = ref_scores["recall"] * sum(len(g) for g in gold)
            details["metric_step"] = 1.0 / true_positives if true_positives >= 0.5 else 1.0
            metric = "entity_f1"
        else:
            metric, r, o = "token_agreement", 1.0, details["token_agreement"]
        loss = metrics.relative_loss(r, o)
        return TaskScore(metric, r, o, (bound(f"relative loss of {metric}", loss, tolerance, loss, False),), details)

    @classmethod
    def eval_set(cls, name: str, rows: list[tuple[str, dict]], found: str) -> EvalSet:
        """``tokens`` (words) + ``ner_tags`` (BIO strings), or ``text`` + ``label`` (``[start, end, type]``
        character spans, end exclusive). Labels are required."""
        words = "tokens" in rows[0][1]
        need_column(name, rows, "tokens" if words else "text", found, "input", "--text-column")
        texts, labels = [], []
        if not words:
            need_labels(name, cls.name, rows, found)
        for n, row in rows:
            if words:
                tokens = [str(w) for w in row_value(name, n, row, "tokens", list)]
                tags = row_value(name, n, row, "ner_tags", list)
                texts.append(" ".join(tokens))
                try:
                    labels.append(bio_to_spans(tokens, tags))
                except EvalDataError as e:
                    raise EvalDataError(f"{name} {n}: {e}") from None
            else:
                text = row_value(name, n, row, "text", str)
                texts.append(text)
                labels.append(_char_spans(name, n, text, row_value(name, n, row, "label", list)))
        return EvalSet(name, cls.name, texts=tuple(texts), labels=tuple(labels))

    def __init__(self, model_dir: str | Path, config: dict):
        self.config = config

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list[list[dict]]:
        params = params or {}
        probs = softmax(output)
        labels = id2label(self.config, probs.shape[-1])
        ignore = ignore_labels(params)
        out = []
        for b, (text, e) in enumerate(zip(enc.texts, enc.encodings)):
            special = [max(s, 1 - a) for s, a in zip(e.special_tokens_mask, e.attention_mask)]
            out.append(aggregate(text, e.offsets, special, probs[b], labels, ignore, tokens=e.tokens))
        return out

    class Params(TaskParams):
        """``ignore_labels`` and ``aggregation_strategy``, plus the truncation options."""

        field_help: ClassVar[dict[str, str]] = {
            **TaskParams.field_help, "ignore_labels": "`ignore_labels` must be a list of label strings.",
            "aggregation_strategy": "`aggregation_strategy` must be \"simple\" (the only one supported: B-/I- tags "
                                    "grouped, scores averaged)."}
        ignore_labels: list[str] = Field(None, description="Entity groups to drop (default [\"O\"]; [] keeps all).")
        aggregation_strategy: Annotated[str, StringConstraints(pattern="^[Ss][Ii][Mm][Pp][Ll][Ee]$")] = Field(
            None, description="\"simple\" (any case), the only one supported: B-/I- tags grouped, scores averaged.")

    capability = "classify"
    root_wraps_single = False
    http_defaults: ClassVar[dict] = {}

    def info(self, dim: int | None = None) -> dict:
        """``{"token_classifier": {"id2label": {"0": label, ...}}}``."""
        return {"token_classifier": {"id2label": {str(k): v for k, v in (self.config.get("id2label") or {}).items()}}}
