"""The FastAPI application: Infinity-compatible ``/predict``, TEI and OpenAI routes, health, metrics.

Build it with :func:`create_app`; run it with :func:`multiverse.serve.server.serve` (uvicorn).
The model loads and warms up in a background thread after start-up, so the liveness probe
answers at once and readiness (and every model route) answers 503 until the model is ready.

Hot path: the body is read (size-limited) by a small ASGI guard, parsed and validated in one
step by pydantic-core, checked against the limits on the event loop, then tokenized, run and
post-processed by the engine's worker thread; the answer is serialised with pydantic-core.
"""


from __future__ import annotations

import asyncio
import base64
import logging
import threading
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import MultiverseError
from .engine import Result
from .guard import STATUS_TYPES, Guard
from .openapi import DESCRIPTION, responses, strict_openapi
from .schemas import (
    ApiError,
    EmbedRequest,
    ErrorBody,
    ModelList,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    PredictRequest,
    PredictResponse,
    RankItem,
    RerankRequest,
    RootEmbedRequest,
    SimilarityInputs,
    SimilarityParameters,
    SimilarityRequest,
    body_schema,
    is_blank,
    parse,
)
from .settings import ServeSettings
from .state import (
    ServerState,
    check_dimensions,
    check_direction,
    info_document,
    model_list,
)

_JSON = "application/json"

log = logging.getLogger("multiverse.serve")


def _timing_headers(res: Result, n_chars: int) -> dict[str, str]:
    return {
        "x-compute-time": f"{res.compute_ms:.3f}",
        "x-tokenization-time": f"{res.tokenization_ms:.3f}",
        "x-queue-time": f"{res.queue_ms:.3f}",
        "x-inference-time": f"{res.inference_ms:.3f}",
        "x-postprocess-time": f"{res.postprocess_ms:.3f}",
        "x-compute-tokens": str(res.n_tokens),
        "x-compute-characters": str(n_chars),
    }


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(payload), status_code=status, media_type=_JSON, headers=headers)


def _error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"error": message, "error_type": error_type}, status, headers)


def _truncation(*values: bool | None) -> dict:
    """``{"truncate": False}`` when any of a request's ``truncate`` fields is false (the engine then refuses
    texts over the token limit rather than truncating them), else ``{}``."""
    return {"truncate": False} if any(v is False for v in values) else {}


def create_app(source: Any, settings: ServeSettings | None = None) -> FastAPI:
    """Build the HTTP application for one model.

    Args:
        source: a bundle folder (``str``/``Path``) or loaded ``multiverse.bundle.Bundle`` (loaded with
            ``Predictor.from_bundle`` in the background at start-up), a ready
            ``multiverse.inference.Predictor``, or a zero-argument callable returning one.
        settings: limits and knobs (:class:`ServeSettings`; defaults when omitted).

    Returns a FastAPI app. ``app.state.multiverse`` holds the shared state; set its ``on_fatal``
    callback to learn about a failed model load. Raises BundleError when ``source`` is a folder
    without a readable manifest.
    """
    settings = settings or ServeSettings()
    state = ServerState(source, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()
        state.loader = threading.Thread(target=state.load, name="multiverse-load", daemon=True)
        state.loader.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, state.shutdown)

    app = FastAPI(title="Multiverse", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.multiverse = state

    # ----------------------------------------------------------------- errors
    @app.exception_handler(MultiverseError)
    async def _multiverse_error(request: Request, exc: MultiverseError):
        """Every error of the tree (ApiError, InputError, RequestTooLarge, BundleError …) answers with its own
        ``http_status`` and ``error_type``; a 5xx never echoes the message (details go to the log)."""
        status = int(getattr(exc, "http_status", 500))
        if status >= 500 and not isinstance(exc, ApiError):
            log.error("error on %s", request.url.path, exc_info=exc)
            return _error(status, exc.error_type, "Internal server error; see the server log.")
        return _error(status, exc.error_type, str(exc), getattr(exc, "headers", None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error."
        return _error(exc.status_code, STATUS_TYPES.get(exc.status_code, "HTTPError"), message,
                      dict(exc.headers) if exc.headers else None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, "InvalidInput", "Invalid request.")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("unhandled error on %s", request.url.path, exc_info=exc)
        return _error(500, "InternalServerError", "Internal server error; see the server log.")

    # ----------------------------------------------------------------- routes
    def accept(body: bytes, model: type, capability: str, route: str):
        """``body`` parsed as ``model`` for a route that needs ``capability`` (``embed``, ``rerank``): 503 until
        the model is ready, then 422 ``WrongTask`` when the bundle's task lacks it, then the body's own checks."""
        state.require_ready()
        state.require_capability(capability, route)
        return parse(model, body)

    async def predict_body(body: bytes, wrap_single: bool = False) -> Response:
        state.require_ready()
        req = parse(PredictRequest, body)
        items, n_chars = state.check_items(req.inputs)
        tei = req.model_dump(include={"raw_scores", "truncate", "truncation_direction"}, exclude_none=True)
        if tei.get("raw_scores") is False and "raw_scores" not in state.spec.Params.model_fields:
            del tei["raw_scores"]  # TEI's default, accepted whatever the task
        params = {**state.spec.http_defaults, **state.check_params(req.parameters)}
        params.update(state.check_params(tei))  # checked apart: a valid top-level field must not hide a bad one
        res = await state.run(items, params)
        single = isinstance(req.inputs, str)
        payload = ([res.results[0]] if wrap_single else res.results[0]) if single else res.results
        return _json(payload, headers=_timing_headers(res, n_chars))

    async def embed_body(req: EmbedRequest) -> Response:
        check_direction(req.truncation_direction)
        if req.prompt_name is not None:
            raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
        check_dimensions(req.dimensions, state.dim)
        items, n_chars = state.check_items(req.inputs)
        truncate = req.parameters.truncate if isinstance(req, RootEmbedRequest) and req.parameters else None
        res = await state.run(items, {"normalize": req.normalize, **_truncation(req.truncate, truncate)})
        return _json(res.results, headers=_timing_headers(res, n_chars))

    async def similarity_body(inputs: SimilarityInputs, params: SimilarityParameters | None,
                              truncate: bool | None = None) -> Response:
        if params is not None:
            check_direction(params.truncation_direction)
            if params.prompt_name is not None:
                raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
        if is_blank(inputs.source_sentence):
            raise ApiError(400, "EmptyInput", "`source_sentence` is empty (nothing but whitespace, control or "
                                              "zero-width characters); send some text.")
        if not inputs.sentences:
            raise ApiError(400, "EmptyInput", "`sentences` is empty: send at least one sentence to compare.")
        items, n_chars = state.check_items([inputs.source_sentence, *inputs.sentences], "sentences")
        res = await state.run(items, {"normalize": True, **_truncation(truncate, params and params.truncate)})
        vectors = np.asarray(res.results, dtype=np.float32)
        scores = (vectors[1:] @ vectors[0]).tolist()  # unit vectors: dot product = cosine similarity
        return _json(scores, headers=_timing_headers(res, n_chars))

    async def openai_body(body: bytes, route: str) -> Response:
        req = accept(body, OpenAIEmbeddingRequest, "embed", route)
        check_dimensions(req.dimensions, state.dim)
        items, n_chars = state.check_items(req.input, "input")
        res = await state.run(items, {})
        if req.encoding_format == "base64":
            data = [{"object": "embedding", "index": i,
                     "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")}
                    for i, v in enumerate(res.results)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(res.results)]
        payload = {"object": "list", "data": data, "model": state.model_name,
                   "usage": {"prompt_tokens": res.n_tokens, "total_tokens": res.n_tokens}}
        return _json(payload, headers=_timing_headers(res, n_chars))

    @app.post("/", summary="Run the model, dispatched by task (TEI; huggingface_hub.InferenceClient)",
              response_class=Response, openapi_extra=body_schema(PredictRequest),
              responses=responses(PredictResponse, "feature-extraction: as `/embed`, or as `/similarity` when "
                                   "`inputs` is {source_sentence, sentences}; text-classification: a list of label "
                                   "lists (one per input, also for a single string); token-classification and "
                                   "ranking: as `/predict`."))
    async def root(request: Request):
        body = await request.body()
        state.require_ready()
        if state.spec.capability != "embed":
            return await predict_body(body, wrap_single=state.spec.root_wraps_single)
        req = parse(RootEmbedRequest, body)
        if isinstance(req.inputs, SimilarityInputs):
            check_direction(req.truncation_direction)
            check_dimensions(req.dimensions, state.dim)
            if req.prompt_name is not None:
                raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
            return await similarity_body(req.inputs, req.parameters, req.truncate)
        if req.parameters is not None:
            check_direction(req.parameters.truncation_direction)
            if req.parameters.prompt_name is not None:
                raise ApiError(422, "InvalidInput", "`prompt_name` is not supported; prepend the prompt to the text.")
        return await embed_body(req)

    @app.post("/predict", summary="Run the model (Infinity contract; TEI /predict)", response_class=Response,
              openapi_extra=body_schema(PredictRequest), responses=responses(PredictResponse, "Task results: "
              "labels and scores (text-classification), embeddings (feature-extraction), entities "
              "(token-classification), one score per pair (ranking). One result for a string input, a list "
              "for a list input."))
    async def predict(request: Request):
        return await predict_body(await request.body())

    @app.post("/embed", summary="Embeddings (TEI)", response_class=Response, openapi_extra=body_schema(EmbedRequest),
              responses=responses(list[list[float]], "One embedding per input (always a list)."))
    async def embed(request: Request):
        return await embed_body(accept(await request.body(), EmbedRequest, "embed", "/embed"))

    @app.post("/similarity", summary="Sentence similarity (TEI)", response_class=Response,
              openapi_extra=body_schema(SimilarityRequest),
              responses=responses(list[float], "Cosine similarity of `source_sentence` to each sentence, in order."))
    async def similarity(request: Request):
        req = accept(await request.body(), SimilarityRequest, "embed", "/similarity")
        return await similarity_body(req.inputs, req.parameters)

    @app.post("/rerank", summary="Rerank passages for a query (TEI)", response_class=Response,
              openapi_extra=body_schema(RerankRequest),
              responses=responses(list[RankItem], "Passages sorted by score, best first."))
    async def rerank(request: Request):
        req = accept(await request.body(), RerankRequest, "rerank", "/rerank")
        check_direction(req.truncation_direction)
        if not req.texts:
            raise ApiError(400, "EmptyInput", "`texts` is empty: send at least one passage.")
        if is_blank(req.query):
            raise ApiError(400, "EmptyInput", "`query` is empty (nothing but whitespace, control or zero-width "
                                              "characters); send some text.")
        items, n_chars = state.check_items([[req.query, t] for t in req.texts], "texts")
        res = await state.run(items, {"raw_scores": req.raw_scores, **_truncation(req.truncate)})
        order = sorted(range(len(res.results)), key=lambda i: -res.results[i])
        if req.return_text:
            payload = [{"index": i, "score": res.results[i], "text": req.texts[i]} for i in order]
        else:
            payload = [{"index": i, "score": res.results[i]} for i in order]
        return _json(payload, headers=_timing_headers(res, n_chars))

    @app.post("/v1/embeddings", summary="Embeddings (OpenAI)", response_class=Response,
              openapi_extra=body_schema(OpenAIEmbeddingRequest),
              responses=responses(OpenAIEmbeddingResponse, "OpenAI embeddings list."))
    async def openai_embeddings(request: Request):
        return await openai_body(await request.body(), "/v1/embeddings")

    @app.post("/embeddings", summary="Embeddings (infinity; same as /v1/embeddings)", response_class=Response,
              openapi_extra=body_schema(OpenAIEmbeddingRequest),
              responses=responses(OpenAIEmbeddingResponse, "OpenAI embeddings list."))
    async def infinity_embeddings(request: Request):
        return await openai_body(await request.body(), "/embeddings")

    @app.get("/v1/models", summary="The served model (OpenAI)", response_class=Response,
             responses={200: {"model": ModelList, "description": "One model: this server's."}})
    async def openai_models():
        return _json(model_list(state, openai=True))

    @app.get("/models", summary="The served model (infinity)", response_class=Response,
             responses={200: {"model": ModelList, "description": "One model: this server's."}})
    async def infinity_models():
        return _json(model_list(state, openai=False))

    @app.get("/info", summary="Model and server information (TEI)")
    async def info():
        return _json(info_document(state))

    @app.get("/health", summary="200 when the model is ready, else 503 (TEI; 503 from the start of a drain)",
             responses={503: {"model": ErrorBody, "description": "Not ready, or shutting down"}})
    async def health():
        state.require_ready()
        return _json({"status": "ok"})

    @app.get("/v2/health/live", summary="Liveness: 200 while the process serves HTTP")
    async def live():
        return _json({"live": True})

    @app.get("/v2/health/ready", summary="Readiness: 200 once the model is loaded and warmed up, else 503 "
                                         "(also from the start of a drain, on SIGTERM)",
             responses={503: {"model": ErrorBody, "description": "Not ready, or shutting down"}})
    async def ready():
        state.require_ready()
        return _json({"ready": True})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        m = state.metrics
        m.queue_size.set(state.engine.queue_size if state.engine is not None else 0)
        return Response(m.render(), media_type=m.content_type)

    strict_openapi(app, state)
    _make_routes_lean(app)
    app.add_middleware(Guard, state=state)
    return app


def _make_routes_lean(app: FastAPI) -> None:
    """Call our endpoints directly (they take only the Request), skipping FastAPI's dependency solving.

    The routes stay ``APIRoute`` objects, so the OpenAPI document is unchanged.
    """
    from fastapi.routing import APIRoute
    from starlette.routing import request_response

    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.endpoint.__module__ == __name__:
            endpoint = route.endpoint
            if endpoint.__code__.co_argcount == 1:
                route.app = request_response(endpoint)
            else:
                route.app = request_response(_no_request(endpoint))


def _no_request(endpoint):
    async def call(request: Request):
        return await endpoint()

    return call


