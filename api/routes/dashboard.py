"""/dashboard: the operator dashboard, a static page, and /dashboard/activity, the one thing it
reads that no other endpoint gives.

The page (api/dashboard/: index.html, dashboard.css, dashboard.js; no build step, nothing from
another host) holds no data, so it is served without a key: a browser's navigation cannot send
an Authorization header. Its script takes the operator key from the URL fragment
(`/dashboard#key=sy_...`, which never reaches the server or its access log) or from a form,
keeps it in sessionStorage, and sends it as `Authorization: Bearer <key>` to the JSON endpoints
it reads: /rollout, /rollout/history, /rollout/cohorts, /health and /dashboard/activity.
"""

from __future__ import annotations

from datetime import datetime
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict

from api.auth import UNAUTHORIZED, OperatorDep
from api.deps import RuntimeDep
from api.schemas import ErrorOut
from execution.activity import RECENT_FAILURES, read_activity
from execution.models import utcnow

ASSETS = "/dashboard/assets"
MAX_MINUTES = 1440
"""The longest window /dashboard/activity counts over: a day, 1,440 buckets per backend."""

router = APIRouter(tags=["dashboard"])
router.mount(ASSETS, StaticFiles(packages=[("api", "dashboard")]), name="dashboard-assets")


class MinuteOut(BaseModel):
    """Tasks one backend ended in one minute (UTC, the minute's start)."""

    model_config = ConfigDict(from_attributes=True)

    minute: datetime
    completed: int
    failed: int


class BackendActivityOut(BaseModel):
    """One backend over the window: totals, failure rate, and one bucket per minute."""

    model_config = ConfigDict(from_attributes=True)

    backend: str
    completed: int
    failed: int
    failure_rate: float | None
    per_minute: list[MinuteOut]


class RecentFailureOut(BaseModel):
    """A FAILED task; `error_message` is cut to 200 characters."""

    model_config = ConfigDict(from_attributes=True)

    task_id: str
    tool_id: str
    backend: str | None
    error_code: str | None
    error_message: str | None
    ended_at: datetime


class ActivityOut(BaseModel):
    """Tasks that ended COMPLETED or FAILED per minute and backend, and the latest failures."""

    model_config = ConfigDict(from_attributes=True)

    since: datetime
    until: datetime
    minutes: int
    completed: int
    failed: int
    failure_rate: float | None
    backends: list[BackendActivityOut]
    recent_failures: list[RecentFailureOut]


@router.get("/dashboard", include_in_schema=False)
def dashboard(request: Request) -> HTMLResponse:
    """The page itself: no data, so no key; its script asks for one."""
    page = files("api").joinpath("dashboard", "index.html").read_text(encoding="utf-8")
    root = request.scope.get("root_path", "")
    if root:
        page = page.replace(f'"{ASSETS}/', f'"{root}{ASSETS}/')
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get(
    "/dashboard/activity",
    response_model=ActivityOut,
    responses={**UNAUTHORIZED, 403: {"model": ErrorOut, "description": "Operators only"}},
)
def activity(
    runtime: RuntimeDep,
    caller: OperatorDep,
    minutes: Annotated[
        int, Query(ge=1, le=MAX_MINUTES, description="The window: this minute and the ones before")
    ] = 30,
) -> ActivityOut:
    """Per minute (UTC) and backend, the tasks that ended COMPLETED or FAILED over the last
    `minutes` minutes, the failure rate (percent of those that FAILED), and the newest
    failures in the window."""
    found = read_activity(
        runtime.engine,
        now=utcnow(),
        minutes=minutes,
        backends=runtime.backends.keys(),
        recent=RECENT_FAILURES,
    )
    return ActivityOut.model_validate(found)
