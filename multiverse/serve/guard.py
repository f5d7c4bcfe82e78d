"""The ASGI guard in front of every route: API key, request-body size and read deadline, request metrics.

It answers 401 (missing or wrong key, except on :data:`PUBLIC_PATHS`), 413 (body over ``--max-body``) and
408 (a body that does not arrive within ``--body-timeout``) itself, before FastAPI parses anything.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

from pydantic_core import to_json

from .state import ServerState

log = logging.getLogger("multiverse.serve")

#: Routes that never need the API key (orchestrator probes).
PUBLIC_PATHS = frozenset({"/health", "/v2/health/live", "/v2/health/ready"})


STATUS_TYPES = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
                 413: "PayloadTooLarge", 415: "UnsupportedMediaType", 422: "InvalidInput", 429: "Overloaded",
                 503: "NotReady"}


class Guard:
    """Pure-ASGI outer layer: API key, body size limit and read deadline (the body is read here, once),
    request metrics."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state
        key = state.settings.api_key
        self.key = key.encode() if key else None
        self.max_body = state.settings.max_body_bytes
        self.body_timeout = state.settings.body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            path = scope["path"]
            if self.key is not None and path not in PUBLIC_PATHS and not self._authorized(scope):
                await _send_error(send_tracked, 401, "Unauthorized",
                                  "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                                  [(b"www-authenticate", b"Bearer")])
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive, send_tracked)
                if body is None:
                    return
                delivered = False

                async def replay():
                    nonlocal delivered
                    if not delivered:
                        delivered = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_tracked)
            else:
                await self.app(scope, receive, send_tracked)
        finally:
            self.state.metrics.observe_request(scope["path"], status[0], time.perf_counter() - t0)

    def _authorized(self, scope) -> bool:
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
                    break
            elif name == b"x-api-key":
                given = value.strip()
                break
        return hmac.compare_digest(given, self.key)

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole body, or None once an answer was sent (413 too large, 408 not sent in time) or the client left.

        The body must arrive within ``body_timeout`` s of the request head: a client that declares a
        body and stalls gets 408 (or 413, when it had declared too much) and the connection is closed."""
        limit = self.max_body
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        progress = {"too_large": declared is not None and declared > limit, "more": True}
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await self._receive_body(receive, limit, declared, progress)
        except TimeoutError:
            if progress["too_large"]:
                await _send_error(send, 413, "PayloadTooLarge", f"The request body is larger than {limit} bytes; "
                                  "send smaller batches.", [(b"connection", b"close")])
            else:
                await _send_error(send, 408, "RequestTimeout", f"The request body did not arrive within "
                                  f"{self.body_timeout:g} s (--body-timeout); send it at once.",
                                  [(b"connection", b"close")])
            return None
        if body is _TOO_LARGE:
            await _send_error(send, 413, "PayloadTooLarge",
                              f"The request body is larger than {limit} bytes; send smaller batches.",
                              [(b"connection", b"close")] if progress["more"] else [])
            return None
        return body

    @staticmethod
    async def _receive_body(receive, limit: int, declared: int | None, progress: dict):
        """Read the body (bytes), or drain a too-large one (``_TOO_LARGE``), or None on disconnect."""
        chunks: list[bytes] = []
        size = 0
        if not progress["too_large"]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                more = progress["more"] = message.get("more_body", False)
                if not chunks and not more and len(chunk) <= limit:
                    return chunk
                size += len(chunk)
                if size > limit:
                    progress["too_large"] = True
                    break
                chunks.append(chunk)
                if not more:
                    return b"".join(chunks)
            chunks.clear()
        # Too large: read and discard up to 8× the limit, so the client sees the 413 instead of a reset.
        drained, cap = size, 8 * limit
        if progress["more"] and (declared is None or declared <= cap):
            while drained <= cap:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    progress["more"] = False
                    break
        return _TOO_LARGE


_TOO_LARGE = object()


async def _send_error(send, status: int, error_type: str, message: str, extra: list | None = None) -> None:
    body = to_json({"error": message, "error_type": error_type})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body, "more_body": False})


