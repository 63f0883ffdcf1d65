"""/tools, /health and /metrics: what this process can run, whether it can take work, and
what it has done.

/health answers without a key: load balancers and probes carry none, and then it shows counts
and states only, never an address, an error's text, a user or a task.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.auth import UNAUTHORIZED, MaybeCallerDep, OperatorDep, authenticate
from api.deps import RuntimeDep
from api.schemas import ErrorOut, HealthOut, LiveOut, ToolOut

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


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut}},
    # The key is optional: `{}` is OpenAPI for "no credentials" (probes carry none).
    openapi_extra={"security": [{}, {"ApiKey": []}]},
)
def health(runtime: RuntimeDep, caller: MaybeCallerDep) -> HealthOut | JSONResponse:
    """200 when this process can take work and what it sends somewhere will run; else 503.

    Readiness, for a load balancer: the database, every backend's own probe (answered from a
    cache, so a dead broker costs at most a second), and Celery workers while the rollout
    sends tasks there. An operator key adds the detail (broker address, errors, worker names).
    """
    report = runtime.health.report()
    body = HealthOut(
        status=report.status,
        reasons=report.reasons,
        database=report.database,
        backends=report.backends,
        detail=report.detail if caller is not None and caller.is_operator else None,
    )
    if report.ok:
        return body
    return JSONResponse(status_code=503, content=body.model_dump(exclude_none=True))


@router.get("/health/live", response_model=LiveOut)
def live() -> LiveOut:
    """Liveness: the process serves HTTP. It asks neither the database nor Redis, so an
    outage of either never gets a healthy process restarted."""
    return LiveOut(status="alive")


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        **UNAUTHORIZED,
        403: {"model": ErrorOut, "description": "Not an operator key"},
    },
)
def metrics(runtime: RuntimeDep, _: OperatorDep) -> Response:
    """This process's Prometheus metrics (tasks it dispatched and ran on threads, queue
    depths, health, the rollout in force). Each worker serves its own (WORKER_METRICS_PORT)."""
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
