"""The filters of a task listing, read from the query one way for every route that takes them:
GET /tasks lists what they match, POST /tasks/retry retries it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime, BeforeValidator

from api.auth import CallerDep, log_denied
from api.keys import USER_ID_PATTERN
from execution.status import BackendName, TaskStatus
from execution.store import TaskFilter

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]+$"  # PostgreSQL refuses NUL in text


def _iso_8601_only(value: object) -> object:
    """Pydantic would read a bare number as a Unix time; the schema promises an ISO 8601 time."""
    if isinstance(value, str) and value.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 time with its zone, e.g. 2026-11-30T09:00:00Z")
    return value


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only)]


async def task_filter(
    request: Request,
    caller: CallerDep,
    status_: Annotated[TaskStatus | None, Query(alias="status")] = None,
    tool_id: Annotated[str | None, Query(max_length=128, pattern=NO_CONTROL_CHARACTERS)] = None,
    backend: BackendName | None = None,
    error_code: Annotated[
        str | None,
        Query(
            max_length=128,
            pattern=NO_CONTROL_CHARACTERS,
            description="e.g. TIME_LIMIT_EXCEEDED, WORKER_LOST, or a tool's exception name",
        ),
    ] = None,
    since: Annotated[
        IsoTime | None,
        Query(
            description="Last changed at or after this ISO 8601 time, with its zone "
            "(2026-11-30T09:00:00Z); a FAILED task last changed when it failed",
        ),
    ] = None,
    until: Annotated[
        IsoTime | None, Query(description="Last changed before this ISO 8601 time")
    ] = None,
    user_id: Annotated[
        str | None,
        Query(pattern=USER_ID_PATTERN, description="Another user's tasks: operators only"),
    ] = None,
) -> TaskFilter:
    """The filters, narrowed to the caller's own tasks unless the key is an operator's."""
    if since is not None and until is not None and since >= until:
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "until"), "msg": "must be after since"}]
        )
    if not caller.is_operator:
        if user_id not in (None, caller.user_id):
            log_denied(request, caller, status_code=403, reason="reading another user's tasks")
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, "only an operator key may name another user's tasks"
            )
        user_id = caller.user_id
    return TaskFilter(
        status=status_,
        tool_id=tool_id,
        backend=backend,
        user_id=user_id,
        error_code=error_code,
        changed_since=since,
        changed_before=until,
    )


TaskFilterDep = Annotated[TaskFilter, Depends(task_filter)]
