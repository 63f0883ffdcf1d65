"""Part 3: noop tasks end to end on the Celery backend vs plain Celery, same workers and pool.

Three setups, each with its own Redis database and worker, alternated round by round:
Switchyard (dispatcher in this process, `switchyard worker`), plain Celery with no result
backend, and plain Celery with the SQLAlchemy result backend and `task_track_started`. A round
ends when the broker holds nothing for the setup: no message waiting and none unacknowledged
(every setup acknowledges late, so an acknowledged message is a finished task).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import ExitStack, closing
from pathlib import Path

import redis

from api.runtime import Runtime
from api.settings import Settings
from benchmarks.context import BenchContext, per_task_micros
from benchmarks.plain_celery_app import NOOP, QUEUE, make_app
from benchmarks.rows import require_status
from benchmarks.runner import Row, Variant, alternate, compared_row
from dispatch.dispatcher import NewTask
from execution.status import BackendName, TaskStatus

TARGET_RATIO = 0.85
CONCURRENCY = 2
POOL = "prefork"
POLL_SECONDS = 0.002
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport: "<queue>\x06\x16<step>" per priority


def run(ctx: BenchContext) -> list[Row]:
    """Alternate the three setups; ratios of Switchyard to each plain one."""
    with ExitStack() as stack:
        ours = _switchyard(ctx, stack)
        plain = _plain(ctx, stack, tracked=False)
        tracked = _plain(ctx, stack, tracked=True)
        figures = alternate([ours, plain, tracked], rounds=ctx.sizes.rounds, console=ctx.console)
    setup = f"{CONCURRENCY} {POOL} processes, SQLite, Redis"
    rows = [
        compared_row(
            part="3a",
            what=f"Celery backend, noop end to end ({setup})",
            unit="tasks/s",
            ours=figures[ours.label],
            baseline_label="plain Celery, no result backend",
            baseline=figures[plain.label],
            target=f"≥ {TARGET_RATIO}x",
            meets=lambda _, ratio: ratio.median >= TARGET_RATIO,
        ),
        compared_row(
            part="3b",
            what=f"Celery backend, noop end to end ({setup})",
            unit="tasks/s",
            ours=figures[ours.label],
            baseline_label="plain Celery + database result backend, track_started",
            baseline=figures[tracked.label],
            target="reported",
        ),
    ]
    if ctx.floors:
        for row in rows:
            if row.ours and row.baseline:
                row.notes.append(
                    f"per task: {ctx.floors.in_redis(per_task_micros(row.ours))} vs "
                    f"{ctx.floors.in_redis(per_task_micros(row.baseline))}"
                )
    return rows


def _switchyard(ctx: BenchContext, stack: ExitStack) -> Variant:
    broker = ctx.services.redis_url()
    database_url = f"sqlite:///{ctx.services.workdir / 'celery-switchyard.db'}"
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=broker,
        use_celery=True,
        celery_rollout_percentage=100,
        celery_worker_concurrency=CONCURRENCY,
        switchyard_data_dir=ctx.services.workdir,
    )
    runtime = Runtime.build(settings)
    runtime.prepare_database()
    runtime.start()
    stack.callback(runtime.stop)
    ctx.services.switchyard_worker(
        env={"DATABASE_URL": database_url, "REDIS_URL": broker, "LOG_LEVEL": "INFO"},
        broker_url=broker,
        name="celery-switchyard",
        concurrency=CONCURRENCY,
        pool=POOL,
    )
    client = _client(broker, stack)
    tasks, completed = ctx.sizes.celery_tasks, 0

    def measure() -> float:
        nonlocal completed
        started = time.perf_counter()
        for _ in range(tasks):
            runtime.dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="bench"))
        elapsed = wait_drained(client, QUEUE) - started
        completed += tasks
        require_status(
            runtime.engine,
            TaskStatus.COMPLETED,
            completed,
            what="celery backend",
            backend=BackendName.CELERY,
        )
        return tasks / elapsed

    return Variant("switchyard celery backend", measure)


def _plain(ctx: BenchContext, stack: ExitStack, *, tracked: bool) -> Variant:
    broker = ctx.services.redis_url()
    name = "celery-tracked" if tracked else "celery-plain"
    results = ctx.services.workdir / f"{name}-results.db"
    ctx.services.celery_worker(
        app=f"benchmarks.plain_celery_app:{'tracked_app' if tracked else 'app'}",
        broker_url=broker,
        name=name,
        concurrency=CONCURRENCY,
        pool=POOL,
        result_backend=f"db+sqlite:///{results}" if tracked else None,
    )
    publisher = make_app(f"{name}-publisher", tracked=tracked, broker_url=broker)
    stack.callback(publisher.close)
    client = _client(broker, stack)
    tasks, completed = ctx.sizes.celery_tasks, 0

    def measure() -> float:
        nonlocal completed
        started = time.perf_counter()
        for _ in range(tasks):
            publisher.send_task(NOOP, queue=QUEUE)
        elapsed = wait_drained(client, QUEUE) - started
        completed += tasks
        if tracked:
            _require_results(results, completed)
        return tasks / elapsed

    label = "celery + database results" if tracked else "plain celery"
    return Variant(label, measure)


def wait_drained(client: redis.Redis, queue: str) -> float:
    """The perf_counter time at which no message of `queue` was waiting or unacknowledged.

    A message is briefly in neither place between the worker's BRPOP and its bookkeeping, so
    an empty broker counts only once a second look, a moment later, agrees.
    """
    keys = [queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in range(1, 10))]
    empty_since: float | None = None
    while True:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.llen(key)
        pipe.hlen("unacked")
        now = time.perf_counter()
        if sum(pipe.execute()) == 0:
            if empty_since is not None:
                return empty_since
            empty_since = now
        else:
            empty_since = None
        time.sleep(POLL_SECONDS)


def _client(url: str, stack: ExitStack) -> redis.Redis:
    client = redis.Redis.from_url(url)
    stack.callback(client.close)
    return client


def _require_results(path: Path, expected: int) -> None:
    with closing(sqlite3.connect(path)) as conn:
        (found,) = conn.execute(
            "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'"
        ).fetchone()
    if found != expected:
        raise RuntimeError(f"database result backend: expected {expected} results, found {found}")
