"""Request limits: body size (413), CORS (off unless asked), what stored JSON and text may hold."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

MAX_PAYLOAD_DEPTH = 32
"""Nesting deeper than this is refused: it serves no tool and can exhaust the JSON encoder."""


class BodySizeLimit:
    """Refuse a request body over `max_bytes` with 413, whether declared or streamed in.

    The body is read here, up to the limit, before the app sees it: a route never starts on a
    request that will turn out too large, and a missing or false Content-Length changes nothing.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, send)
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        log.info("request.too_large", path=scope.get("path"), limit=self.max_bytes)
        detail = f"request body is larger than MAX_REQUEST_BYTES ({self.max_bytes} bytes)"
        content = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def install_request_limits(app: FastAPI, *, max_bytes: int, cors_origins: Sequence[str]) -> None:
    """Body size limit always; CORS only for the origins named (none: no CORS headers at all)."""
    app.add_middleware(BodySizeLimit, max_bytes=max_bytes)
    if cors_origins:
        # Added last so it is outermost: a browser can read the 413 too.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            allow_credentials=False,  # keys travel in a header, never in cookies
            max_age=600,
        )


async def reject_undeclared_query(request: Request) -> None:
    """422 for a query parameter the route does not take: `?stauts=FAILED` must not list all."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    unknown = sorted(set(request.query_params) - _query_names(route.dependant))
    if unknown:
        raise RequestValidationError(
            [
                {"type": "extra_forbidden", "loc": ("query", name), "msg": "Unknown parameter"}
                for name in unknown
            ]
        )


def _query_names(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for dependency in dependant.dependencies:
        names |= _query_names(dependency)
    return names


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # counted as it streams in instead
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # only http.disconnect is left to come
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def check_storable_json(value: Any, *, depth: int = 0, where: str = "payload") -> None:
    """Raise ValueError unless `value` can be stored and sent back as JSON unchanged.

    Python's JSON reader accepts NaN, Infinity and lone surrogates, which no JSON writer can
    return: such a task would be created and then fail every read. PostgreSQL refuses NUL
    (`\\u0000`) in text and jsonb, so a NUL anywhere, key or value, would fail the write with
    a 500; it is refused on SQLite too, so both databases take the same requests. Also checks
    a plain string: the text fields a request stores (a rollout reason) use the same rules.
    """
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValueError(f"{where} nests deeper than {MAX_PAYLOAD_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} holds {value}, which JSON cannot represent")
    if isinstance(value, str):
        _check_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{where} key")
            check_storable_json(item, depth=depth + 1, where=f"{where}.{key[:40]}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_storable_json(item, depth=depth + 1, where=f"{where}[{index}]")


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ValueError(f"{where} holds a NUL character (\\u0000), which cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where} holds a lone surrogate, which is not valid UTF-8") from None
