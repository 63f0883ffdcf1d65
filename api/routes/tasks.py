"""/tasks: create tasks, read their status, progress and history, cancel them; each caller's own."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response, status

from api.auth import UNAUTHORIZED, Caller, CallerDep, log_denied
from api.deps import RuntimeDep
from api.runtime import Runtime
from api.schemas import ErrorOut, TaskCreate, TaskEventOut, TaskPage, TaskView
from api.task_filters import TaskFilterDep
from dispatch.dispatcher import IdempotencyConflict, NewTask
from execution.batch_records import BatchRecord
from execution.records import TaskRecord
from execution.status import TaskStatus

MAX_PAGE = 500
MAX_OFFSET = 1_000_000

TaskId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such task, or not the caller's"}
}

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=UNAUTHORIZED)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TaskRecord,
    responses={
        200: {"model": TaskRecord, "description": "The task this Idempotency-Key created before"},
        202: {
            "model": TaskRecord,
            "description": "Accepted, not handed over yet: its tool's dispatch is paused (it "
            "waits QUEUED for the resume), or the broker is down and CELERY_UNAVAILABLE=accept "
            "(published once it is back)",
        },
        400: {"model": ErrorOut, "description": "Body nested or numbered past what JSON reads"},
        413: {"model": ErrorOut, "description": "Body larger than MAX_REQUEST_BYTES"},
        503: {"model": ErrorOut, "description": "The chosen backend cannot take the task now"},
    },
)
def create_task(
    body: TaskCreate,
    response: Response,
    runtime: RuntimeDep,
    caller: CallerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=128,
            pattern=r"^[\x21-\x7e]+$",
            description="Send the same key again (say, after a timeout) to get the same task "
            "back (200) instead of a second one; the same key with another request is 422.",
        ),
    ] = None,
) -> TaskRecord:
    """Create a task owned by the caller; it is QUEUED on the backend the rollout picks for it."""
    request = NewTask(
        tool_id=body.tool_id,
        payload=body.payload,
        priority=body.priority,
        user_id=caller.user_id,
        idempotency_key=idempotency_key,
    )
    try:
        record, replayed = runtime.dispatcher.submit_once(request)
    except IdempotencyConflict as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    if replayed:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    elif record.dispatched_at is None:  # paused, or CELERY_UNAVAILABLE=accept and broker down
        response.status_code = status.HTTP_202_ACCEPTED
    return record


@router.get(
    "",
    response_model=TaskPage,
    responses={
        403: {"model": ErrorOut, "description": "user_id of another user, without an operator key"}
    },
)
def list_tasks(
    runtime: RuntimeDep,
    where: TaskFilterDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> TaskPage:
    """The caller's tasks (an operator's: everyone's), newest first, narrowed by the filters:
    `GET /tasks?status=FAILED&tool_id=...&since=...` is the failed tasks' dead-letter view."""
    records = runtime.store.find(where, limit=limit, offset=offset)
    return TaskPage(items=records, limit=limit, offset=offset)


@router.get("/{task_id}", response_model=TaskView, responses=NOT_FOUND)
def get_task(task_id: TaskId, request: Request, runtime: RuntimeDep, caller: CallerDep) -> TaskView:
    """One task's status, progress and result; for a parallel job, its batches by status."""
    record = _visible_task(task_id, request, runtime, caller)
    counts = runtime.store.batches.counts([task_id]) if _is_parallel(runtime, record) else {}
    return TaskView.of(record, counts.get(task_id))


@router.get("/{task_id}/batches", response_model=list[BatchRecord], responses=NOT_FOUND)
def get_task_batches(
    task_id: TaskId, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> list[BatchRecord]:
    """A parallel job's batches in order: status, attempts, progress, result or error each
    (none for any other task, or before the job planned them)."""
    _visible_task(task_id, request, runtime, caller)
    return runtime.store.batches.of(task_id)


def _is_parallel(runtime: Runtime, record: TaskRecord) -> bool:
    tool = runtime.registry.get(record.tool_id)
    return tool is not None and tool.parallel is not None


@router.get("/{task_id}/events", response_model=list[TaskEventOut], responses=NOT_FOUND)
def get_task_events(
    task_id: TaskId, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> list[TaskEventOut]:
    """Every status change and progress step of the task, oldest first."""
    _visible_task(task_id, request, runtime, caller)
    return [TaskEventOut.model_validate(e) for e in runtime.store.events(task_id)]


@router.post(
    "/{task_id}/cancel",
    response_model=TaskRecord,
    responses={
        **NOT_FOUND,
        202: {"model": TaskRecord, "description": "Running: asked to stop (ends CANCELLED)"},
        409: {"model": ErrorOut, "description": "The task has ended"},
    },
)
def cancel_task(
    task_id: TaskId, request: Request, response: Response, runtime: RuntimeDep, caller: CallerDep
) -> TaskRecord:
    """Cancel a task: a waiting one at once (200, CANCELLED); a running one is asked to stop
    (202, still PROCESSING with `cancel_requested_at`) and ends CANCELLED within
    TASK_HEARTBEAT_SECONDS (sooner when it reports progress). An ended task is left alone
    (409)."""
    _visible_task(task_id, request, runtime, caller)
    record = runtime.dispatcher.cancel(task_id, actor=caller.user_id)
    if record is None:
        _conflict(runtime, task_id, "only a waiting or running task can be cancelled")
    if record.status is TaskStatus.PROCESSING:
        response.status_code = status.HTTP_202_ACCEPTED
    return record


@router.post(
    "/{task_id}/retry",
    response_model=TaskRecord,
    responses={
        **NOT_FOUND,
        409: {"model": ErrorOut, "description": "The task is not FAILED or CANCELLED"},
        503: {"model": ErrorOut, "description": "The chosen backend cannot take the task now"},
    },
)
def retry_task(
    task_id: TaskId, request: Request, runtime: RuntimeDep, caller: CallerDep
) -> TaskRecord:
    """Run a FAILED or CANCELLED task again (same task id, a new attempt), on the backend the
    rollout gives it now; its tool's retry policy applies afresh. Two concurrent retries make
    one new attempt: the other answers 409."""
    _visible_task(task_id, request, runtime, caller)
    record = runtime.dispatcher.retry(task_id, actor=caller.user_id)
    if record is None:
        _conflict(runtime, task_id, "only a FAILED or CANCELLED task can be retried")
    return record


def _conflict(runtime: Runtime, task_id: str, what: str) -> NoReturn:
    current = runtime.store.get(task_id)
    if current is None:  # deleted by retention meanwhile
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")
    raise HTTPException(status.HTTP_409_CONFLICT, f"task {task_id} is {current.status}; {what}")


def _visible_task(task_id: str, request: Request, runtime: Runtime, caller: Caller) -> TaskRecord:
    # Another user's task answers exactly like a missing one: its existence is not disclosed.
    record = runtime.store.get(task_id)
    if record is not None and (caller.is_operator or record.user_id == caller.user_id):
        return record
    if record is not None:
        log_denied(request, caller, status_code=404, reason="another user's task")
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")
