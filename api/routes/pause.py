"""/queue/pause and /queue/resume: hold a tool's new tasks QUEUED, or all, then hand them over."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.auth import UNAUTHORIZED, OperatorDep
from api.deps import RuntimeDep
from api.routes.rollout import NEVER_REFUSED
from api.schemas import ErrorOut, PauseIn, PauseOut, ResumeOut

router = APIRouter(prefix="/queue", tags=["queue"], responses=UNAUTHORIZED)

REFUSALS: dict[int | str, dict[str, Any]] = {
    **NEVER_REFUSED,
    422: {"model": ErrorOut, "description": "No reason, or an unknown tool_id"},
}
"""Never 429 and no If-Match: like a rollback, a pause is what an incident needs at once."""


@router.post("/pause", response_model=PauseOut, responses=REFUSALS)
def pause(body: PauseIn, runtime: RuntimeDep, caller: OperatorDep) -> PauseOut:
    """Pause dispatch of one tool (or of every tool, without tool_id): new tasks are still
    accepted and wait QUEUED, and nothing of the tool starts on either backend, in every
    process within ROLLOUT_REFRESH_SECONDS. Stored and audited in the rollout history; a
    restart keeps it; a rollback or restore does not change it."""
    state = runtime.rollout_control.pause(
        tool_id=body.tool_id, actor=caller.user_id, reason=body.reason, key_id=caller.key_id
    )
    return PauseOut(paused=sorted(state.paused), version=state.version)


@router.post(
    "/resume",
    response_model=ResumeOut,
    responses={
        **REFUSALS,
        409: {"model": ErrorOut, "description": "One tool asked while every tool is paused"},
    },
)
def resume(body: PauseIn, runtime: RuntimeDep, caller: OperatorDep) -> ResumeOut:
    """Resume dispatch of one tool (or of every tool, without tool_id) and hand its waiting
    tasks to their backends now, highest priority first, then oldest."""
    outcome = runtime.rollout_control.resume(
        tool_id=body.tool_id, actor=caller.user_id, reason=body.reason, key_id=caller.key_id
    )
    state = outcome.state
    return ResumeOut(paused=sorted(state.paused), version=state.version, released=outcome.released)
