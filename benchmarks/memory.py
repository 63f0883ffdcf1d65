"""Part 6: resident memory of queued thread-backend tasks, and of a worker across many tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import psutil
import redis

from api.runtime import Runtime
from api.settings import Settings
from backends.settings import CelerySettings
from benchmarks.celery_backends import CONCURRENCY, POOL, wait_drained
from benchmarks.context import BenchContext
from benchmarks.plain_celery_app import NOOP, QUEUE, make_app
from benchmarks.rows import require_status
from benchmarks.runner import Row, Summary
from dispatch.dispatcher import NewTask
from execution.status import BackendName, TaskStatus
from tests.integration.workers import REPO_ROOT

MIB = 1024 * 1024
GROWTH_TOLERANCE_MIB = 5.0
"""What a worker may grow over the second half and still count as flat (the issue's bound)."""
PROBE_TIMEOUT = 1_800
LIMITS = CelerySettings(_env_file=None)
"""The worker runs with the default time limits: every task carries them to Celery."""


def run(ctx: BenchContext) -> list[Row]:
    """The queued-tasks figure from a probe process, then both workers' growth."""
    return [_queued(ctx), _worker_growth(ctx)]


def _queued(ctx: BenchContext) -> Row:
    tasks = ctx.sizes.queued_tasks
    ctx.console.log(f"  probe: {tasks:,} queued thread-backend tasks")
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "benchmarks.memory_probe",
            f"--tasks={tasks}",
            f"--database-url=sqlite:///{ctx.services.workdir / 'memory-probe.db'}",
            f"--data-dir={ctx.services.workdir}",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{done.stderr[-3000:]}")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    if probe["waiting"] < tasks:
        raise RuntimeError(f"memory probe: only {probe['waiting']} of {tasks} tasks were queued")
    grown = probe["rss_after"] - probe["rss_before"]
    return Row(
        part="6a",
        what=f"RSS of a process holding {tasks:,} queued thread-backend tasks",
        unit="MiB",
        ours=Summary.of([probe["rss_after"] / MIB]),
        target="reported",
        notes=[
            f"+{grown / MIB:.1f} MiB for the queue = {grown / tasks:,.0f} B/task",
            f"submitted at {tasks / probe['submit_seconds']:,.0f}/s",
        ],
    )


def _worker_growth(ctx: BenchContext) -> Row:
    tasks = ctx.sizes.worker_tasks
    with ExitStack() as stack:
        ours = _sample(ctx, _switchyard(ctx, stack), tasks)
        plain = _sample(ctx, _plain(ctx, stack), tasks)
    warmup, half = _warmup(tasks), tasks // 2
    return Row(
        part="6b",
        what=f"Worker RSS after {tasks:,} noop tasks ({CONCURRENCY} {POOL} + main process, "
        f"soft/hard time limit {LIMITS.celery_task_soft_time_limit}/"
        f"{LIMITS.celery_task_time_limit} s on every task)",
        unit="MiB",
        ours=Summary.of([ours[tasks] / MIB]),
        baseline_label="plain Celery worker, same tasks",
        baseline=Summary.of([plain[tasks] / MIB]),
        ratio=Summary.of([ours[tasks] / plain[tasks]]),
        target=f"no growth after warm-up (≤ {GROWTH_TOLERANCE_MIB:g} MiB over the 2nd half)",
        met=(ours[tasks] - ours[half]) / MIB <= GROWTH_TOLERANCE_MIB,
        notes=[
            f"growth after the first {warmup:,}: {_growth(ours, warmup, tasks)} MiB, "
            f"over the 2nd half: {_growth(ours, half, tasks)} MiB; plain "
            f"{_growth(plain, warmup, tasks)} and {_growth(plain, half, tasks)} MiB",
            f"of which the main process {_growth(ours, -warmup, -tasks)} MiB",
            "RSS after each 10%: "
            + " ".join(f"{ours[done] / MIB:.0f}" for done in sorted(ours) if done >= warmup),
        ],
    )


def _growth(samples: dict[int, int], start: int, end: int) -> str:
    return f"{(samples[end] - samples[start]) / MIB:+.1f}"


@dataclass
class _Worker:
    """A worker under measurement: its main process, its broker, and how to feed and check it."""

    label: str
    process: psutil.Process
    broker: redis.Redis
    submit: Callable[[int], None]
    check: Callable[[int], None]


def _switchyard(ctx: BenchContext, stack: ExitStack) -> _Worker:
    broker = ctx.services.redis_url()
    database_url = f"sqlite:///{ctx.services.workdir / 'memory-worker.db'}"
    runtime = Runtime.build(
        Settings(
            _env_file=None,
            database_url=database_url,
            redis_url=broker,
            use_celery=True,
            celery_rollout_percentage=100,
            switchyard_data_dir=ctx.services.workdir,
        )
    )
    runtime.prepare_database()
    runtime.start()
    stack.callback(runtime.stop)
    worker = ctx.services.switchyard_worker(
        env={"DATABASE_URL": database_url, "REDIS_URL": broker, "LOG_LEVEL": "INFO"},
        broker_url=broker,
        name="memory-switchyard",
        concurrency=CONCURRENCY,
        pool=POOL,
    )

    def submit(count: int) -> None:
        for _ in range(count):
            runtime.dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="bench"))

    def check(count: int) -> None:
        require_status(
            runtime.engine,
            TaskStatus.COMPLETED,
            count,
            what="memory worker",
            backend=BackendName.CELERY,
        )

    client = redis.Redis.from_url(broker)
    stack.callback(client.close)
    return _Worker("switchyard worker", psutil.Process(worker.process.pid), client, submit, check)


def _plain(ctx: BenchContext, stack: ExitStack) -> _Worker:
    broker = ctx.services.redis_url()
    worker = ctx.services.celery_worker(
        app="benchmarks.plain_celery_app:app",
        broker_url=broker,
        name="memory-plain",
        concurrency=CONCURRENCY,
        pool=POOL,
    )
    publisher = make_app("memory-publisher", tracked=False, broker_url=broker)
    stack.callback(publisher.close)
    client = redis.Redis.from_url(broker)
    stack.callback(client.close)

    def submit(count: int) -> None:
        for _ in range(count):
            publisher.send_task(NOOP, queue=QUEUE)

    return _Worker(
        "plain worker", psutil.Process(worker.process.pid), client, submit, lambda _: None
    )


def _sample(ctx: BenchContext, worker: _Worker, tasks: int) -> dict[int, int]:
    """RSS of the worker's process tree after each tenth of `tasks`, keyed by tasks done.

    The main process's own share is kept under the negative key, so a note can say which
    process grew.
    """
    samples, done = {}, 0
    for step in range(1, 11):
        target = tasks * step // 10
        worker.submit(target - done)
        done = target
        wait_drained(worker.broker, QUEUE)
        samples[done] = tree_rss(worker.process)
        samples[-done] = worker.process.memory_info().rss
        ctx.console.log(f"  {worker.label}: {done:,}/{tasks:,}, {samples[done] / MIB:.1f} MiB")
    worker.check(tasks)
    return samples


def _warmup(tasks: int) -> int:
    return tasks // 10


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of `process` and all its descendants (a worker and its children)."""
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
