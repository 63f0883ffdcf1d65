"""/queue: the operators' view of what waits, and purge (operators only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status

from api.auth import UNAUTHORIZED, OperatorDep
from api.deps import RuntimeDep
from api.schemas import ErrorOut, PurgeIn, PurgeOut
from dispatch.purge import PurgeInvalid, PurgeSelection, purge_queued
from dispatch.queue_stats import QueueStats, queue_stats

router = APIRouter(prefix="/queue", tags=["queue"], responses=UNAUTHORIZED)

OPERATORS_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorOut, "description": "Operators only"},
}


@router.post(
    "/purge",
    response_model=PurgeOut,
    responses={
        **OPERATORS_ONLY,
        422: {"model": ErrorOut, "description": "No filter, or an unknown tool, backend or queue"},
    },
)
def purge(body: PurgeIn, runtime: RuntimeDep, caller: OperatorDep) -> PurgeOut:
    """Cancel every QUEUED task of a tool, a backend or a queue (filters combine), on both
    backends, in batches; each ends CANCELLED with the reason in its history, and its Celery
    message or pool entry then runs nothing. Running tasks are not touched (`running` counts
    them). With `dry_run`, only count. Never `celery purge`: it leaves the rows QUEUED."""
    selection = PurgeSelection(
        tool_id=body.tool_id, backend=body.backend, queue=body.queue, everything=body.all
    )
    try:
        outcome = purge_queued(
            runtime.store,
            runtime.registry,
            selection,
            actor=caller.user_id,
            reason=body.reason,
            dry_run=body.dry_run,
        )
    except PurgeInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    return PurgeOut(
        dry_run=outcome.dry_run,
        cancelled=outcome.total,
        by_backend={b: dict(tools) for b, tools in outcome.cancelled.items()},
        running=outcome.running_total,
        running_by_backend={b: dict(tools) for b, tools in outcome.running.items()},
    )


@router.get("/stats", response_model=QueueStats, responses=OPERATORS_ONLY)
def stats(runtime: RuntimeDep, caller: OperatorDep) -> QueueStats:
    """Tasks by status and backend, this process's thread pool (busy, idle, waiting,
    capacity), the broker's queue lengths and live workers, the oldest wait per backend, and
    the paused tools. Answers within a probe's wait even when Redis is down or frozen, and
    then says so."""
    return queue_stats(runtime.health, runtime.store, paused=runtime.rollout.current().paused)
