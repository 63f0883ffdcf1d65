"""The FastAPI application: built around a Runtime, which it starts and stops with itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.errors import install_error_handlers
from api.limits import install_request_limits, reject_undeclared_query
from api.routes import rollout, system, tasks
from api.runtime import Runtime
from api.schemas import ValidationErrorOut

log = structlog.get_logger(__name__)


def create_app(runtime: Runtime) -> FastAPI:
    """The API over `runtime`; backends start on startup and drain on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            # Blocking: running thread-backend tasks get up to SHUTDOWN_TIMEOUT to finish.
            await run_in_threadpool(runtime.stop)

    app = FastAPI(
        title="Switchyard",
        summary="Run background jobs on threads or Celery, moved over gradually and reversibly.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(reject_undeclared_query)],
        responses={
            422: {"model": ValidationErrorOut, "description": "The request does not fit the schema"}
        },
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    install_request_limits(
        app,
        max_bytes=runtime.settings.max_request_bytes,
        cors_origins=runtime.settings.cors_origin_list,
    )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("api.unhandled", path=request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error; see the logs"})

    app.include_router(tasks.router)
    app.include_router(rollout.router)
    app.include_router(system.router)
    return app
