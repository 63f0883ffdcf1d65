"""Domain errors become 4xx/503 with a reason; nothing else reaches a user as a traceback."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from backends.base import BackendUnavailable
from dispatch.dispatcher import TaskRejected
from execution.redaction import redact_text
from execution.tools.registry import InvalidPayload, UnknownTool


def install_error_handlers(app: FastAPI) -> None:
    """Map each domain error to its status code."""

    @app.exception_handler(UnknownTool)
    async def unknown_tool(_: Request, exc: UnknownTool) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc), "known_tools": exc.known})

    @app.exception_handler(InvalidPayload)
    async def invalid_payload(_: Request, exc: InvalidPayload) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        content: dict[str, object] = {"detail": redact_text(exc.reason)}
        if isinstance(exc, TaskRejected):
            content["task_id"] = exc.task_id
        return JSONResponse(
            status_code=503, content=content, headers={"Retry-After": str(exc.retry_after)}
        )
