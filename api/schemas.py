"""Request and response bodies: strict in, allow-listed out.

A task is shown as its `TaskRecord` (ISO 8601 UTC times): the record is the one list of a
task's fields, so the API cannot fall behind the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.limits import check_storable_json
from api.settings import BATCH_ITEMS_CEILING
from dispatch.rollout.policy import Percentage, Stickiness
from execution.records import TaskRecord
from execution.status import TaskStatus


class Strict(BaseModel):
    """Unknown fields are an error, and no value is coerced to another type.

    Lax mode would read `"percentage": true` as 1 % and `"priority": "5"` as 5; strict mode
    refuses both. A JSON int still fills a float field (`"percentage": 25`).
    """

    model_config = ConfigDict(extra="forbid", strict=True)


def _storable_text(text: str, info: ValidationInfo) -> str:
    check_storable_json(text, where=info.field_name or "text")
    return text


StoredText = Annotated[str, AfterValidator(_storable_text)]
"""Text a request stores: no NUL (PostgreSQL refuses it), no lone surrogate (not UTF-8)."""


class TaskCreate(Strict):
    """POST /tasks."""

    tool_id: Annotated[StoredText, Field(min_length=1, max_length=128, examples=["profile-csv"])]
    payload: Annotated[
        dict[str, Any],
        Field(default_factory=dict, examples=[{"csv": "a,b\n1,x\n2,y\n"}]),
    ]
    priority: Annotated[int | None, Field(ge=0, le=9, description="0-9, 9 highest")] = None

    @field_validator("payload")
    @classmethod
    def _storable(cls, payload: dict[str, Any]) -> dict[str, Any]:
        check_storable_json(payload)
        return payload


@dataclass(frozen=True, slots=True)
class TaskView(TaskRecord):
    """One task as GET /tasks/{task_id} shows it: the record, and a parallel job's batches."""

    batches: dict[str, int] | None = None
    """A parallel job's batches by status, with their `total`; None for any other task."""

    @classmethod
    def of(cls, record: TaskRecord, counts: dict[TaskStatus, int] | None) -> TaskView:
        batches = None
        if counts:
            batches = {"total": sum(counts.values())}
            batches.update((str(status), count) for status, count in sorted(counts.items()))
        return cls(**record.as_row(), batches=batches)


class TaskPage(BaseModel):
    """One page of a task listing."""

    items: list[TaskRecord]
    limit: int
    offset: int


class TaskBatchCreate(Strict):
    """POST /tasks/batch: tasks to create together, at most BATCH_MAX_ITEMS."""

    items: Annotated[list[TaskCreate], Field(min_length=1, max_length=BATCH_ITEMS_CEILING)]


class TaskBatchOut(BaseModel):
    """Every task of a batch, in item order."""

    items: list[TaskRecord]
    rejected: int = Field(
        description="Tasks whose backend refused them after they were written (a broker that "
        "failed mid-batch): CANCELLED with error_code REJECTED, the reason in their message; "
        "submit those again. The others are QUEUED."
    )


class TaskEventOut(BaseModel):
    """One entry of a task's history."""

    model_config = ConfigDict(from_attributes=True)

    seq: int
    status: TaskStatus
    progress: int
    message: str | None
    at: datetime


class RestorePointOut(BaseModel):
    """Where the last rollback found the rollout; `restore` returns to it."""

    percentage: float
    tool_overrides: dict[str, float]
    stickiness: Stickiness


class EnvironmentOut(BaseModel):
    """What this API process's start did with its environment's rollout values."""

    percentage: float | None = Field(description="None: the environment does not set it")
    outcome: str = Field(
        description="seeded (first start), adopted (new values), unchanged (the values last "
        "adopted: the stored state stays), stale (values replaced since: ignored), not set"
    )


class RolloutOut(BaseModel):
    """The rollout in force for new tasks in this process, and what it means."""

    use_celery: bool
    percentage: float
    effective_percentage: float
    tool_overrides: dict[str, float]
    stickiness: Stickiness
    version: int
    updated_at: datetime | None
    updated_by: str | None
    source: str | None = Field(
        description="What made this version: seed or environment (a process's environment), "
        "set, advance, rollback or restore (an operator)"
    )
    environment: EnvironmentOut | None = Field(
        description="This process's CELERY_ROLLOUT_PERCENTAGE and what its start did with it"
    )
    restore_point: RestorePointOut | None
    paused: list[str] = Field(
        description='Tools whose dispatch is paused ("*": every tool): their new tasks wait '
        "QUEUED; POST /queue/resume hands them over"
    )
    explanation: str


class RollbackOut(RolloutOut):
    """The rollout after a rollback, and the QUEUED Celery tasks moved to threads with it."""

    reclaimed: int = Field(
        description="Tasks still QUEUED on Celery that this request moved to the thread backend"
    )


Reason = Annotated[
    StoredText, Field(min_length=1, max_length=500, description="Why; kept in history")
]


class RolloutUpdate(Strict):
    """PUT /rollout: the fields given replace the stored ones; `tool_overrides` as a whole."""

    percentage: Percentage | None = None
    tool_overrides: (
        dict[Annotated[StoredText, Field(min_length=1, max_length=128)], Percentage] | None
    ) = Field(default=None, max_length=200)
    # FastAPI validates the parsed JSON in Python mode, where a strict enum field would take
    # only a Stickiness member: this one field reads its value from the JSON string.
    stickiness: Annotated[Stickiness | None, Field(strict=False)] = None
    reason: Reason


class RolloutReason(Strict):
    """POST /rollout/restore."""

    reason: Reason


class RollbackIn(Strict):
    """POST /rollout/rollback: everything, or one tool, back to threads."""

    reason: Reason
    tool_id: Annotated[StoredText | None, Field(min_length=1, max_length=128)] = None


class PauseIn(Strict):
    """POST /queue/pause and /queue/resume: one tool, or every tool (no tool_id)."""

    tool_id: Annotated[StoredText | None, Field(min_length=1, max_length=128)] = None
    reason: Reason


class PauseOut(BaseModel):
    """The paused tools after a pause or resume, and the rollout version recording it."""

    paused: list[str] = Field(description='Tools whose dispatch is paused ("*": every tool)')
    version: int


class ResumeOut(PauseOut):
    """After a resume: also how many held tasks this request handed to their backends."""

    released: int = Field(
        description="Held tasks handed to their backends by this request, highest priority "
        "first; the sweeps of every process take any others within their interval"
    )


class RolloutEventOut(BaseModel):
    """One accepted rollout change."""

    model_config = ConfigDict(from_attributes=True)

    version: int
    action: str
    actor: str
    reason: str
    before: dict[str, Any] | None
    after: dict[str, Any]
    at: datetime


class RolloutPreviewOut(BaseModel):
    """What a percentage would move, before anyone sets it."""

    model_config = ConfigDict(from_attributes=True)

    current_percentage: float
    proposed_percentage: float
    new_traffic_moving: float
    direction: str
    queued: dict[str, int]
    queued_that_would_move: int


class ToolOut(BaseModel):
    """A registered tool and its defaults."""

    tool_id: str
    description: str
    queue: str
    priority: int
    time_limit: int | None
    soft_time_limit: int | None


class HealthOut(BaseModel):
    """Whether this process can take and run tasks; states and counts only without a key."""

    status: str = Field(description="ok, or degraded (answered with 503)")
    reasons: list[str] = Field(description="Why it is degraded; empty when ok")
    database: str = Field(description="ok or unreachable")
    backends: dict[str, dict[str, Any]] = Field(
        description="Per backend: ok, state, its counts (workers, waiting, queue lengths), "
        "queued (its QUEUED rows) and oldest_waiting_seconds"
    )
    detail: dict[str, Any] | None = Field(
        default=None,
        description="Operator keys only: broker address, error text, worker names",
    )


class LiveOut(BaseModel):
    """The process is up and serving."""

    status: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: one sentence saying what went wrong."""

    detail: str


class FieldErrorOut(BaseModel):
    """One reason a request was refused: where (`loc`) and why; the value itself is not echoed."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    """A 422: one sentence, then each problem on its own."""

    errors: list[FieldErrorOut] = []


class BatchRefusedOut(ValidationErrorOut):
    """A refused batch's 422: the items that do not fit, or too many items."""

    max_items: int | None = Field(
        default=None, description="With too many items: how many one batch may hold"
    )


class PurgeIn(Strict):
    """POST /queue/purge: which QUEUED tasks to cancel; filters combine, and one is needed
    (or `all`)."""

    tool_id: Annotated[StoredText | None, Field(min_length=1, max_length=128)] = None
    backend: Annotated[
        StoredText | None, Field(min_length=1, max_length=16, examples=["celery"])
    ] = None
    queue: Annotated[
        StoredText | None,
        Field(min_length=1, max_length=128, description="A tool's Celery queue: its tools"),
    ] = None
    all: bool = Field(default=False, description="Every QUEUED task; no filter may be given")
    dry_run: bool = Field(description="Only count what would be cancelled; change nothing")
    reason: Reason


class PurgeOut(BaseModel):
    """What a purge cancelled (dry run: would cancel), and what it left running."""

    dry_run: bool
    cancelled: int = Field(description="QUEUED tasks cancelled (dry run: that would be)")
    by_backend: dict[str, dict[str, int]] = Field(description="Those tasks per backend and tool")
    running: int = Field(description="PROCESSING tasks of the selection: not touched")
    running_by_backend: dict[str, dict[str, int]]
