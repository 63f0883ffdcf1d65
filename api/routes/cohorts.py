"""/rollout/cohorts and /rollout/advance: compare the backends, then take the next step."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from api.auth import UNAUTHORIZED, OperatorDep
from api.deps import RuntimeDep
from api.routes.rollout import rollout_out
from api.runtime import Runtime
from api.schemas import ErrorOut, Reason, RolloutOut, Strict
from dispatch.rollout.advance import AdvanceRefused, NothingToAdvance, RolloutAdvance, Thresholds
from dispatch.rollout.cohorts import ROW_CAP, read_cohorts
from execution.models import utcnow

MAX_WINDOW_SECONDS = 90 * 86_400
ANY_TOOL_ID = r"^[^\x00-\x1f\x7f]*$"  # PostgreSQL refuses NUL in text; empty means every tool

router = APIRouter(prefix="/rollout", tags=["rollout"], responses=UNAUTHORIZED)


class CohortOut(BaseModel):
    """One backend's (or one tool's on one backend) finished tasks in the range."""

    model_config = ConfigDict(from_attributes=True)

    backend: str
    tool_id: str | None
    tasks: int
    completed: int
    failed: int
    cancelled: int
    samples: int
    enough: bool
    failure_rate: float | None
    queue_wait_p50: float | None
    queue_wait_p95: float | None
    run_time_p50: float | None
    run_time_p95: float | None


class CohortsOut(BaseModel):
    """The cohorts per backend and per (backend, tool), and the range they cover."""

    model_config = ConfigDict(from_attributes=True)

    basis: str
    since: datetime
    until: datetime
    tool_id: str | None
    min_samples: int
    rows_read: int
    row_cap: int
    capped: bool
    backends: list[CohortOut]
    tools: list[CohortOut]


class CheckOut(BaseModel):
    """One check of the Celery cohort against the threads'."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    passed: bool
    detail: str


class AdvanceIn(Strict):
    """POST /rollout/advance."""

    reason: Reason
    force: bool = False


class AdvanceOut(BaseModel):
    """The step taken, the checks it passed (or forced past), and the rollout now."""

    from_percentage: float
    to_percentage: float
    forced: bool
    checks: list[CheckOut]
    rollout: RolloutOut


class AdvanceRefusedOut(BaseModel):
    """Why an advance was refused: the failed checks among all of them, or no step left."""

    detail: str
    from_percentage: float | None = None
    to_percentage: float | None = None
    checks: list[CheckOut] = []


@router.get("/cohorts", response_model=CohortsOut, responses={403: {"model": ErrorOut}})
def cohorts(
    runtime: RuntimeDep,
    caller: OperatorDep,
    window_seconds: Annotated[
        int | None,
        Query(ge=1, le=MAX_WINDOW_SECONDS, description="Over this window instead"),
    ] = None,
    tool_id: Annotated[
        str, Query(max_length=128, pattern=ANY_TOOL_ID, description="One tool; empty: every tool")
    ] = "",
) -> CohortsOut:
    """Per backend and tool, since the last rollout change (or over a window): failure rate,
    p50/p95 queue wait and run time, and whether there are enough samples to judge."""
    now = utcnow()
    if window_seconds is None:
        state = runtime.rollout.store.load()
        if state is None:
            since, basis = now, "since now: the rollout is not stored yet"
        else:
            since = state.updated_at
            basis = (
                f"since the last rollout change (version {state.version}, by {state.updated_by})"
            )
    else:
        since = now - timedelta(seconds=window_seconds)
        basis = f"over the last {window_seconds} s"
    report = read_cohorts(
        runtime.engine,
        since=since,
        until=now,
        tool_id=tool_id or None,
        min_samples=runtime.settings.rollout_min_samples,
    )
    return CohortsOut(
        basis=basis,
        since=since,
        until=now,
        tool_id=report.tool_id,
        min_samples=report.min_samples,
        rows_read=report.rows_read,
        row_cap=ROW_CAP,
        capped=report.capped,
        backends=[CohortOut.model_validate(c) for c in report.backends],
        tools=[CohortOut.model_validate(c) for c in report.tools],
    )


@router.post(
    "/advance",
    response_model=AdvanceOut,
    responses={
        403: {"model": ErrorOut, "description": "Operators only"},
        409: {
            "model": AdvanceRefusedOut,
            "description": "A check failed (not forced), the schedule is done, or the rollout "
            "changed meanwhile",
        },
        429: {"model": ErrorOut, "description": "Too many rollout changes with this key"},
    },
)
def advance(body: AdvanceIn, runtime: RuntimeDep, caller: OperatorDep) -> AdvanceOut | JSONResponse:
    """The next step of ROLLOUT_SCHEDULE, if Celery did no worse than threads since the last
    change (or `force`, which the history records with the failed checks)."""
    try:
        result = advancer(runtime).advance(
            actor=caller.user_id, reason=body.reason, force=body.force, key_id=caller.key_id
        )
    except AdvanceRefused as exc:
        refused = AdvanceRefusedOut(
            detail=str(exc),
            from_percentage=exc.from_percentage,
            to_percentage=exc.to_percentage,
            checks=[CheckOut.model_validate(c) for c in exc.checks],
        )
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content=refused.model_dump())
    except NothingToAdvance as exc:
        body_out = AdvanceRefusedOut(detail=str(exc))
        return JSONResponse(status_code=status.HTTP_409_CONFLICT, content=body_out.model_dump())
    return AdvanceOut(
        from_percentage=result.from_percentage,
        to_percentage=result.to_percentage,
        forced=result.forced,
        checks=[CheckOut.model_validate(c) for c in result.checks],
        rollout=rollout_out(runtime),
    )


def advancer(runtime: Runtime) -> RolloutAdvance:
    """The advance over this process's rollout, schedule and thresholds."""
    return RolloutAdvance(
        control=runtime.rollout_control,
        rollouts=runtime.rollout.store,
        engine=runtime.engine,
        schedule=runtime.settings.rollout_steps,
        limits=Thresholds.of(runtime.settings),
    )
