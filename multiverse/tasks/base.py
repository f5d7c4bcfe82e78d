"""Tokenization shared by every task (``tokenizers`` only: this is on the serving path).

Fused attention in ONNX Runtime assumes right padding, so padding is always forced to the
right whatever the tokenizer file says. Truncation is to the model's *real* position limit
(``max_position_embeddings`` minus the RoBERTa-style padding offset), never to a tokenizer's
sentinel ``model_max_length`` (``int(1e30)`` in many Hub tokenizer configs, which would let
512+ positions through and index past the position-embedding table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Iterable, Protocol, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from tokenizers import Encoding, Tokenizer

from ..errors import InputError, InputTooLong
from .evaluation import EvalSet, TaskOutputs, TaskScore
from .precut import PreCutter

# Architectures whose position ids start at padding_idx + 1 (=2): 514 positions, 512 usable.
_POSITION_OFFSET_MODEL_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"}


@dataclass(frozen=True)
class Encoded:
    """A tokenized, right-padded batch.

    Attributes:
        arrays: model inputs by name, int64 arrays of shape [batch, seq_len]
            (``input_ids``, ``attention_mask``, ``token_type_ids``).
        encodings: the ``tokenizers.Encoding`` of each row (offsets for token-classification).
        texts: the raw texts (first text of each pair for ranking), without any prompt.
        n_tokens: number of real (non-pad) tokens in the batch.
    """

    arrays: dict[str, np.ndarray]
    encodings: list[Encoding]
    texts: list[str]
    n_tokens: int

    @property
    def attention_mask(self) -> np.ndarray:
        return self.arrays["attention_mask"]

    def check_fits(self, max_length: int) -> None:
        """Raise :class:`~multiverse.errors.InputTooLong` when a row was truncated, i.e. its text (or pair) has
        more than ``max_length`` tokens, special tokens included: what a request with ``truncate: false`` asks
        for (TEI answers such a request 422, "`inputs` must have less than N tokens"). Rows without an
        ``Encoding`` are not checked."""
        for i, e in enumerate(self.encodings):
            if e.overflowing:
                raise InputTooLong(f"Input {i} has more than {max_length} tokens (this model's limit) and `truncate` "
                                   "is false; shorten it, or send `truncate: true` to cut it to the limit.")


def max_sequence_length(config: dict, tokenizer_config: dict | None = None, st_config: dict | None = None) -> int:
    """Usable sequence length in tokens, capped by the real position limit.

    As sentence-transformers 5.x decides it (``Transformer.__init__`` and ``preprocess``), from
    ``sentence_bert_config.json``: a per-call ``max_length`` in ``processing_kwargs`` (``common``
    before ``text``), else ``model_max_length`` in ``processor_kwargs``/``tokenizer_args``, else
    ``max_seq_length`` (each replaces the tokenizer's own limit), else the tokenizer config's
    ``model_max_length``. The position limit is ``max_position_embeddings``
    minus 2 for RoBERTa-family models (position ids start at ``padding_idx + 1``); sentinel
    ``model_max_length`` values (1e30 in many tokenizer configs) are ignored.
    """
    limit = int(config.get("max_position_embeddings") or 512)
    if config.get("model_type") in _POSITION_OFFSET_MODEL_TYPES:
        limit -= int(config.get("pad_token_id", 1) or 1) + 1
    st_config = st_config or {}
    st_tok_args = st_config.get("processor_kwargs") or st_config.get("tokenizer_args") or {}
    per_call = st_config.get("processing_kwargs") or {}
    tok_max = (tokenizer_config or {}).get("model_max_length")
    for value in ((per_call.get("common") or {}).get("max_length"), (per_call.get("text") or {}).get("max_length"),
                  st_tok_args.get("model_max_length"), st_config.get("max_seq_length")):
        if isinstance(value, int) and value > 0:
            tok_max = value
            break
    if isinstance(tok_max, (int, float)) and 0 < tok_max < 1_000_000:
        limit = min(limit, int(tok_max))
    return limit


class TextTokenizer:
    """Right-padding, truncating wrapper around a ``tokenizers.Tokenizer`` loaded from ``tokenizer.json``."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None):
        model_dir = Path(model_dir)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise InputError(f"{model_dir} has no tokenizer.json; re-run `multiverse optimize` to write one.")
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        config = _read_json(model_dir / "config.json")
        tok_config = _read_json(model_dir / "tokenizer_config.json")
        st_config = _read_json(model_dir / "sentence_bert_config.json")
        self.max_length = int(max_length or max_sequence_length(config, tok_config, st_config))
        pad_token = _token_str(tok_config.get("pad_token")) or _token_str(
            _read_json(model_dir / "special_tokens_map.json").get("pad_token")
        )
        pad_id = self.tokenizer.token_to_id(pad_token) if pad_token else None
        if pad_id is None:
            pad_id = int(config.get("pad_token_id") or 0)
            pad_token = self.tokenizer.id_to_token(pad_id) or "[PAD]"
        self.pad_id = int(pad_id)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length, strategy="longest_first")
        self.tokenizer.enable_padding(direction="right", pad_id=self.pad_id, pad_token=pad_token)
        self.prompt, self.prompt_length = "", 0
        self._apply_sentence_transformers_config(st_config, _read_json(model_dir / "config_sentence_transformers.json"))
        self.precut = PreCutter(self.tokenizer, self.max_length)  # after lower-casing: it counts the same tokens

    def _apply_sentence_transformers_config(self, st_config: dict, st_model_config: dict) -> None:
        """Preprocess text as ``SentenceTransformer.encode`` (sentence-transformers 5.x) does.

        * ``do_lower_case`` in ``sentence_bert_config.json``: a ``Lowercase`` normalizer is put in
          front of the tokenizer's own unless it already has one (``Transformer.__init__``), so
          character offsets still point into the raw text.
        * ``default_prompt_name`` in ``config_sentence_transformers.json``: that prompt is prepended
          to every text (to the first text of a pair), and :attr:`prompt_length` counts the leading
          tokens it takes, the first special token included and a trailing one excluded
          (``Transformer._get_prompt_length``), for pooling with ``include_prompt: false``.
          A request-level prompt name is not supported.
        """
        if st_config.get("do_lower_case"):
            from tokenizers import normalizers

            current = self.tokenizer.normalizer
            has_lower = isinstance(current, normalizers.Lowercase) or (
                isinstance(current, normalizers.Sequence) and any(isinstance(n, normalizers.Lowercase) for n in current))
            if not has_lower:
                chain = [normalizers.Lowercase()]
                if isinstance(current, normalizers.Sequence):
                    chain += list(current)
                elif current is not None:
                    chain.append(current)
                self.tokenizer.normalizer = normalizers.Sequence(chain)
        name = st_model_config.get("default_prompt_name")
        prompt = (st_model_config.get("prompts") or {}).get(name) if name else None
        if prompt:
            enc = self.tokenizer.encode(prompt)
            self.prompt = prompt
            self.prompt_length = len(enc.ids) - (1 if enc.special_tokens_mask and enc.special_tokens_mask[-1] else 0)

    def encode(
        self,
        inputs: Sequence[str] | Sequence[tuple[str, str]],
        input_names: Sequence[str] = ("input_ids", "attention_mask", "token_type_ids"),
    ) -> Encoded:
        """Tokenize a batch of texts or (text, text_pair) pairs.

        Very long texts are first cut at a word boundary a little beyond ``max_length`` tokens
        (:class:`~multiverse.tasks.precut.PreCutter`: same tokens, without ``tokenizers``'
        quadratic cost on long pairs), so library, server, validation and benchmark share one
        tokenization path. Returns int64 arrays of shape [batch, longest_in_batch] for exactly
        the graph's ``input_names`` (missing ``token_type_ids`` are zeros; extras are dropped).
        Raises InputError on an empty batch.
        """
        if len(inputs) == 0:
            raise InputError("Empty batch: send at least one input.")
        batch = list(inputs)
        if self.prompt:
            batch = [self.prompt + i if isinstance(i, str) else (self.prompt + i[0], i[1]) for i in batch]
        batch = [self.precut.item(item) for item in batch]
        encodings = self.tokenizer.encode_batch(batch, add_special_tokens=True)
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        arrays: dict[str, np.ndarray] = {}
        for name in input_names:
            if name == "input_ids":
                arrays[name] = ids
            elif name == "attention_mask":
                arrays[name] = mask
            elif name == "token_type_ids":
                arrays[name] = np.asarray([e.type_ids for e in encodings], dtype=np.int64)
            elif name == "position_ids":
                arrays[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
            else:
                raise InputError(f"The graph wants an input {name!r} that Multiverse cannot build from text.")
        texts = [i if isinstance(i, str) else i[0] for i in inputs]
        return Encoded(arrays=arrays, encodings=encodings, texts=texts, n_tokens=int(mask.sum()))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _token_str(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class Task(Protocol):
    """Everything Multiverse knows about one task, owned by that task's module (``tasks/<task>.py``).

    Each task module's ``Handler`` class implements this protocol: class attributes describe the
    task (read without loading a model), an instance post-processes one model's outputs. The
    pipeline, validation, serving, the PyTorch reference and the benchmark baselines read these
    attributes instead of comparing task names.

    Attributes:
        name: the task's name (``multiverse optimize --task``).
        output: name of the graph output the task reads.
        accepts_pairs / requires_pairs: whether inputs may / must be ``(text, text_pair)`` pairs.
        reference_class: the ``transformers`` Auto class of the PyTorch reference model.
        optimum_task: optimum-onnx's export task for this task.
        pipeline_task: the ``transformers.pipeline`` task of the vanilla baseline;
            ``pipeline_kwargs`` its construction options.
        ort_model_class: optimum's ``ORTModelFor…`` class of the optimum baseline.
        sentence_embeddings: results are sentence embeddings, which an export checks against
            ``SentenceTransformer.encode`` (pooling and modules are outside the graph).
        continuous_metric: the gated metrics are continuous (cosines); else one changed prediction
            moves them by about 1/n, and the gate warns when 1/n exceeds the tolerance.
        reports_metric_step: the gate measures that step itself (``details["metric_step"]``: entity F1, one entity
            is 1 / the reference's true positives), so no warning is given from n alone.
        fidelity_metric: the ``details`` key of agreement with the reference model (1 = identical);
            ``ValidationReport.divergence`` is 1 minus it when there is no ``logit_nmse``.
        eval_labels: the kind of gold labels of the task's eval data: ``classes`` (a class name or id per
            text, optional for embeddings), ``spans`` (``(start, end, type)`` per entity) or ``relevance``
            (query groups with relevant passages); named eval sets offer the kinds they hold.
        eval_columns: the eval-file column names the task reads, by role: ``text`` (input), ``text_pair``
            (second text; absent when the task takes no pairs) and ``label``.
        word_columns: the alternative names when the input is a list of words (``tokens``/``ner_tags``),
            or None when the task has no such form.
        Params: the pydantic model of the request ``parameters`` the task accepts (a :class:`TaskParams`).
        capability: what the task does, in infinity's words (``/models``): ``embed``, ``classify`` or
            ``rerank``; the server also opens the routes of that capability (TEI ``/embed``, ``/similarity``,
            OpenAI ``/v1/embeddings`` for ``embed``; TEI ``/rerank`` for ``rerank``).
        root_wraps_single: ``POST /`` (the Hugging Face Inference API, what ``InferenceClient`` calls) answers
            a single string with a one-element list of results, as that API does for text-classification.
        http_defaults: parameter values the server's ``/predict`` and ``POST /`` use when a request does not
            send them, where TEI's default differs from the library's (text-classification: every label).
    """

    name: ClassVar[str]
    output: ClassVar[str]
    accepts_pairs: ClassVar[bool]
    requires_pairs: ClassVar[bool]
    reference_class: ClassVar[str]
    optimum_task: ClassVar[str]
    pipeline_task: ClassVar[str]
    pipeline_kwargs: ClassVar[dict]
    ort_model_class: ClassVar[str]
    sentence_embeddings: ClassVar[bool]
    continuous_metric: ClassVar[bool]
    reports_metric_step: ClassVar[bool]
    fidelity_metric: ClassVar[str]
    eval_labels: ClassVar[str]
    eval_columns: ClassVar[dict[str, str]]
    word_columns: ClassVar[dict[str, str] | None]
    Params: ClassVar[type[TaskParams]]
    capability: ClassVar[str]
    root_wraps_single: ClassVar[bool]
    http_defaults: ClassVar[dict]

    def __init__(self, model_dir: str | Path, config: dict) -> None: ...

    def postprocess(self, output: np.ndarray, enc: Encoded, params: dict | None = None) -> list:
        """One result per row of ``output`` (the graph output ``output`` of ``enc``'s batch)."""

    def info(self, dim: int | None = None) -> dict:
        """The task's ``model_type`` entry of TEI's ``GET /info`` (``{"classifier": {"id2label", "label2id"}}``,
        ``{"embedding": {"pooling", "dim"}}`` ...); ``dim`` is the served embedding size, when measured."""

    @staticmethod
    def agreement(reference: list, candidate: list) -> dict:
        """How close ``candidate`` results (a list, one per input, as ``postprocess`` or the HF pipeline returns
        them) are to ``reference`` results on the same inputs (the benchmark's fidelity columns)."""

    def collect(self, batches: Iterable[tuple[np.ndarray, Encoded]]) -> TaskOutputs:
        """The gate's comparable outputs of one model from its ``(graph output, Encoded)`` batches, in order."""

    @staticmethod
    def gate(data: EvalSet, reference: TaskOutputs, candidate: TaskOutputs, config: dict,
             tolerance: float) -> TaskScore:
        """The task's metric and gated checks of ``candidate`` against ``reference`` outputs on ``data``
        (``config``: the model's ``config.json``). Raises EvalDataError when labels do not fit the model."""

    @classmethod
    def eval_set(cls, name: str, rows: list[tuple[str, dict]], found: str) -> EvalSet:
        """The eval set of a file's non-empty ``rows`` (``(row name, row)``, columns renamed to
        ``eval_columns``/``word_columns``); ``found`` lists the file's own columns for messages.
        Raises EvalDataError naming the row and column of the first bad value."""


def top_result(result):
    """The first (best) element of a possibly nested list result (pipelines nest per input and per label)."""
    while isinstance(result, list):
        result = result[0]
    return result


def result_scores(results: list) -> list[float]:
    """The score of each input's best result: ``{"score": …}`` dicts or bare floats."""
    out = []
    for r in results:
        r = top_result(r)
        out.append(float(r["score"]) if isinstance(r, dict) else float(r))
    return out


#: ``truncation_direction``: "right" in any case, or null (the only direction supported).
Direction = Annotated[str, StringConstraints(pattern="^[Rr][Ii][Gg][Hh][Tt]$")]


class TaskParams(BaseModel):
    """The request ``parameters`` every task accepts (``POST /predict``); each task's ``Params`` adds its own.

    Types are strict (``"true"`` is not a boolean). An unknown key is refused rather than ignored: these
    options change results, and a misspelt one must not be dropped silently. ``field_help`` holds the message
    of a field's 422 (see :meth:`read`).
    """

    model_config = ConfigDict(strict=True, extra="forbid")
    field_help: ClassVar[dict[str, str]] = {
        "truncate": "`truncate` must be true or false.",
        "truncation": "`truncation` must be true or false.",
        "truncation_direction": "`truncation_direction` must be \"right\" (the only one supported).",
    }
    truncate: bool = Field(None, description="false: a text longer than the model's token limit is refused "
                                             "(422 InputTooLong) instead of truncated; default true.")
    truncation: bool = Field(None, description="Same as `truncate` (the transformers pipeline's name).")
    truncation_direction: Direction | None = Field(
        None, description="\"right\" (any case) or null: the only truncation supported.")

    @classmethod
    def read(cls, raw: dict[str, Any] | None, task: str) -> dict:
        """The keys of ``raw`` (a request's ``parameters``) validated, as a dict of the keys sent.

        Raises InputError (422) naming the first bad key and what it must be, or the keys ``task`` accepts."""
        try:
            return cls.model_validate(raw or {}).model_dump(exclude_unset=True)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            key = str(first["loc"][0]) if first["loc"] else ""
            if first["type"] == "extra_forbidden":
                raise InputError(f"Unknown parameter `{key[:64]}` for a {task} model; accepted: "
                                 f"{', '.join(cls.model_fields)}.") from None
            raise InputError(cls.field_help.get(key) or f"`{key}`: {first['msg']}.") from None

    @classmethod
    def truncates(cls, params: dict) -> bool:
        """False when ``params`` (as :meth:`read` returns them) say ``truncate`` or ``truncation`` false."""
        return params.get("truncate") is not False and params.get("truncation") is not False
