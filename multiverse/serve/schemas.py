"""Request and response models of the HTTP API (pydantic), and how a bad body becomes a clear 4xx.

Request bodies are parsed and validated in one step by pydantic-core's JSON parser
(``model_validate_json``): invalid UTF-8, malformed JSON and nesting deeper than its
recursion limit are errors, never a crash. Error messages are written here and never
echo the request back.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TIMING_UNIT = "milliseconds (float, 3 decimals; wall clock, time.perf_counter)"

#: Response headers of the pipeline routes, for the OpenAPI documentation.
TIMING_HEADERS = {
    "x-compute-time": "End-to-end pipeline time of this request: tokenization + inference + post-processing, "
                      f"in {TIMING_UNIT}. Queueing is not included (see x-queue-time).",
    "x-tokenization-time": f"Tokenization time in {TIMING_UNIT}.",
    "x-queue-time": f"Time waiting for the inference worker in {TIMING_UNIT}.",
    "x-inference-time": f"ONNX Runtime run time in {TIMING_UNIT} (the whole batch when batched with other requests).",
    "x-postprocess-time": f"Post-processing time in {TIMING_UNIT}.",
    "x-compute-tokens": "Real (non-pad) tokens of this request after truncation (integer).",
    "x-compute-characters": "Characters of this request's texts (integer).",
}


class ApiError(Exception):
    """An HTTP error answer: ``status`` with JSON body ``{"error": message, "error_type": error_type}``."""

    def __init__(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = headers


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str = Field(description="What went wrong and what to do next.")
    error_type: str = Field(description="Machine-readable kind, e.g. EmptyInput, InvalidInput, PayloadTooLarge, "
                                        "Overloaded, NotReady, Unauthorized, InternalServerError.")


Texts = str | list[str] | list[tuple[str, str]]
_Strict = ConfigDict(strict=True, extra="forbid")
_Lenient = ConfigDict(strict=True, extra="ignore")


class PredictRequest(BaseModel):
    """``POST /predict``: the Infinity-container contract (TEI's ``/predict`` fields are accepted too)."""

    model_config = _Strict
    inputs: Texts = Field(description="A text, a list of texts, or a list of [text, text_pair] pairs (ranking; "
                                      "sentence-pair classifiers).")
    parameters: dict[str, Any] | None = Field(
        None, description="Task options. text-classification: `top_k` (int ≥ 1, default 1; null = all labels). "
                          "feature-extraction: `normalize` (bool, default from the bundle). ranking: `raw_scores` "
                          "(bool, default false: sigmoid). token-classification: `ignore_labels` (list of labels, "
                          "default [\"O\"]), `aggregation_strategy` (\"simple\" only). All tasks: `truncate` (bool, ignored: texts longer than the model's "
                          "limit are always truncated), `truncation_direction` (\"right\" only).")
    raw_scores: bool | None = Field(None, description="TEI: same as parameters.raw_scores.")
    truncate: bool | None = Field(None, description="TEI: accepted and ignored (always truncates).")
    truncation_direction: str | None = Field(None, description="TEI: \"right\" only.")


class EmbedRequest(BaseModel):
    """TEI ``POST /embed``."""

    model_config = _Lenient
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool | None = None
    truncation_direction: str | None = None
    prompt_name: str | None = Field(None, description="Not supported; must be null.")
    dimensions: int | None = Field(None, description="Must equal the model's dimension when given.")


class RerankRequest(BaseModel):
    """TEI ``POST /rerank``."""

    model_config = _Lenient
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: str | None = None


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``."""

    model_config = _Lenient
    input: str | list[str] = Field(description="A text or a list of texts (token-id arrays are not accepted).")
    model: str | None = Field(None, description="Ignored: the server serves one model.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="Must equal the model's dimension when given.")
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
    if first["type"] == "missing":
        return ApiError(422, "InvalidInput", f"`{field}` is required; this route accepts {_fields(model)}.")
    if first["type"] == "extra_forbidden":
        return ApiError(422, "InvalidInput", f"Unknown field `{field[:64]}`; this route accepts {_fields(model)}.")
    if field in _FIELD_HELP:
        return ApiError(422, "InvalidInput", _FIELD_HELP[field])
    return ApiError(422, "InvalidInput", f"`{field}`: {first['msg']}.")


def _fields(model: type[BaseModel]) -> str:
    return ", ".join(f"`{name}`" for name in model.model_fields)


def body_schema(model: type[BaseModel]) -> dict:
    """OpenAPI ``requestBody`` for a model parsed by hand (see :func:`parse`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
