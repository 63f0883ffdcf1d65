"""/rollout: read the rollout, change it (operators), roll back, restore, preview, audit."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Response, status

from api.auth import UNAUTHORIZED, CallerDep, OperatorDep
from api.deps import RuntimeDep
from api.runtime import Runtime
from api.schemas import (
    EnvironmentOut,
    ErrorOut,
    RestorePointOut,
    RollbackIn,
    RollbackOut,
    RolloutEventOut,
    RolloutOut,
    RolloutPreviewOut,
    RolloutReason,
    RolloutUpdate,
)
from dispatch.rollout.control import RolloutChange, RolloutInvalid
from dispatch.rollout.policy import Percentage

router = APIRouter(
    prefix="/rollout",
    tags=["rollout"],
    responses=UNAUTHORIZED,
)

OPERATORS_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "Operators only"},
}
NEVER_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorOut,
        "description": "The body is not readable JSON, or more than one Authorization header",
    },
    **OPERATORS_ONLY,
}
"""What rollback and restore may answer besides 200: never 409 for a version, never 429."""
CHANGES: dict[int | str, dict[str, Any]] = {
    **NEVER_REFUSED,
    429: {
        "model": ErrorOut,
        "description": "This key made ROLLOUT_CHANGE_LIMIT accepted changes in the window; "
        "Retry-After says when the next is allowed",
    },
}


def rollout_out(runtime: Runtime) -> RolloutOut:
    """The rollout this process routes by, with the stored details."""
    policy = runtime.rollout.current()
    state = runtime.rollout.state()
    restore = state.restore_point if state else None
    applied = runtime.rollout.environment
    return RolloutOut(
        use_celery=policy.use_celery,
        percentage=policy.percentage,
        effective_percentage=policy.effective_percentage,
        tool_overrides=dict(policy.tool_overrides),
        stickiness=policy.stickiness,
        version=policy.version,
        updated_at=state.updated_at if state else None,
        updated_by=state.updated_by if state else None,
        source=state.source if state else None,
        environment=EnvironmentOut(percentage=applied.percentage, outcome=applied.outcome)
        if applied
        else None,
        restore_point=RestorePointOut.model_validate(dict(restore)) if restore else None,
        paused=sorted(policy.paused),
        explanation=policy.describe(),
    )


def _with_etag(runtime: Runtime, response: Response) -> RolloutOut:
    body = rollout_out(runtime)
    response.headers["ETag"] = f'"{body.version}"'
    return body


@router.get("", response_model=RolloutOut)
def get_rollout(runtime: RuntimeDep, response: Response, caller: CallerDep) -> RolloutOut:
    """The master switch, percentage, overrides and stickiness; ETag is the version."""
    runtime.rollout.refresh()  # the latest, even if this process has not polled since
    return _with_etag(runtime, response)


@router.put(
    "",
    response_model=RolloutOut,
    responses={
        **CHANGES,
        409: {"model": ErrorOut, "description": "The rollout changed since the If-Match version"},
        428: {"model": ErrorOut, "description": "If-Match (the version you read) is required"},
    },
)
def set_rollout(
    body: RolloutUpdate,
    runtime: RuntimeDep,
    response: Response,
    caller: OperatorDep,
    if_match: Annotated[
        str | None,
        Header(max_length=32, description='The version read from GET /rollout (its ETag, "7")'),
    ] = None,
) -> RolloutOut:
    """Change percentage, per-tool overrides or stickiness, against the version you read."""
    if if_match is None:
        raise HTTPException(
            status.HTTP_428_PRECONDITION_REQUIRED,
            'send If-Match with the version from GET /rollout (its ETag), e.g. If-Match: "7"',
        )
    version = _parse_version(if_match)
    runtime.rollout_control.set(
        RolloutChange(
            percentage=body.percentage,
            tool_overrides=body.tool_overrides,
            stickiness=body.stickiness,
        ),
        actor=caller.user_id,
        reason=body.reason,
        expected_version=version,
        key_id=caller.key_id,
    )
    return _with_etag(runtime, response)


@router.post(
    "/rollback",
    response_model=RollbackOut,
    responses={
        **NEVER_REFUSED,
        422: {"model": ErrorOut, "description": "No reason, or an unknown tool_id"},
    },
)
def rollback(
    body: RollbackIn, runtime: RuntimeDep, response: Response, caller: OperatorDep
) -> RollbackOut:
    """Every new task (or one tool's) to threads at once, with the tasks still QUEUED on
    Celery; the previous routing is kept for `restore`. Never rate limited, no If-Match: the
    same rollback twice leaves the same routing."""
    outcome = runtime.rollout_control.rollback(
        actor=caller.user_id, reason=body.reason, tool_id=body.tool_id
    )
    body_out = _with_etag(runtime, response)
    return RollbackOut(**body_out.model_dump(), reclaimed=outcome.reclaimed)


@router.post(
    "/restore",
    response_model=RolloutOut,
    responses={**NEVER_REFUSED, 409: {"model": ErrorOut, "description": "No rollback to restore"}},
)
def restore(
    body: RolloutReason, runtime: RuntimeDep, response: Response, caller: OperatorDep
) -> RolloutOut:
    """Return to the routing the last rollback replaced."""
    runtime.rollout_control.restore(actor=caller.user_id, reason=body.reason)
    return _with_etag(runtime, response)


@router.get("/history", response_model=list[RolloutEventOut], responses=OPERATORS_ONLY)
def history(
    runtime: RuntimeDep,
    caller: OperatorDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[RolloutEventOut]:
    """Every accepted change, newest first: who, when, from, to and why."""
    events = runtime.rollout_control.history(limit=limit, offset=offset)
    return [RolloutEventOut.model_validate(e) for e in events]


@router.get("/preview", response_model=RolloutPreviewOut, responses=OPERATORS_ONLY)
def preview(
    runtime: RuntimeDep,
    caller: OperatorDep,
    percentage: Annotated[Percentage, Query()],
) -> RolloutPreviewOut:
    """How much new traffic and how many QUEUED tasks a percentage would move."""
    return RolloutPreviewOut.model_validate(runtime.rollout_control.preview(percentage))


def _parse_version(if_match: str) -> int:
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise RolloutInvalid("If-Match", f'{if_match!r} is not a version like "7"')
    return int(tag)
