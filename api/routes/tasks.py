"""/tasks: create tasks, read their status, progress and history, cancel them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.deps import RuntimeDep
from api.schemas import ErrorOut, TaskCreate, TaskEventOut, TaskOut, TaskPage
from dispatch.dispatcher import NewTask
from execution.status import BackendName, TaskStatus
from execution.store import TaskFilter

router = APIRouter(prefix="/tasks", tags=["tasks"])

ANONYMOUS = "anonymous"
MAX_PAGE = 500


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskOut,
    responses={422: {"model": ErrorOut}, 503: {"model": ErrorOut}},
)
def create_task(body: TaskCreate, runtime: RuntimeDep) -> TaskOut:
    """Create a task; it is QUEUED on the backend the rollout picks for it."""
    record = runtime.dispatcher.submit(
        NewTask(
            tool_id=body.tool_id, payload=body.payload, priority=body.priority, user_id=ANONYMOUS
        )
    )
    return TaskOut.model_validate(record)


@router.get("", response_model=TaskPage)
def list_tasks(
    runtime: RuntimeDep,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    tool_id: Annotated[str | None, Query(max_length=128)] = None,
    backend: BackendName | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TaskPage:
    """Tasks, newest first, narrowed by status, tool and backend."""
    where = TaskFilter(status=status_, tool_id=tool_id, backend=backend)
    records = runtime.store.find(where, limit=limit, offset=offset)
    return TaskPage(items=[TaskOut.model_validate(r) for r in records], limit=limit, offset=offset)


@router.get("/{task_id}", response_model=TaskOut, responses={404: {"model": ErrorOut}})
def get_task(task_id: str, runtime: RuntimeDep) -> TaskOut:
    """One task's status, progress and result."""
    record = runtime.store.get(task_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")
    return TaskOut.model_validate(record)


@router.get(
    "/{task_id}/events", response_model=list[TaskEventOut], responses={404: {"model": ErrorOut}}
)
def get_task_events(task_id: str, runtime: RuntimeDep) -> list[TaskEventOut]:
    """Every status change and progress step of the task, oldest first."""
    if runtime.store.get(task_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")
    return [TaskEventOut.model_validate(e) for e in runtime.store.events(task_id)]


@router.post(
    "/{task_id}/cancel",
    response_model=TaskOut,
    responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}},
)
def cancel_task(task_id: str, runtime: RuntimeDep) -> TaskOut:
    """Cancel a task that has not started; a running or finished task is left alone (409)."""
    cancelled = runtime.store.cancel(task_id, reason="cancelled by request")
    if cancelled is not None:
        return TaskOut.model_validate(cancelled)
    current = runtime.store.get(task_id)
    if current is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")
    raise HTTPException(
        status.HTTP_409_CONFLICT,
        f"task {task_id} is {current.status}; only a task not yet started can be cancelled",
    )
