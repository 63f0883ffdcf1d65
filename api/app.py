"""The FastAPI application: built around a Runtime, which it starts and stops with itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from api.errors import install_error_handlers
from api.limits import install_request_limits, reject_undeclared_query
from api.routes import (
    cohorts,
    dashboard,
    failed,
    pause,
    queue,
    rollout,
    system,
    task_batch,
    task_stream,
    tasks,
)
from api.runtime import Runtime
from api.schemas import ValidationErrorOut

log = structlog.get_logger(__name__)

DOCS_ASSETS = "/docs-assets"
"""Where /docs and /redoc load their scripts, styles and icon from: this app, never a CDN."""


def create_app(runtime: Runtime, *, owns_runtime: bool = True) -> FastAPI:
    """The API over `runtime`; backends start on startup and drain on shutdown, unless
    `owns_runtime` is False: then the application embedding it does (api/embedded.py)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not owns_runtime:
            yield
            return
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
        docs_url=None,  # served by install_offline_docs instead
        redoc_url=None,
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
    app.include_router(task_batch.router)
    app.include_router(failed.router)
    app.include_router(task_stream.router)
    app.include_router(rollout.router)
    app.include_router(pause.router)
    app.include_router(cohorts.router)
    app.include_router(system.router)
    app.include_router(dashboard.router)
    app.include_router(queue.router)
    install_offline_docs(app)
    return app


def install_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with every asset served by the app, so they work offline.

    FastAPI's recipe for self-hosted docs assets; the files come from the fastapi-offline
    package, which ships Swagger UI and ReDoc builds.
    """
    app.mount(
        DOCS_ASSETS,
        StaticFiles(packages=[("fastapi_offline", "static")]),
        name="docs-assets",
    )
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
