"""Domain errors become 4xx/503 with a reason; nothing else reaches a user as a traceback."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.auth import log_denied
from api.schemas import BatchRefusedOut, FieldErrorOut, ValidationErrorOut
from backends.base import BackendUnavailable
from dispatch.dispatcher import BatchInvalid, TaskRejected
from dispatch.rollout.control import RolloutInvalid
from dispatch.rollout.pause import ResumeRefused
from dispatch.rollout.store import NothingToRestore, RolloutConflict, RolloutRateLimited
from execution.redaction import redact_text
from execution.tools.registry import InvalidPayload, UnknownTool

# A body with ten thousand unknown fields gets a short answer, not ten thousand lines.
MAX_REPORTED_ERRORS = 20


def install_error_handlers(app: FastAPI) -> None:
    """Map each domain error to its status code."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=validation_body(exc).model_dump())

    @app.exception_handler(UnknownTool)
    async def unknown_tool(_: Request, exc: UnknownTool) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc), "known_tools": exc.known})

    @app.exception_handler(InvalidPayload)
    async def invalid_payload(_: Request, exc: InvalidPayload) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(BatchInvalid)
    async def invalid_batch(_: Request, exc: BatchInvalid) -> JSONResponse:
        errors = [
            FieldErrorOut(loc=["body", "items", p.index, p.field], msg=p.reason, type="value_error")
            for p in exc.problems[:MAX_REPORTED_ERRORS]
        ]
        body = BatchRefusedOut(detail=str(exc), errors=errors)
        return JSONResponse(status_code=422, content=body.model_dump(exclude_none=True))

    @app.exception_handler(RolloutInvalid)
    async def invalid_rollout(_: Request, exc: RolloutInvalid) -> JSONResponse:
        where = ["header" if exc.field == "If-Match" else "body", *exc.field.split(".")]
        body = ValidationErrorOut(
            detail=str(exc), errors=[FieldErrorOut(loc=where, msg=str(exc), type="value_error")]
        )
        return JSONResponse(status_code=422, content=body.model_dump())

    @app.exception_handler(RolloutConflict)
    async def rollout_conflict(_: Request, exc: RolloutConflict) -> JSONResponse:
        return JSONResponse(
            status_code=409, content={"detail": str(exc)}, headers={"ETag": f'"{exc.current}"'}
        )

    @app.exception_handler(RolloutRateLimited)
    async def rollout_rate_limited(request: Request, exc: RolloutRateLimited) -> JSONResponse:
        caller = getattr(request.state, "caller", None)
        log_denied(request, caller, status_code=429, reason="rollout change rate limit")
        return JSONResponse(
            status_code=429,
            content={"detail": str(exc)},
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
        )

    @app.exception_handler(NothingToRestore)
    async def nothing_to_restore(_: Request, exc: NothingToRestore) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(ResumeRefused)
    async def resume_refused(_: Request, exc: ResumeRefused) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(BackendUnavailable)
    async def unavailable(_: Request, exc: BackendUnavailable) -> JSONResponse:
        content: dict[str, object] = {"detail": redact_text(exc.reason)}
        if isinstance(exc, TaskRejected):
            content["task_id"] = exc.task_id
        return JSONResponse(
            status_code=503, content=content, headers={"Retry-After": str(exc.retry_after)}
        )


def validation_body(exc: RequestValidationError) -> ValidationErrorOut:
    """One readable sentence plus the problems; input values are left out (they may be secrets)."""
    errors = [
        FieldErrorOut(
            loc=[part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
            msg=str(error.get("msg", "invalid")).removeprefix("Value error, "),
            type=str(error.get("type", "invalid")),
        )
        for error in exc.errors()[:MAX_REPORTED_ERRORS]
    ]
    summary = "; ".join(f"{'.'.join(map(str, e.loc)) or 'request'}: {e.msg}" for e in errors[:3])
    more = len(exc.errors()) - 3
    if more > 0:
        summary += f" (and {more} more)"
    return ValidationErrorOut(detail=f"invalid request: {summary}", errors=errors)
