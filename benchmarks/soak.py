"""Part 7: a soak. Mixed tasks through the API at a 50 % rollout, a worker running Celery's half.

What an operator half-way through a migration runs: `switchyard serve` (thread backend in the
API process, Celery publisher) and `switchyard worker` (-c 2), fed by wrk with noop, 10 ms sleep
and profile-csv tasks in turn. It reports what the operator would ask of it: how many tasks a
second it finished, how long a task took from submit to COMPLETED on each backend, whether the
API and the worker grew, and that every task completed exactly once (one claim each).
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime

import psutil
from sqlalchemy import Engine, func, select

from benchmarks.api_load import authorization_headers
from benchmarks.context import BenchContext
from benchmarks.load import post_mixed
from benchmarks.memory import MIB, tree_rss
from benchmarks.runner import Row, Summary
from benchmarks.services import STORE_NAMES, Store
from execution.database import make_engine, migrate
from execution.records import TASKS
from execution.status import TERMINAL_STATUSES, TaskStatus

ROLLOUT_PERCENTAGE = 50
CONCURRENCY = 2
CSV_ROWS = 200
MIX: tuple[dict[str, object], ...] = (
    {"tool_id": "noop", "payload": {}},
    {"tool_id": "sleep", "payload": {"seconds": 0.01, "steps": 1}},
    {"tool_id": "profile-csv", "payload": {"path": "soak.csv"}},
)
MIN_DRAIN_SECONDS = 120.0
"""How long the tasks may take to finish after the last submit, at the least."""
POLL_SECONDS = 0.5


def run(ctx: BenchContext) -> list[Row]:
    """One soak per store, each on fresh servers and a fresh database."""
    return [_soak(ctx, store) for store in ctx.stores]


def _soak(ctx: BenchContext, store: Store) -> Row:
    services, tasks = ctx.services, ctx.sizes.soak_tasks
    data_dir = services.workdir / f"soak-{store}"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "soak.csv").write_text(
        "name,age,score\n" + "".join(f"p{i},{20 + i % 50},{i * 0.5}\n" for i in range(CSV_ROWS))
    )
    database_url = services.database_url(store, f"soak_{store}")
    migrate(database_url)  # serve migrates only the embedded store; an operator runs db upgrade
    broker = services.redis_url()
    key_file = services.workdir / f"soak-{store}-operator.key"
    common = {
        "DATABASE_URL": database_url,
        "REDIS_URL": broker,
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "LOG_LEVEL": "INFO",
    }
    name = f"soak-api-{store}"
    url = services.http_server(
        [sys.executable, "-m", "api.cli", "serve"],
        name=name,
        env={
            **common,
            "USE_CELERY": "true",
            "CELERY_ROLLOUT_PERCENTAGE": str(ROLLOUT_PERCENTAGE),
            "HOST": "127.0.0.1",
            "BACKGROUND_QUEUE_SIZE": "10000000",
            "OPERATOR_KEY_FILE": str(key_file),
            **ctx.server_env,
        },
    )
    worker = services.switchyard_worker(
        env=common,
        broker_url=broker,
        name=f"soak-worker-{store}",
        concurrency=CONCURRENCY,
        pool="prefork",
    )
    api, celery = psutil.Process(services.server_pid(name)), psutil.Process(worker.process.pid)
    rss_start = tree_rss(api), tree_rss(celery)

    ctx.console.log(f"  soak on {store}: {tasks:,} tasks, {ROLLOUT_PERCENTAGE} % to Celery")
    load = post_mixed(
        f"{url}/tasks",
        list(MIX),
        requests=tasks,
        expect=201,
        headers=authorization_headers(ctx.authorization, key_file),
        script_dir=services.workdir,
    )
    if load.failures:
        raise RuntimeError(f"soak on {store}: unexpected responses {load.failures}")
    engine = make_engine(database_url)
    try:
        created = _wait_finished(ctx, engine, drain=max(MIN_DRAIN_SECONDS, load.seconds * 10))
        rss_end = tree_rss(api), tree_rss(celery)
        report = _report(engine)
    finally:
        engine.dispose()
    if created != load.answered:
        raise RuntimeError(f"soak on {store}: {load.answered} answered 201, {created} rows")
    once = report.completed == created and report.claimed_twice == 0
    return Row(
        part="7",
        what=f"Soak: {created:,} mixed tasks through the API, {ROLLOUT_PERCENTAGE} % on Celery "
        f"(noop / sleep 10 ms / profile-csv; {STORE_NAMES[store]})",
        unit="tasks/s",
        ours=Summary.of([report.throughput]),
        target="every task completed once",
        met=once,
        notes=[
            f"completed {report.completed:,}/{created:,}, claimed twice {report.claimed_twice}",
            *(
                f"{backend}: {count:,} tasks, submit to COMPLETED p50 {p50 * 1e3:,.0f} ms, "
                f"p99 {p99 * 1e3:,.0f} ms"
                for backend, (count, p50, p99) in sorted(report.latency.items())
            ),
            f"submitted at {load.throughput:,.0f} req/s",
            f"RSS API {rss_start[0] / MIB:.0f} → {rss_end[0] / MIB:.0f} MiB, "
            f"worker {rss_start[1] / MIB:.0f} → {rss_end[1] / MIB:.0f} MiB",
        ],
    )


def _wait_finished(ctx: BenchContext, engine: Engine, *, drain: float) -> int:
    """Wait until no task is left unfinished; returns how many tasks there are."""
    deadline = time.monotonic() + drain
    while True:
        with engine.connect() as conn:
            grouped = select(TASKS.c.status, func.count()).group_by(TASKS.c.status)
            counts = {str(status): int(count) for status, count in conn.execute(grouped)}
        total = sum(counts.values())
        if all(status in TERMINAL_STATUSES for status in counts):
            return total
        if time.monotonic() > deadline:
            raise RuntimeError(f"soak: tasks still unfinished after {drain:.0f} s: {counts}")
        ctx.console.log(f"  waiting: {counts}")
        time.sleep(max(POLL_SECONDS, min(10.0, drain / 100)))


@dataclass(frozen=True, slots=True)
class _Report:
    completed: int
    claimed_twice: int
    throughput: float
    """Tasks completed per second, from the first submit to the last completion."""
    latency: dict[str, tuple[int, float, float]]
    """Per backend: tasks, p50 and p99 seconds from created_at to completed_at."""


def _report(engine: Engine) -> _Report:
    with engine.connect() as conn:
        rows = conn.execute(
            select(TASKS.c.backend, TASKS.c.created_at, TASKS.c.completed_at).where(
                TASKS.c.status == TaskStatus.COMPLETED
            )
        ).all()
        # Every claim counts an attempt: a task run twice (a redelivery that was not fenced
        # off, a lease lost to a live worker) shows here.
        claimed_twice = int(
            conn.execute(
                select(func.count()).select_from(TASKS).where(TASKS.c.attempts > 1)
            ).scalar_one()
        )
    durations: dict[str, list[float]] = {}
    first: datetime | None = None
    last: datetime | None = None
    for backend, created_at, completed_at in rows:
        durations.setdefault(backend, []).append((completed_at - created_at).total_seconds())
        first = created_at if first is None else min(first, created_at)
        last = completed_at if last is None else max(last, completed_at)
    span = (last - first).total_seconds() if first and last else 0.0
    return _Report(
        completed=len(rows),
        claimed_twice=claimed_twice,
        throughput=len(rows) / span if span > 0 else 0.0,
        latency={
            backend: (len(values), statistics.median(values), _p99(values))
            for backend, values in durations.items()
        },
    )


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
