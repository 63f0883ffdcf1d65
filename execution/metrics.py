"""Prometheus metrics of task execution, dispatch and recovery, the same in every process.

Each process builds one `Metrics` over its own registry. The API serves it at `/metrics`; a
Celery worker's prefork children write theirs to files in a shared directory
(prometheus-client's multiprocess mode), which the worker's main process serves on its own
port, summed over its children (see `enable_multiprocess`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values

from execution.hooks import ExecutorHook, Failure, Run
from execution.records import TaskRecord

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""From a noop on an idle pool (milliseconds) to a long profiling job (an hour)."""


class Metrics:
    """The counters and histograms one process updates as tasks are dispatched and run."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        common: dict[str, Any] = {"namespace": "switchyard", "registry": self.registry}
        self.tasks = Counter(
            "tasks",
            "Task attempts that ended, by backend, tool and outcome "
            "(completed, failed, retrying, cancelled)",
            ["backend", "tool", "outcome"],
            **common,
        )
        self.queue_wait = Histogram(
            "task_queue_wait_seconds",
            "Seconds a task waited between becoming due and being claimed",
            ["backend", "tool"],
            buckets=SECONDS_BUCKETS,
            **common,
        )
        self.run_time = Histogram(
            "task_run_seconds",
            "Seconds from claim to the end of the attempt",
            ["backend", "tool"],
            buckets=SECONDS_BUCKETS,
            **common,
        )
        self.dispatch = Counter(
            "dispatch_decisions",
            "New tasks routed, by backend and why: switch_off (USE_CELERY false), bucket "
            "(the task's hash against the percentage), tool_override, user_stickiness",
            ["backend", "reason"],
            **common,
        )
        self.retries = Counter(
            "task_retries",
            "Failed attempts queued again by their tool's retry policy",
            ["backend", "tool"],
            **common,
        )
        self.batches = Counter(
            "batches",
            "Attempts of parallel jobs' batches that ended, by backend, tool and outcome "
            "(completed, failed, retrying, cancelled)",
            ["backend", "tool", "outcome"],
            **common,
        )
        self.recoveries = Counter(
            "recoveries",
            "What the recovery sweep did: requeued, failed or cancelled a lost attempt, "
            "published a waiting Celery task, or handed one back to threads",
            ["action"],
            **common,
        )
        self.lease_expiries = Counter(
            "lease_expiries",
            "Running attempts found with an expired lease (their process died or hung)",
            ["backend"],
            **common,
        )
        self.pruned = Counter(
            "pruned_tasks",
            "Finished tasks deleted by retention (RETENTION_DAYS), their events with them",
            **common,
        )

    def expect(self, backends: Iterable[str], tools: Iterable[str]) -> Metrics:
        """Create every (backend, tool, outcome) series at 0 now, so a series exists before its
        first event: a rate over it is 0, not absent, and a scrape shows what will be counted."""
        tools = list(tools)
        for backend in backends:
            for tool in tools:
                for outcome in OUTCOMES:
                    self.tasks.labels(backend, tool, outcome)
                self.retries.labels(backend, tool)
        return self


OUTCOMES = ("completed", "failed", "retrying", "cancelled")
"""How an attempt can end, as `switchyard_tasks_total` labels it."""


class ExecutorMetrics(ExecutorHook):
    """Counts how each attempt ended and times its wait and its run."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def after_claim(self, run: Run) -> None:
        due = _due_at(run.task.run_after, run.task.queued_at, run.task.created_at)
        claimed = run.task.processing_started_at
        if claimed is not None:
            waited = max(0.0, (claimed - due).total_seconds())
            self._metrics.queue_wait.labels(_backend(run), run.task.tool_id).observe(waited)

    def on_success(self, run: Run, result: Any) -> None:
        self._ended(run, "completed")

    def on_failure(self, run: Run, failure: Failure) -> None:
        self._ended(run, "failed")

    def on_retry(self, run: Run, failure: Failure, delay: float) -> None:
        self._metrics.retries.labels(_backend(run), run.task.tool_id).inc()
        self._ended(run, "retrying")

    def on_cancelled(self, run: Run) -> None:
        self._ended(run, "cancelled")

    def on_batch_end(self, job: TaskRecord, outcome: str) -> None:
        self._metrics.batches.labels(job.backend or "none", job.tool_id, outcome).inc()

    def _ended(self, run: Run, outcome: str) -> None:
        backend, tool = _backend(run), run.task.tool_id
        self._metrics.tasks.labels(backend, tool, outcome).inc()
        self._metrics.run_time.labels(backend, tool).observe(time.monotonic() - run.started)


def _backend(run: Run) -> str:
    return run.task.backend or "none"


def _due_at(*candidates: datetime | None) -> datetime:
    """A task is due from its retry backoff's end, else from when it was queued."""
    return next(moment for moment in candidates if moment is not None)


def enable_multiprocess(directory: str) -> None:
    """Make metrics created from now on in this process, and in the processes it forks,
    write to files in `directory`, for a parent to serve summed (prometheus-client's
    multiprocess mode).

    prometheus-client picks its value store when it is first imported, from the environment;
    a worker decides only at startup, so it sets the variable and picks the store again.
    """
    os.environ[MULTIPROCESS_DIR] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


def multiprocess_registry() -> CollectorRegistry:
    """A registry summing every process's files in the multiprocess directory."""
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
