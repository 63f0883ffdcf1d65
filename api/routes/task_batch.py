"""POST /tasks/batch: many tasks in one request and one transaction, each routed on its own."""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse

from api.auth import UNAUTHORIZED, CallerDep
from api.deps import RuntimeDep
from api.schemas import BatchRefusedOut, ErrorOut, FieldErrorOut, TaskBatchCreate, TaskBatchOut
from dispatch.dispatcher import REJECTED, NewTask

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=UNAUTHORIZED)


@router.post(
    "/batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskBatchOut,
    responses={
        400: {"model": ErrorOut, "description": "Body nested or numbered past what JSON reads"},
        413: {"model": ErrorOut, "description": "Body larger than MAX_REQUEST_BYTES"},
        422: {
            "model": BatchRefusedOut,
            "description": "Items that do not fit, each named by its index, or more than "
            "BATCH_MAX_ITEMS items (`max_items` says how many fit): nothing created",
        },
        503: {
            "model": ErrorOut,
            "description": "A backend cannot take its share of the batch now: nothing created",
        },
    },
)
def create_tasks(
    body: TaskBatchCreate, runtime: RuntimeDep, caller: CallerDep
) -> TaskBatchOut | JSONResponse:
    """Create up to BATCH_MAX_ITEMS tasks owned by the caller, all or none: a bad item (its
    index and reason in the 422), or a backend that cannot take its share (503 with
    Retry-After), creates nothing. The rows and their history are written in one transaction,
    each task routed on its own, then each is handed to its backend. The answer lists every
    task in item order; one whose backend refused it after the commit (a broker that failed
    mid-batch) is CANCELLED with error_code REJECTED, as a single POST /tasks would leave it,
    and counted in `rejected`."""
    limit = runtime.settings.batch_max_items
    if len(body.items) > limit:
        reason = (
            f"at most {limit} items per batch (BATCH_MAX_ITEMS), got {len(body.items)}: "
            "send them in several batches"
        )
        refused = BatchRefusedOut(
            detail=f"invalid request: body.items: {reason}",
            errors=[FieldErrorOut(loc=["body", "items"], msg=reason, type="too_long")],
            max_items=limit,
        )
        return JSONResponse(status_code=422, content=refused.model_dump())
    records = runtime.dispatcher.submit_many(
        [
            NewTask(
                tool_id=item.tool_id,
                payload=item.payload,
                priority=item.priority,
                user_id=caller.user_id,
            )
            for item in body.items
        ]
    )
    rejected = sum(record.error_code == REJECTED for record in records)
    return TaskBatchOut(items=records, rejected=rejected)
