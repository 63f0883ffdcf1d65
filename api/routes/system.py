"""/tools and /health: what this process can run, and whether it can take work.

/health answers without a key: load balancers and probes carry none, and it shows counts and
states only, never a URL, a user or a task.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.auth import UNAUTHORIZED, authenticate
from api.deps import RuntimeDep
from api.schemas import HealthOut, ToolOut

router = APIRouter(tags=["system"])

WITH_KEY: dict[str, Any] = {
    "dependencies": [Depends(authenticate)],
    "responses": UNAUTHORIZED,
}


@router.get("/tools", response_model=list[ToolOut], **WITH_KEY)
def list_tools(runtime: RuntimeDep) -> list[ToolOut]:
    """The tools this process can run, with their defaults."""
    return [
        ToolOut(
            tool_id=spec.tool_id,
            description=spec.description,
            queue=spec.queue,
            priority=spec.priority,
            time_limit=spec.time_limit,
            soft_time_limit=spec.soft_time_limit,
        )
        for spec in runtime.registry.values()
    ]


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(runtime: RuntimeDep) -> HealthOut | JSONResponse:
    """200 when the database answers and every backend can take work, else 503."""
    try:
        with runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"unreachable: {type(exc).__name__}"
    backends = {}
    for name, backend in runtime.backends.items():
        report = backend.health()
        backends[name] = {"ok": report.ok, **report.detail}
    healthy = database == "ok" and all(b["ok"] for b in backends.values())
    body = HealthOut(status="ok" if healthy else "degraded", database=database, backends=backends)
    if healthy:
        return body
    return JSONResponse(status_code=503, content=body.model_dump())
