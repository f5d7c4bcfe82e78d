"""Request and response models of the HTTP API (pydantic), and how a bad body becomes a clear 4xx.

Request bodies are parsed and validated in one step by pydantic-core's JSON parser
(``model_validate_json``): invalid UTF-8, malformed JSON and nesting deeper than its
recursion limit are errors, never a crash. Error messages are written here and never
echo the request back.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import MultiverseError
from ..tasks import Task

TIMING_UNIT = "milliseconds (float, 3 decimals; wall clock, time.perf_counter)"

#: Response headers of the pipeline routes, for the OpenAPI documentation.
TIMING_HEADERS = {
    "x-compute-time": "End-to-end pipeline time of this request: tokenization + inference + post-processing, "
                      f"in {TIMING_UNIT}. Queueing is not included (see x-queue-time).",
    "x-tokenization-time": f"Tokenization time in {TIMING_UNIT}.",
    "x-queue-time": f"Time waiting for the inference worker in {TIMING_UNIT}.",
    "x-inference-time": f"Model run time (ONNX Runtime or OpenVINO) in {TIMING_UNIT} (the whole batch when batched "
                        "with other requests).",
    "x-postprocess-time": f"Post-processing time in {TIMING_UNIT}.",
    "x-compute-tokens": "Real (non-pad) tokens of this request after truncation (integer).",
    "x-compute-characters": "Characters of this request's texts (integer).",
}


#: Code point ranges (inclusive) of the characters that do not count as text: whitespace
#: (``str.isspace``), control (Unicode category Cc) and format (Cf: zero-width space U+200B,
#: BOM U+FEFF, soft hyphen, bidi marks, tag characters ...) characters, from ``unicodedata`` of
#: Python 3.11 (Unicode 14; ``tests/test_serve_contract.py`` recomputes it). Tokenizers drop them
#: all, so a text made only of them would be embedded as an empty sequence.
BLANK_RANGES = ((0x0, 0x20), (0x7F, 0xA0), (0xAD, 0xAD), (0x600, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD),
                (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2), (0x1680, 0x1680), (0x180E, 0x180E),
                (0x2000, 0x200F), (0x2028, 0x202F), (0x205F, 0x2064), (0x2066, 0x206F), (0x3000, 0x3000),
                (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
                (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F))


def _char(cp: int) -> str:
    return f"\\u{cp:04x}" if cp <= 0xFFFF else chr(cp)


#: One rule for empty input, on every route and in the OpenAPI schema: a text counts only if it has
#: a character outside :data:`BLANK_RANGES` (JSON Schema ``pattern``, unanchored).
TEXT_PATTERN = "[^" + "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in BLANK_RANGES) + "]"
_NOT_BLANK = re.compile(TEXT_PATTERN)


def is_blank(text: str) -> bool:
    """True when ``text`` has nothing but whitespace, control and format characters (``""``, ``"  "``,
    ``"\\u200b"``, ``"\\ufeff\\n"``); such an input is answered 400 ``EmptyInput`` on every route."""
    return _NOT_BLANK.search(text) is None


class ApiError(MultiverseError):
    """An HTTP error answer decided by the server: ``status`` with JSON body ``{"error": message, "error_type":
    error_type}`` and optional headers (``Retry-After``). Like every :class:`~multiverse.errors.MultiverseError`
    it carries ``http_status`` and ``error_type``, so the app's one handler answers both kinds the same way."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = self.http_status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="What went wrong and what to do next.")
    error_type: str = Field(description="Machine-readable kind, e.g. EmptyInput, InvalidInput, PayloadTooLarge, "
                                        "RequestTimeout, Overloaded, NotReady, ShuttingDown, Unauthorized, "
                                        "InternalServerError.")


Texts = str | list[str] | list[tuple[str, str]]
_Strict = ConfigDict(strict=True, extra="forbid")   # nested objects (similarity ``inputs``)
_Lenient = ConfigDict(strict=True, extra="ignore")  # request bodies: unknown top-level fields are ignored


class PredictRequest(BaseModel):
    """``POST /predict``: the Infinity-container contract (TEI's ``/predict`` fields are accepted too).

    Like every request body here, unknown top-level fields are ignored, as TEI (serde's default) and
    infinity (pydantic's default) ignore them; the keys of ``parameters`` are checked by the task's
    ``Params`` model, which refuses unknown ones."""

    model_config = _Lenient
    field_help: ClassVar[dict[str, str]] = {}
    inputs: Texts = Field(description="A text, a list of texts, or a list of [text, text_pair] pairs (ranking; "
                                      "sentence-pair classifiers).")
    parameters: dict[str, Any] | None = Field(
        None, description="Task options. text-classification: `top_k` (int ≥ 1; null or absent = all labels, as TEI), "
                          "`raw_scores` (bool, default false: probabilities; true: logits). feature-extraction: "
                          "`normalize` (bool, default from the bundle). ranking: `raw_scores` (bool, default false: "
                          "sigmoid). token-classification: `ignore_labels` (list of labels, default [\"O\"]), "
                          "`aggregation_strategy` (\"simple\" only). All tasks: `truncate` (bool, default true: texts "
                          "longer than the model's limit are truncated; false: 422 InputTooLong), `truncation` "
                          "(same), `truncation_direction` (\"right\" only). Unknown keys: 422.")
    raw_scores: bool | None = Field(None, description="TEI: same as parameters.raw_scores.")
    truncate: bool | None = Field(None, description="TEI: same as parameters.truncate.")
    truncation_direction: str | None = Field(None, description="TEI: \"right\" only.")


class EmbedRequest(BaseModel):
    """TEI ``POST /embed``."""

    model_config = _Lenient
    field_help: ClassVar[dict[str, str]] = {"inputs": "`inputs` must be a string or a list of strings."}
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = Field(None, description="Not supported; must be null.")
    dimensions: int | float | None = Field(None, description="The model's dimension, 0 (full size) or null.")


class RerankRequest(BaseModel):
    """TEI ``POST /rerank``."""

    model_config = _Lenient
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: str | None = None


class SimilarityInputs(BaseModel):
    """The ``inputs`` of a sentence-similarity request (TEI ``/similarity``; ``InferenceClient.sentence_similarity``
    posts it to ``/``)."""

    model_config = _Strict
    source_sentence: str
    sentences: list[str]


class SimilarityParameters(BaseModel):
    model_config = _Lenient
    truncate: bool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = None


class SimilarityRequest(BaseModel):
    """TEI ``POST /similarity``: cosine similarity of ``source_sentence`` to each of ``sentences``."""

    model_config = _Lenient
    field_help: ClassVar[dict[str, str]] = {
        "inputs": "`inputs` must be an object {\"source_sentence\": string, \"sentences\": [string, ...]}."}
    inputs: SimilarityInputs
    parameters: SimilarityParameters | None = None


class RootEmbedRequest(EmbedRequest):
    """``POST /`` on a feature-extraction model (TEI dispatch): ``/embed``'s body, or ``/similarity``'s when
    ``inputs`` is an object (what ``huggingface_hub.InferenceClient`` sends)."""

    field_help: ClassVar[dict[str, str]] = {
        "inputs": "`inputs` must be a string, a list of strings, or {\"source_sentence\": string, "
                  "\"sentences\": [string, ...]}."}
    inputs: str | list[str] | SimilarityInputs
    parameters: SimilarityParameters | None = None


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings`` (and infinity's ``POST /embeddings``)."""

    model_config = _Lenient
    field_help: ClassVar[dict[str, str]] = {
        "input": "`input` must be a string or a list of strings (token-id arrays are not accepted)."}
    input: str | list[str] = Field(description="A text or a list of texts (token-id arrays are not accepted).")
    model: str | None = Field(None, description="Ignored: the server serves one model.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="\"float\" (default, also for null) or \"base64\" (little-endian float32; what the "
                          "OpenAI SDK asks for by default).")
    dimensions: int | float | None = Field(None, description="The model's dimension, 0 (full size) or null.")
    user: str | None = None


class Label(BaseModel):
    label: str
    score: float


class Entity(BaseModel):
    entity_group: str
    score: float
    word: str = Field(description="Exactly text[start:end].")
    start: int = Field(description="Character offset (Python str index) of the entity's first character.")
    end: int = Field(description="Character offset one past the entity's last character.")


class RankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class ModelCard(BaseModel):
    id: str = Field(description="The served model's name (--model-name, else the bundle's source).")
    object: Literal["model"] = "model"
    created: int = Field(description="When the bundle was built (Unix time, seconds).")
    owned_by: str | None = Field(None, description="`/v1/models` only (OpenAI).")
    backend: str | None = Field(None, description="`/models` only (infinity).")
    capabilities: list[str] | None = Field(None, description="`/models` only (infinity): embed, classify, rerank.")
    stats: dict | None = Field(None, description="`/models` only (infinity).")


class ModelList(BaseModel):
    """``GET /v1/models`` (OpenAI) and ``GET /models`` (infinity): the one model this server serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


PredictResponse = (list[Label] | list[list[Label]] | list[float] | list[list[float]] | list[list[Entity]]
                   | list[Entity] | list[float])

_FIELD_HELP = {
    "inputs": "`inputs` must be a string, a list of strings, or a list of [text, text_pair] pairs of strings.",
    "input": "`input` must be a string or a list of strings (token-id arrays are not accepted).",
    "texts": "`texts` must be a list of strings.",
    "similarity": "`inputs` must be {\"source_sentence\": string, \"sentences\": [string, ...]}.",
    "query": "`query` must be a string.",
}


def parse(model: type[BaseModel], body: bytes) -> BaseModel:
    """Parse and validate a JSON body.

    Raises ApiError 400 (``MalformedBody``: empty, not UTF-8, not JSON, nested too deeply)
    or 422 (``InvalidInput``: wrong shape or types, unknown or missing fields).
    """
    if not body:
        raise ApiError(400, "MalformedBody", "The request body is empty: send a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _to_api_error(model, exc) from None
    except (ValueError, RecursionError):  # pragma: no cover - pydantic reports these as ValidationError
        raise ApiError(400, "MalformedBody", "The request body is not valid JSON.") from None


def _to_api_error(model: type[BaseModel], exc: ValidationError) -> ApiError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0] if errors else {"type": "", "loc": (), "msg": ""}
    if first["type"] == "json_invalid":
        msg = str(first.get("msg", ""))
        if "recursion limit" in msg:
            detail = "JSON is nested too deeply."
        elif "unicode" in msg or "utf-8" in msg.lower() or "UTF-8" in msg:
            detail = "the body is not valid UTF-8 JSON."
        else:
            detail = msg.replace("Invalid JSON: ", "").strip() + "."
        return ApiError(400, "MalformedBody", f"The request body is not valid JSON: {detail}")
    if first["type"] in ("model_type", "model_attributes_type"):
        return ApiError(422, "InvalidInput", f"The body must be a JSON object with the fields {_fields(model)}.")
    field = str(first["loc"][0]) if first["loc"] else ""
    if field == "inputs" and len(first["loc"]) > 1 and first["loc"][1] in ("source_sentence", "sentences"):
        field = "similarity"
    if first["type"] == "missing":
        return ApiError(422, "InvalidInput", f"`{field}` is required; this route accepts {_fields(model)}.")
    if first["type"] == "extra_forbidden":
        return ApiError(422, "InvalidInput", f"Unknown field `{field[:64]}`; this route accepts {_fields(model)}.")
    help_ = getattr(model, "field_help", {}).get(field) or _FIELD_HELP.get(field)
    if help_:
        return ApiError(422, "InvalidInput", help_)
    return ApiError(422, "InvalidInput", f"`{field}`: {first['msg']}.")


def _fields(model: type[BaseModel]) -> str:
    return ", ".join(f"`{name}`" for name in model.model_fields)


def body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI ``requestBody`` for a model parsed by hand (see :func:`parse`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


# ---- OpenAPI request bodies as strict as the server ------------------------------------------------

_NULL = {"type": "null"}
_BOOL = {"type": "boolean"}
_DIRECTION = {"anyOf": [{"type": "string", "pattern": "^[Rr][Ii][Gg][Hh][Tt]$"}, _NULL],
              "description": "\"right\" (any case) or null: the only truncation supported."}


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, _NULL]}


def request_schemas(task: type[Task] | None, max_batch: int, max_chars: int, dim: int | None) -> dict[str, dict]:
    """JSON Schemas (OpenAPI 3.1) of the request bodies of the POST routes, as strict as the server.

    A text is a string of 1..``max_chars`` characters with at least one character that is not
    whitespace, control or format (:data:`TEXT_PATTERN`; else 400 ``EmptyInput``); a batch has
    1..``max_batch`` items; inputs are texts, pairs or both as the ``task`` class says
    (``accepts_pairs``/``requires_pairs``), ``parameters`` are its ``Params`` model (else 422);
    ``dimensions`` must be ``dim`` when the model is loaded. Unknown top-level fields are allowed
    (ignored). What no schema can say: the per-request token budget (``max_batch_tokens``: 413
    after tokenization) and ``truncate: false`` on a text over the token limit (422).
    ``task`` None (not loaded yet) gives the text-classification shapes. Returns route path → schema.
    """
    from ..tasks import text_classification

    task = task or text_classification.Handler
    text = {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": TEXT_PATTERN,
            "description": f"1 to {max_chars} characters, at least one of them neither whitespace nor a "
                           "control or zero-width/format character."}
    pair = {"type": "array", "items": text, "minItems": 2, "maxItems": 2, "description": "[text, text_pair]"}

    def batch(items: dict, most: int = max_batch) -> dict:
        return {"type": "array", "items": items, "minItems": 1, "maxItems": most}

    if task.requires_pairs:
        inputs = batch(pair)
    elif task.accepts_pairs:  # single texts or (NLI-style) pairs, not both in one request
        inputs = {"anyOf": [text, batch(text), batch(pair)]}
    else:
        inputs = {"anyOf": [text, batch(text)]}
    params = task.Params.model_json_schema()
    params["properties"] = {k: {kk: vv for kk, vv in v.items() if kk not in ("title", "default")}
                            for k, v in params["properties"].items()}  # a default null is not a value to send
    params.pop("title", None)
    predict = {
        "type": "object", "required": ["inputs"],
        "properties": {
            "inputs": inputs,
            "parameters": _nullable(params),
            "raw_scores": _nullable(_BOOL) if "raw_scores" in task.Params.model_fields else {"enum": [False, None]},
            "truncate": _nullable(_BOOL),
            "truncation_direction": _DIRECTION,
        },
    }
    dims = _nullable({"enum": [0, dim]} if dim else {"type": "integer", "minimum": 0})  # 0: full size (infinity)
    similarity_inputs = {"type": "object", "additionalProperties": False, "required": ["source_sentence", "sentences"],
                         "properties": {"source_sentence": text, "sentences": batch(text, max(1, max_batch - 1))}}
    similarity_params = _nullable({"type": "object", "properties": {
        "truncate": _nullable(_BOOL), "truncation_direction": _DIRECTION, "prompt_name": _NULL}})
    embed_props = {"inputs": {"anyOf": [text, batch(text)]}, "normalize": _BOOL, "truncate": _nullable(_BOOL),
                   "truncation_direction": _DIRECTION, "prompt_name": _NULL, "dimensions": dims}
    embed = {"type": "object", "required": ["inputs"], "properties": embed_props}
    schemas = {
        "/predict": predict,
        "/embed": embed,
        "/similarity": {"type": "object", "required": ["inputs"],
                        "properties": {"inputs": similarity_inputs, "parameters": similarity_params}},
        "/rerank": {"type": "object", "required": ["query", "texts"], "properties": {
            "query": text, "texts": batch(text), "raw_scores": _BOOL, "return_text": _BOOL,
            "truncate": _nullable(_BOOL), "truncation_direction": _DIRECTION}},
        "/v1/embeddings": {"type": "object", "required": ["input"], "properties": {
            "input": {"anyOf": [text, batch(text)]}, "model": _nullable({"type": "string"}),
            "encoding_format": {"enum": ["float", "base64", None]}, "dimensions": dims,
            "user": _nullable({"type": "string"})}},
    }
    schemas["/embeddings"] = schemas["/v1/embeddings"]
    if task.capability == "embed":
        schemas["/"] = {"type": "object", "required": ["inputs"], "properties": {
            **embed_props, "inputs": {"anyOf": [text, batch(text), similarity_inputs]},
            "parameters": similarity_params}}
    else:
        schemas["/"] = predict
    return schemas


#: Routes open only to tasks of one capability (``Task.capability``); all tasks also serve ``/``,
#: ``/predict`` and the GET routes. The others answer 422 ``WrongTask`` and are left out of ``/openapi.json``.
CAPABILITY_ROUTES = {"embed": {"/embed", "/similarity", "/v1/embeddings", "/embeddings"}, "rerank": {"/rerank"}}
