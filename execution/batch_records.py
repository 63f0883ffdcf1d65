"""The batches of a parallel job, as stored: one `task_batches` row per planned batch.

A batch moves through the task statuses (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED) with
the same fencing as a task: every write of an attempt names its number, and a lease says the
attempt's process is alive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Annotated, Any

from sqlalchemy import JSON, ForeignKeyConstraint, Index, Integer, String, Text

from execution.models import Stored, UTCDateTime, table_of
from execution.status import TaskStatus


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch of a parallel job."""

    task_id: Annotated[str, Stored(String(36), primary_key=True)]
    batch_no: Annotated[int, Stored(Integer, primary_key=True)]
    status: Annotated[TaskStatus, Stored(String(16))]
    attempts: Annotated[int, Stored(Integer)]
    attempts_before_retry: Annotated[int, Stored(Integer)]
    """Attempts made before its job's latest manual retry: the retry policy counts from here."""
    progress: Annotated[int, Stored(Integer)]
    input: Annotated[Any, Stored(JSON, nullable=True)]
    """What `plan` returned for this batch."""
    result: Annotated[Any, Stored(JSON, nullable=True)]
    error_code: Annotated[str | None, Stored(String(128))]
    error_message: Annotated[str | None, Stored(Text)]
    lease_owner: Annotated[str | None, Stored(String(128))]
    """The process running the current attempt (kept once it ended: who ran it)."""
    lease_expires_at: Annotated[datetime | None, Stored(UTCDateTime)]
    run_after: Annotated[datetime | None, Stored(UTCDateTime)]
    """A batch waiting for its retry's backoff runs after this."""
    dispatched_at: Annotated[datetime | None, Stored(UTCDateTime)]
    """When it was last handed to the job's backend; None while a hand-over is pending."""
    cancel_requested_at: Annotated[datetime | None, Stored(UTCDateTime)]
    """The job was cancelled or failed fast while this batch ran: it should stop."""
    created_at: Annotated[datetime, Stored(UTCDateTime)]
    started_at: Annotated[datetime | None, Stored(UTCDateTime)]
    finished_at: Annotated[datetime | None, Stored(UTCDateTime)]
    updated_at: Annotated[datetime, Stored(UTCDateTime)]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BatchRecord:
        """The one way a `task_batches` row becomes a record."""
        values = dict(row)
        values["status"] = TaskStatus(values["status"])
        return cls(**values)


BATCH_COLUMNS = tuple(field.name for field in fields(BatchRecord))
BATCHES = table_of(
    BatchRecord,
    "task_batches",
    ForeignKeyConstraint(["task_id"], ["tasks.task_id"], ondelete="CASCADE"),
    Index("ix_task_batches_status_lease_expires_at", "status", "lease_expires_at"),
)
UNFINISHED = (TaskStatus.QUEUED, TaskStatus.PROCESSING)
"""A batch in one of these has not ended: the job cannot be finalized yet."""
