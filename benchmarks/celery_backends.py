"""Part 3: noop tasks end to end on the Celery backend vs Celery by hand, same workers and pool.

Per status store (SQLite, PostgreSQL), four setups, each with its own Redis database, worker and
database, alternated round by round:

- Switchyard: the dispatcher in this process, `switchyard worker`;
- plain Celery with no result backend (`plain_celery_app.app`);
- plain Celery with the SQLAlchemy database result backend and `task_track_started`, its results
  in the store's database (`plain_celery_app.tracked_app`);
- the hand-written durable path (`durable_celery_app`): Switchyard's rows, written by hand.

A round ends when the broker holds nothing for the setup: no message waiting and none
unacknowledged (every setup acknowledges late, so an acknowledged message is a finished task).
Every round then checks the rows: each task COMPLETED (Switchyard, durable) or stored as a
SUCCESS result (database result backend).

Each round also counts the CPU time per task of each process (3d): the publisher (this process,
while it publishes), the worker's main process (consumer, timers, events) and its prefork
children (the task itself), so the table shows where Switchyard's extra cost per task sits.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field

import psutil
import redis
from sqlalchemy import Engine, text

from api.runtime import Runtime
from api.settings import Settings
from benchmarks.context import BenchContext, per_task_micros
from benchmarks.durable_celery_app import DATABASE_ENV, Publisher
from benchmarks.plain_celery_app import NOOP, QUEUE, make_app
from benchmarks.rows import require_status
from benchmarks.runner import Row, Summary, Variant, alternate, compared_row, ratio_at_least
from benchmarks.services import STORE_NAMES, Services, Store
from dispatch.dispatcher import NewTask
from execution.database import make_engine, upgrade
from execution.status import BackendName, TaskStatus
from tests.integration.workers import WorkerProcess

TARGET_RATIO = 0.85
"""3a: Switchyard's Celery backend against plain Celery with no result backend."""
TARGET_TRACKED_RATIO = 3.0
"""3b: against Celery with its database result backend and track_started."""
CONCURRENCY = 2
POOL = "prefork"
POLL_SECONDS = 0.002
PRIORITY_SEPARATOR = "\x06\x16"  # kombu's Redis transport: "<queue>\x06\x16<step>" per priority
PLAIN = "plain Celery, no result backend"
PROCESSES = ("publisher", "worker main process", "worker children")
"""Where 3d splits the CPU time of a task."""


@dataclass
class CpuPerTask:
    """CPU time per task (µs) of each of PROCESSES, per round (the warm-up first)."""

    worker: psutil.Process
    runs: list[tuple[float, ...]] = field(default_factory=list)

    def round(self, tasks: int, publish: Callable[[], None], drain: Callable[[], float]) -> float:
        """Publish `tasks` and wait until they are done (`drain`, which returns when), counting
        each process's CPU time. The publisher counts while it publishes only: polling for
        the end would charge a slower setup more."""
        worker_before = self._worker()
        publisher_before = time.process_time()
        publish()
        publisher = time.process_time() - publisher_before
        finished = drain()
        worker_after = self._worker()
        spent = (publisher, *(b - a for a, b in zip(worker_before, worker_after, strict=True)))
        self.runs.append(tuple(1e6 * seconds / tasks for seconds in spent))
        return finished

    def of(self, process: int, rounds: int) -> list[float]:
        """µs per task of PROCESSES[process] over the counted rounds."""
        return [run[process] for run in self.runs[-rounds:]]

    def _worker(self) -> tuple[float, float]:
        """CPU seconds of the worker's main process, and of its children (ended ones too)."""
        main = self.worker.cpu_times()
        children = main.children_user + main.children_system
        for child in self.worker.children(recursive=True):
            with suppress(psutil.NoSuchProcess):  # ended since the listing: counted above next
                times = child.cpu_times()
                children += times.user + times.system
        return main.user + main.system, children


@dataclass(frozen=True, slots=True)
class _Setup:
    """One setup's rounds, and the CPU they cost."""

    variant: Variant
    cpu: CpuPerTask


def run(ctx: BenchContext) -> list[Row]:
    """Per store, alternate the four setups; ratios of Switchyard to each of the other three."""
    rows: list[Row] = []
    for store in ctx.stores:
        ctx.console.log(f"  store: {STORE_NAMES[store]}")
        # A scope per store: its workers stop before the next store's start (2 cores).
        with ctx.services.scope() as services, ExitStack() as stack:
            ours = _switchyard(ctx, services, stack, store)
            plain = _plain(ctx, services, stack, store, tracked=False)
            tracked = _plain(ctx, services, stack, store, tracked=True)
            durable = _durable(ctx, services, stack, store)
            figures = alternate(
                [setup.variant for setup in (ours, plain, tracked, durable)],
                rounds=ctx.sizes.rounds,
                console=ctx.console,
            )
        rows += _rows(
            ctx,
            store,
            figures,
            ours.variant.label,
            plain.variant.label,
            tracked.variant.label,
            durable.variant.label,
        )
        rows += _cpu_rows(ctx, store, ours.cpu, plain.cpu, durable.cpu)
    return rows


def _cpu_rows(
    ctx: BenchContext, store: Store, ours: CpuPerTask, plain: CpuPerTask, durable: CpuPerTask
) -> list[Row]:
    rounds, rows = ctx.sizes.rounds, []
    for index, process in enumerate(PROCESSES):
        what = f"CPU per Celery task: {process} ({STORE_NAMES[store]})"
        mine, baseline = ours.of(index, rounds), plain.of(index, rounds)
        notes = [f"durable Celery by hand: {statistics.median(durable.of(index, rounds)):,.0f} µs"]
        if min(baseline) > 0:
            rows.append(
                compared_row(
                    part="3d",
                    what=what,
                    unit="µs",
                    ours=mine,
                    baseline_label=PLAIN,
                    baseline=baseline,
                    target="reported",
                    notes=notes,
                )
            )
            continue
        # The kernel counts a process's CPU time in clock ticks (10 ms): a few tasks (--quick)
        # may spend less than one, which leaves no ratio to take.
        notes.append("no ratio: plain Celery's time is below one clock tick at this size")
        rows.append(
            Row(
                part="3d",
                what=what,
                unit="µs",
                ours=Summary.of(mine),
                baseline_label=PLAIN,
                baseline=Summary.of(baseline),
                target="reported",
                notes=notes,
            )
        )
    return rows


def _rows(
    ctx: BenchContext,
    store: Store,
    figures: dict[str, list[float]],
    ours: str,
    plain: str,
    tracked: str,
    durable: str,
) -> list[Row]:
    what = (
        f"Celery backend, noop end to end ({CONCURRENCY} {POOL} processes, "
        f"{STORE_NAMES[store]}, Redis)"
    )
    rows = [
        compared_row(
            part=part,
            what=what,
            unit="tasks/s",
            ours=figures[ours],
            baseline_label=label,
            baseline=figures[baseline],
            target=f"≥ {target:g}x" if target else "reported",
            meets=ratio_at_least(target) if target else None,
        )
        for part, label, baseline, target in (
            ("3a", PLAIN, plain, TARGET_RATIO),
            (
                "3b",
                "plain Celery + database result backend, track_started",
                tracked,
                TARGET_TRACKED_RATIO,
            ),
            ("3c", "hand-written durable Celery (row + 2 transactions, raw driver)", durable, None),
        )
    ]
    if ctx.floors:
        for row in rows:
            if row.ours and row.baseline:
                row.notes.append(
                    f"per task: {ctx.floors.in_redis(per_task_micros(row.ours))} vs "
                    f"{ctx.floors.in_redis(per_task_micros(row.baseline))}"
                )
    return rows


def _switchyard(ctx: BenchContext, services: Services, stack: ExitStack, store: Store) -> _Setup:
    broker = services.redis_url()
    database_url = services.database_url(store, "celery_switchyard")
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=broker,
        use_celery=True,
        celery_rollout_percentage=100,
        celery_worker_concurrency=CONCURRENCY,
        switchyard_data_dir=services.workdir,
    )
    runtime = Runtime.build(settings)
    upgrade(runtime.engine)  # prepare_database migrates only an embedded (SQLite) store
    runtime.prepare_database()
    runtime.start()
    stack.callback(runtime.stop)
    worker = services.switchyard_worker(
        env={"DATABASE_URL": database_url, "REDIS_URL": broker, "LOG_LEVEL": "INFO"},
        broker_url=broker,
        name=f"celery-switchyard-{store}",
        concurrency=CONCURRENCY,
        pool=POOL,
    )

    def check(completed: int) -> None:
        require_status(
            runtime.engine,
            TaskStatus.COMPLETED,
            completed,
            what=f"celery backend ({store})",
            backend=BackendName.CELERY,
        )

    return _rounds(
        ctx,
        f"switchyard celery backend ({store})",
        worker,
        _client(broker, stack),
        lambda: runtime.dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="bench")),
        check,
    )


def _plain(
    ctx: BenchContext, services: Services, stack: ExitStack, store: Store, *, tracked: bool
) -> _Setup:
    broker = services.redis_url()
    name = f"celery-tracked-{store}" if tracked else f"celery-plain-{store}"
    results: Engine | None = None
    result_backend: str | None = None
    if tracked:
        # Celery's database backend takes a SQLAlchemy URL after "db+" (postgresql+psycopg too)
        # and creates its tables itself; the count after each round reads them.
        database_url = services.database_url(store, "celery_results")
        result_backend = f"db+{database_url}"
        results = make_engine(database_url)
        stack.callback(results.dispose)
    worker = services.celery_worker(
        app=f"benchmarks.plain_celery_app:{'tracked_app' if tracked else 'app'}",
        broker_url=broker,
        name=name,
        concurrency=CONCURRENCY,
        pool=POOL,
        result_backend=result_backend,
    )
    publisher = make_app(f"{name}-publisher", tracked=tracked, broker_url=broker)
    stack.callback(publisher.close)

    def check(completed: int) -> None:
        if results is not None:
            _require_results(results, completed)

    label = "celery + database results" if tracked else "plain celery"
    return _rounds(
        ctx,
        f"{label} ({store})",
        worker,
        _client(broker, stack),
        lambda: publisher.send_task(NOOP, queue=QUEUE),
        check,
    )


def _durable(ctx: BenchContext, services: Services, stack: ExitStack, store: Store) -> _Setup:
    broker = services.redis_url()
    database_url = services.database_url(store, "celery_durable")
    # Switchyard's schema, migrated as Switchyard migrates it; this engine only sets it up and
    # counts the rows after each round, the measured path never touches it.
    engine = make_engine(database_url)
    stack.callback(engine.dispose)
    upgrade(engine)
    name = f"celery-durable-{store}"
    with _environment(DATABASE_ENV, database_url):  # celery_worker passes our environment on
        worker = services.celery_worker(
            app="benchmarks.durable_celery_app:app",
            broker_url=broker,
            name=name,
            concurrency=CONCURRENCY,
            pool=POOL,
        )
    publisher = Publisher(database_url=database_url, broker_url=broker)
    stack.callback(publisher.close)

    def check(completed: int) -> None:
        require_status(
            engine,
            TaskStatus.COMPLETED,
            completed,
            what=f"hand-written durable celery ({store})",
            backend=BackendName.CELERY,
        )

    return _rounds(
        ctx,
        f"hand-written durable celery ({store})",
        worker,
        _client(broker, stack),
        publisher.submit,
        check,
    )


def _rounds(
    ctx: BenchContext,
    label: str,
    worker: WorkerProcess,
    client: redis.Redis,
    submit: Callable[[], object],
    check: Callable[[int], None],
) -> _Setup:
    """A setup's rounds: `ctx.sizes.celery_tasks` calls of `submit`, timed until the broker
    holds none of them, then `check`ed against how many tasks the rounds made so far; the CPU
    time of the publisher and of `worker` counted per task."""
    tasks, completed = ctx.sizes.celery_tasks, 0
    cpu = CpuPerTask(psutil.Process(worker.process.pid))

    def publish() -> None:
        for _ in range(tasks):
            submit()

    def measure() -> float:
        nonlocal completed
        started = time.perf_counter()
        elapsed = cpu.round(tasks, publish, lambda: wait_drained(client, QUEUE)) - started
        completed += tasks
        check(completed)
        return tasks / elapsed

    return _Setup(Variant(label, measure), cpu)


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


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` in this process's environment while a worker is spawned."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def _require_results(engine: Engine, expected: int) -> None:
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
        ).scalar_one()
    if found != expected:
        raise RuntimeError(f"database result backend: expected {expected} results, found {found}")
