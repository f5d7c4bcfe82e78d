"""The OpenAPI document: the API description, per-route responses, and a schema as strict as the server."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI

from .schemas import (
    CAPABILITY_ROUTES,
    TIMING_HEADERS,
    TIMING_UNIT,
    ErrorBody,
    request_schemas,
)
from .state import ServerState

log = logging.getLogger("multiverse.serve")

DESCRIPTION = f"""
Multiverse serves one optimised ONNX bundle (one model, one task) on CPU. This document lists only the
routes this model's task can serve.

* `POST /predict` — the Infinity-container contract: `{{"inputs": str | [str] | [[text, text_pair]], "parameters": {{...}}}}`.
  A single string gets a single result, a list gets a list of results.
* `POST /` — dispatched by task as TEI does (what `huggingface_hub.InferenceClient(model=URL)` calls):
  embeddings or sentence similarity (feature-extraction), otherwise as `/predict`.
* TEI-compatible `POST /embed`, `POST /similarity`, `POST /rerank`, `GET /info`, `GET /health`;
  OpenAI-compatible `POST /v1/embeddings`, `GET /v1/models`; infinity-compatible `POST /embeddings`, `GET /models`.
* `GET /v2/health/live`, `GET /v2/health/ready` (503 until the model is loaded and warmed up, and from the start
  of a drain on SIGTERM), `GET /metrics` (Prometheus).

**Timing headers** (pipeline routes), all in {TIMING_UNIT}:
`x-compute-time` (tokenization + inference + post-processing of this request; no queueing),
`x-tokenization-time`, `x-queue-time`, `x-inference-time`, `x-postprocess-time`.
`x-compute-tokens` counts real tokens after truncation, `x-compute-characters` the characters sent.

**Empty input**: a text counts as empty when it has nothing but whitespace, control and format characters
(zero-width space U+200B, BOM U+FEFF ...): 400 `EmptyInput`, on every route.

**Errors** are JSON `{{"error": "...", "error_type": "..."}}`: 400 empty input or a body that is not JSON
(not UTF-8, malformed, nested too deeply), 401 missing or wrong API key, 404/405 unknown route or method,
408 `RequestTimeout` (the body did not arrive within `--body-timeout`), 413 `PayloadTooLarge` (body larger than
`--max-body`, or more real tokens in one request than `--max-batch-tokens`: split the batch), 422 invalid input
(wrong types or shape, unknown `parameters`, more inputs than `--max-client-batch-size`, text too long, pairs
sent to a single-text model, a route that does not fit the model's task), 429 overloaded (bounded queue; retry
after a moment), 503 not ready, or `ShuttingDown` with `Retry-After` while draining on SIGTERM (retry on another
instance), 500 internal error (details only in the server log).
Texts longer than the model's token limit are truncated, unless the request says `truncate: false`: then 422
`InputTooLong` (as TEI): shorten the text or allow truncation. A text over the server's `--max-chars` is 422
`TooManyCharacters` whatever `truncate` says: split the text. Unknown top-level fields of a request body are ignored (as TEI and infinity do); unknown
keys of `/predict`'s `parameters` are 422.
"""


def responses(ok_model: Any, description: str) -> dict:
    headers = {name: {"description": doc, "schema": {"type": "string"}} for name, doc in TIMING_HEADERS.items()}
    out: dict = {200: {"model": ok_model, "description": description, "headers": headers}}
    for code, what in ((400, "Empty input or malformed body"), (401, "Missing or wrong API key"),
                       (408, "The body did not arrive in time (--body-timeout)"),
                       (413, "Body too large (--max-body), or too many tokens in one request (--max-batch-tokens)"),
                       (422, "Invalid input"), (429, "Overloaded"),
                       (503, "Not ready, or shutting down (with Retry-After)")):
        out[code] = {"model": ErrorBody, "description": what}
    return out


def strict_openapi(app: FastAPI, state: ServerState) -> None:
    """Serve an OpenAPI document as strict as the server: only the routes the model's task serves, and
    request bodies from :func:`~multiverse.serve.schemas.request_schemas` (lengths, counts, parameters,
    the empty-text rule). Built on each call until the model is ready (the task and the embedding size
    are known then), cached after."""
    from fastapi.openapi.utils import get_openapi

    cache: list[dict] = []

    def openapi() -> dict:
        if cache:
            return cache[0]
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        task, s = state.spec, state.settings
        bodies = request_schemas(task, s.max_batch, s.max_chars, state.dim)
        hidden = set().union(*CAPABILITY_ROUTES.values()) - CAPABILITY_ROUTES.get(task.capability, set()) \
            if task else set()
        for path in list(spec["paths"]):
            if path in hidden:
                del spec["paths"][path]
                continue
            post = spec["paths"][path].get("post")
            if post is not None and path in bodies:
                post["requestBody"] = {"required": True, "content": {"application/json": {"schema": bodies[path]}}}
        if state.ready:
            cache.append(spec)
        return spec

    app.openapi = openapi


