"""GET /tasks/{task_id}/stream: a task's status, progress and message as Server-Sent Events.

A watcher (`switchyard submit --wait`, `status --follow`, a browser's EventSource) gets each
change pushed instead of polling GET /tasks/{id} itself. The server still polls the store, once
per POLL_SECONDS for each open stream: a change may be written by another process (a Celery
worker), and the store has no notifications to wait on.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RuntimeDep
from api.routes.tasks import NOT_FOUND, TaskId, _visible_task
from api.schemas import ValidationErrorOut
from execution.records import TaskRecord
from execution.status import TaskStatus

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.25
"""How often an open stream reads the task from the store."""

MAX_STREAM_SECONDS = 3600.0
"""How long one stream stays open; then a `timeout` event ends it and the client reconnects.
Bounds what a forgotten watcher of a task that never ends costs the server."""


def _json(description: str, model: type[BaseModel]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}
        },
    }


JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    **{
        code: _json(a["description"], a["model"])
        for code, a in {**UNAUTHORIZED, **NOT_FOUND}.items()
    },
    422: _json("The request does not fit the schema", ValidationErrorOut),
}
"""The errors this route answers, declared as the JSON they are: with `model`, FastAPI would
declare them in the route's own media type, text/event-stream."""

router = APIRouter(prefix="/tasks", tags=["tasks"])


class TaskState(BaseModel):
    """What a `task` event carries: the fields of GET /tasks/{id} that change while it runs."""

    task_id: str
    status: TaskStatus
    progress: int
    message: str | None
    backend: str | None
    attempts: int
    error_code: str | None
    error_message: str | None
    updated_at: datetime

    @classmethod
    def of(cls, record: TaskRecord) -> TaskState:
        """The state of `record`: the fields above, read from it."""
        return cls.model_validate(record, from_attributes=True)

    def differs_from(self, other: TaskState) -> bool:
        """True if a watcher would see a difference: `updated_at` alone is no news, as it also
        moves with writes the event does not show (a handover to Celery, say)."""
        return self.model_dump(exclude={"updated_at"}) != other.model_dump(exclude={"updated_at"})


def visible_task(
    task_id: TaskId, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> TaskRecord:
    """The task exactly as GET /tasks/{id} finds it (404 for one the caller may not see).

    A dependency, so that it answers before the stream starts: an error raised inside the
    event generator would come after the 200 and its headers.
    """
    return _visible_task(task_id, request, runtime, caller)


@router.get(
    "/{task_id}/stream",
    response_class=EventSourceResponse,
    response_description="`text/event-stream`: `task` events (data: task_id, status, progress, "
    "message, backend, attempts, error_code, error_message, updated_at), ending after a "
    "terminal status, or with a `timeout` event",
    responses=JSON_ERRORS,
)
async def stream_task(
    task: Annotated[TaskRecord, Depends(visible_task)], request: Request, runtime: RuntimeDep
) -> AsyncIterator[ServerSentEvent]:
    """Follow a task as Server-Sent Events until it ends.

    The first `task` event is the task's state now; another follows each time its status,
    progress, message, backend, attempts or error change; the stream ends right after the
    event with COMPLETED, FAILED or CANCELLED. Each `task` event's data is a JSON object with
    `task_id`, `status`, `progress`, `message`, `backend`, `attempts`, `error_code`,
    `error_message` and `updated_at`; the result is in GET /tasks/{id}. While nothing changes
    a `: ping` comment comes every 15 s. After an hour the stream ends with a `timeout` event:
    reconnect to follow on. A reconnecting client starts again from the current state, so
    `Last-Event-ID` is ignored; the `id:` of each event counts the events of its stream.
    """
    state = TaskState.of(task)
    deadline = time.monotonic() + MAX_STREAM_SECONDS
    sent = 0
    ended = "disconnected"

    def event(name: str, data: Any) -> ServerSentEvent:
        nonlocal sent
        sent += 1
        return ServerSentEvent(event=name, data=data, id=str(sent))

    try:
        yield event("task", state)
        while not state.status.is_terminal:
            if time.monotonic() >= deadline:
                ended = "timeout"
                detail = f"a stream ends after {MAX_STREAM_SECONDS:g} s: reconnect to follow on"
                yield event("timeout", {"detail": detail})
                return
            await anyio.sleep(POLL_SECONDS)
            if await request.is_disconnected():  # else noticed only at the next write
                return
            record = await run_in_threadpool(runtime.store.get, task.task_id)
            assert record is not None, "tasks are never deleted"
            current = TaskState.of(record)
            if current.differs_from(state):
                state = current
                yield event("task", state)
        ended = str(state.status)
    finally:
        # Reached as well when the client goes away: the generator is then cancelled.
        log.info("task.stream.ended", task_id=task.task_id, ended=ended, events=sent)
