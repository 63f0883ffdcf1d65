"""Switchyard inside an application: a plain script, or a FastAPI app that embeds or mounts it.

`Switchyard` builds the same Runtime `switchyard serve` runs (settings from the environment and
`.env`, the embedded database migrated, backends and the recovery sweep started) and binds it
as the process's submitter, so `my_tool.enqueue(payload)` goes through the same dispatcher,
routing and rows as POST /tasks:

    with Switchyard.start():                          # a script
        handle = profile_csv.enqueue({"path": "a.csv"})
        handle.wait(timeout=30)

    switchyard = Switchyard()                         # a FastAPI app
    app = FastAPI(lifespan=switchyard.lifespan)
    app.mount("/switchyard", switchyard.app)          # optional: the HTTP API and /docs too

Starlette does not run a mounted app's lifespan, so the host app's lifespan is what starts
Switchyard; the mounted API answers 503 saying so while it is not started.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.app import create_app
from api.keys import USER_ID_PATTERN
from api.limits import check_storable_json
from api.runtime import Runtime
from api.settings import Settings, load_settings
from dispatch.dispatcher import NewTask
from execution.logs import configure_logging
from execution.records import TaskRecord
from execution.tools import enqueue
from execution.tools.registry import InvalidPayload

log = structlog.get_logger(__name__)

_USER_ID = re.compile(USER_ID_PATTERN)

NOT_STARTED = (
    "Switchyard is not started: give the host app its lifespan, "
    "FastAPI(lifespan=switchyard.lifespan) (Starlette does not run a mounted app's lifespan)"
)


class RuntimeSubmitter:
    """`.enqueue` through a Runtime: what POST /tasks, GET and cancel do, without HTTP."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def submit(
        self, tool_id: str, payload: Any, *, user_id: str, priority: int | None
    ) -> TaskRecord:
        """Create the task through the dispatcher, with the checks HTTP makes on its body."""
        if not _USER_ID.fullmatch(user_id):
            raise ValueError(f"user_id {user_id!r} does not match {USER_ID_PATTERN}")
        request = NewTask(
            tool_id=tool_id,
            payload=_as_stored(tool_id, payload),
            priority=priority,
            user_id=user_id,
        )
        return self._runtime.dispatcher.submit(request)

    def get(self, task_id: str) -> TaskRecord | None:
        """The task's row now."""
        return self._runtime.store.get(task_id)

    def cancel(self, task_id: str, *, actor: str) -> TaskRecord | None:
        """Cancel as POST /tasks/{id}/cancel does."""
        return self._runtime.dispatcher.cancel(task_id, actor=actor)


def _as_stored(tool_id: str, payload: Any) -> Any:
    """The payload as the row will hold it (and a tool on any backend will see it), or
    InvalidPayload: a value JSON cannot hold (a set, a datetime, NaN) fails here with a
    reason, not at the INSERT."""
    try:
        stored = json.loads(json.dumps(payload, allow_nan=False))
        check_storable_json(stored)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload(f"payload for {tool_id!r} is not storable as JSON: {exc}") from None
    return stored


class Switchyard:
    """The runtime of an application that runs its own tasks; start it once per process."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        """Build (not start) from `settings`, else from the environment and `.env` with
        `overrides` (setting names in lower case, e.g. switchyard_tools="myapp.jobs") on top.
        A bad setting raises SettingsError naming it."""
        if settings is not None and overrides:
            raise TypeError("pass either settings or overrides, not both")
        self.settings = settings or load_settings(**overrides)
        self.runtime = Runtime.build(self.settings)
        self._submitter = RuntimeSubmitter(self.runtime)
        self._lock = threading.Lock()
        self._running = False
        self._app: FastAPI | None = None

    @classmethod
    def start(cls, settings: Settings | None = None, **overrides: Any) -> Switchyard:
        """A started Switchyard; `with Switchyard.start():` stops it at the end of the block."""
        switchyard = cls(settings, **overrides)
        switchyard.startup()
        return switchyard

    @property
    def running(self) -> bool:
        """Between startup and shutdown."""
        return self._running

    def startup(self) -> None:
        """Migrate the embedded database, load the rollout, start the backends and the sweeps,
        and make `.enqueue` submit here. Logging is configured from LOG_LEVEL and LOG_JSON
        unless the application configured structlog itself."""
        with self._lock:
            if self._running:
                return
            if not structlog.is_configured():
                configure_logging(level=self.settings.log_level, json_output=self.settings.log_json)
            self.runtime.prepare_database()
            self.runtime.rollout.apply_environment()
            self.runtime.start()
            try:
                enqueue.bind(self._submitter)
            except RuntimeError:
                self.runtime.stop()
                raise
            self._running = True
        log.info("switchyard.started", tools=",".join(self.runtime.registry))

    def shutdown(self) -> None:
        """Stop taking tasks: unbind `.enqueue`, let running thread tasks finish within
        SHUTDOWN_TIMEOUT (tasks not started stay QUEUED for the next start), close connections."""
        with self._lock:
            if not self._running:
                return
            enqueue.unbind(self._submitter)
            self._running = False
            self.runtime.stop()

    def __enter__(self) -> Switchyard:
        self.startup()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()

    @asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        """A FastAPI/Starlette lifespan: `FastAPI(lifespan=switchyard.lifespan)`, or entered
        from the host app's own (`async with switchyard.lifespan(app): ...`)."""
        await run_in_threadpool(self.startup)
        try:
            yield
        finally:
            await run_in_threadpool(self.shutdown)

    @property
    def app(self) -> FastAPI:
        """The HTTP API (tasks, rollout, health, /docs) over this runtime, to mount in a host
        app: `app.mount("/switchyard", switchyard.app)`. It needs API keys like `switchyard
        serve` (`switchyard keys create`); until the host's lifespan starts Switchyard it
        answers 503 saying so."""
        if self._app is None:
            self._app = create_app(self.runtime, owns_runtime=False)
            self._app.middleware("http")(self._refuse_until_started)
        return self._app

    async def _refuse_until_started(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if not self._running:
            return JSONResponse(status_code=503, content={"detail": NOT_STARTED})
        return await call_next(request)
