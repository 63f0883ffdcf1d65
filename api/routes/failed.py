"""POST /tasks/retry: the failed tasks a listing's filters match, retried in bulk.

The dead-letter view is the status store itself: `GET /tasks?status=FAILED` with the same
filters shows what this retries, and each retry is the one `POST /tasks/{id}/retry` makes.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import structlog
from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RuntimeDep
from api.schemas import ErrorOut
from api.task_filters import TaskFilterDep
from backends.base import BackendUnavailable
from execution.redaction import redact_text
from execution.status import TaskStatus

log = structlog.get_logger(__name__)

MAX_BULK_RETRY = 1000
"""Tasks one request may retry; more matching ones are left for the next request (`more`)."""

RETRYABLE = (TaskStatus.FAILED, TaskStatus.CANCELLED)

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=UNAUTHORIZED)


class RetriedOut(BaseModel):
    """A task queued again."""

    task_id: str
    tool_id: str
    backend: str | None = Field(description="Where the rollout sends it now")


class SkippedOut(BaseModel):
    """A matched task that was not retried, and why."""

    task_id: str
    tool_id: str
    reason: str


class BulkRetryOut(BaseModel):
    """What a bulk retry matched and did."""

    dry_run: bool
    matched: list[str] = Field(description="Ids of the matching tasks (at most `limit`)")
    more: bool = Field(description="More tasks match than `limit`: send the request again")
    retried: list[RetriedOut]
    skipped: list[SkippedOut]


@router.post(
    "/retry",
    response_model=BulkRetryOut,
    responses={
        403: {"model": ErrorOut, "description": "user_id of another user, without an operator key"}
    },
)
def retry_tasks(
    runtime: RuntimeDep,
    caller: CallerDep,
    where: TaskFilterDep,
    dry_run: Annotated[
        bool, Query(description="List what would be retried; change nothing")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=MAX_BULK_RETRY)] = 100,
) -> BulkRetryOut:
    """Retry the FAILED tasks the filters match (`status=CANCELLED`: the cancelled ones), up
    to `limit`, newest first, each as `POST /tasks/{id}/retry` does: the same task id, a new
    attempt, on the backend the rollout gives it now. A key retries its own tasks; an
    operator's, anyone's. A task its backend refuses now, or that changed meanwhile, is
    skipped with the reason."""
    wanted = where.status or TaskStatus.FAILED
    if wanted not in RETRYABLE:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "status"),
                    "msg": "only FAILED or CANCELLED tasks can be retried",
                }
            ]
        )
    found = runtime.store.find(replace(where, status=wanted), limit=limit + 1, offset=0)
    matched = found[:limit]
    answer = BulkRetryOut(
        dry_run=dry_run,
        matched=[task.task_id for task in matched],
        more=len(found) > limit,
        retried=[],
        skipped=[],
    )
    if dry_run:
        return answer
    for task in matched:
        try:
            queued = runtime.dispatcher.retry(task.task_id, actor=caller.user_id)
        except BackendUnavailable as exc:
            reason = redact_text(exc.reason)
        else:
            if queued is not None:
                answer.retried.append(
                    RetriedOut(task_id=task.task_id, tool_id=task.tool_id, backend=queued.backend)
                )
                continue
            reason = f"no longer {wanted}: retried or deleted meanwhile"
        answer.skipped.append(SkippedOut(task_id=task.task_id, tool_id=task.tool_id, reason=reason))
    log.info(
        "tasks.retried_in_bulk",
        actor=caller.user_id,
        status=wanted.value,
        matched=len(matched),
        retried=len(answer.retried),
        skipped=len(answer.skipped),
    )
    return answer
