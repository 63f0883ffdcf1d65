"""Parallel tools: plan batches, run each on its own, finalize once with every batch's outcome.

A parallel tool is a class with three steps, registered with `@parallel_tool`:

- `plan(ctx)` returns the batches' inputs (JSON values), in order; batch `n` is the n-th;
- `run_batch(ctx)` runs one batch (`ctx.batch` is its input, `ctx.payload` the job's) and
  returns its JSON result; it may raise, and is retried by the tool's `RetryPolicy`;
- `finalize(ctx, outcomes)` turns the outcomes, in batch order, into the job's result.

Whichever backend runs the job, the executor stores every batch as a `task_batches` row, runs
the batches where the job's backend runs tasks (its pool's threads, or one Celery task each),
and runs `finalize` exactly once, when the database says the last batch has ended.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from execution.tools.registry import (
    JSONValue,
    ProgressReporter,
    RetryPolicy,
    ToolContext,
    ToolFunction,
    tool,
)

MAX_BATCHES = 10_000
"""The most batches one job may plan: each is a row, and on Celery a message."""


class OnBatchFailure(StrEnum):
    """What a job does once one of its batches failed for good (its retries used up)."""

    FAIL_FAST = "fail_fast"
    """Cancel the batches not started, ask the running ones to stop, and fail the job."""
    PARTIAL = "partial"
    """Run the other batches; `finalize` gets the failed ones with their error, no result."""


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What `run_batch` receives: its job, its batch's input, and a progress hook."""

    task_id: str
    batch_no: int
    attempt: int
    """This batch's attempt (1 for its first run)."""
    payload: Any
    """The job's validated payload, as `plan` saw it."""
    batch: Any
    """This batch's input, as `plan` returned it."""
    progress: ProgressReporter
    """Progress within the batch; the job's progress counts the batches that ended."""
    data_dir: Path
    stop_requested: threading.Event = field(default_factory=threading.Event)
    """Set when the batch should stop (the job was cancelled or failed fast, its soft time
    limit passed). A long batch calls `progress` now and then: once the batch must stop, that
    call raises, and the batch ends CANCELLED (or is retried, past a soft limit) without
    anything else to do. A batch that returns instead stores its result as usual."""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """How one batch ended, as `finalize` sees it."""

    batch_no: int
    input: Any
    result: Any
    """What `run_batch` returned; None if the batch failed."""
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        """The batch completed."""
        return self.error_code is None


class ParallelJob(ABC):
    """The three steps of a parallel tool; subclass it and decorate with `@parallel_tool`."""

    @abstractmethod
    def plan(self, ctx: ToolContext) -> Sequence[JSONValue]:
        """The batches' inputs, in order (at most MAX_BATCHES; none is a job with no batch)."""

    @abstractmethod
    def run_batch(self, ctx: BatchContext) -> JSONValue:
        """Run one batch and return its result."""

    @abstractmethod
    def finalize(self, ctx: ToolContext, outcomes: Sequence[BatchOutcome]) -> JSONValue:
        """The job's result from every batch's outcome, in batch order."""


class InvalidPlan(ValueError):
    """`plan` returned something the executor cannot store as batches."""


def check_plan(tool_id: str, planned: object) -> list[JSONValue]:
    """The plan as a list of batch inputs, or InvalidPlan saying what is wrong with it."""
    if isinstance(planned, str | bytes | dict) or not isinstance(planned, Sequence):
        raise InvalidPlan(f"{tool_id}: plan must return a list of batch inputs")
    if len(planned) > MAX_BATCHES:
        raise InvalidPlan(f"{tool_id}: plan returned {len(planned)} batches, over {MAX_BATCHES}")
    return list(planned)


J = TypeVar("J", bound=ParallelJob)


def parallel_tool(
    tool_id: str,
    *,
    description: str = "",
    queue: str = "default",
    priority: int = 0,
    time_limit: int | None = None,
    soft_time_limit: int | None = None,
    retry: RetryPolicy | None = None,
    payload_model: type[BaseModel] | None = None,
    on_batch_failure: OnBatchFailure = OnBatchFailure.FAIL_FAST,
) -> Callable[[type[J]], ToolFunction[JSONValue]]:
    """Register a ParallelJob subclass as a tool. Time limits and the retry policy apply to
    each batch and to `plan` and `finalize`, each on its own; `.enqueue(payload)` works as for
    any tool, and calling the tool directly runs every step inline, in order."""
    as_tool = tool(
        tool_id,
        description=description,
        queue=queue,
        priority=priority,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        retry=retry,
        payload_model=payload_model,
    )

    def mark(cls: type[J]) -> ToolFunction[JSONValue]:
        job = cls()

        def handler(ctx: ToolContext) -> JSONValue:
            return run_inline(job, ctx)

        # Named as the class: reprs, logs and the tool's description come from it.
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(handler, name, getattr(cls, name))
        plain = as_tool(handler)
        parallel = replace(plain.spec, parallel=job, on_batch_failure=on_batch_failure)
        return ToolFunction(handler, parallel)

    return mark


def run_inline(job: ParallelJob, ctx: ToolContext) -> JSONValue:
    """Every step in this thread, one batch after another: a direct call of the tool (a test,
    a script). No row is written, so nothing is retried: the first batch to raise raises."""
    inputs = check_plan("inline", job.plan(ctx))
    outcomes = []
    for batch_no, batch in enumerate(inputs):
        batch_ctx = BatchContext(
            task_id=ctx.task_id,
            batch_no=batch_no,
            attempt=1,
            payload=ctx.payload,
            batch=batch,
            progress=_ignore_progress,
            data_dir=ctx.data_dir,
            stop_requested=ctx.stop_requested,
        )
        outcomes.append(BatchOutcome(batch_no, batch, job.run_batch(batch_ctx)))
        ctx.progress(100 * (batch_no + 1) / max(1, len(inputs)), None)
    return job.finalize(ctx, outcomes)


def _ignore_progress(percent: float, message: str | None = None) -> None:
    """Inline batches report nothing of their own; the job counts them as they end."""
