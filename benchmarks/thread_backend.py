"""Part 2: noop tasks from submit to COMPLETED on the thread backend, on each status store.

Three variants alternate round by round, each on a fresh database of its own in the store: the
thread backend (Runtime, dispatcher.submit), the hand-written SQLAlchemy pool
(benchmarks/handwritten_pool.py) and the floor, the backend's exact transactions on the bare
driver (benchmarks/stdlib_pool.py). Everything a store's variants start is stopped before the
next store's start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import ExitStack
from dataclasses import dataclass
from threading import Lock
from typing import Any

from sqlalchemy import Engine, event, text

from api.runtime import Runtime
from api.settings import Settings
from backends.base import TaskBackend
from benchmarks.context import BenchContext, per_task_micros
from benchmarks.handwritten_pool import HandWrittenPool
from benchmarks.rows import count_status, require_status
from benchmarks.runner import Row, Variant, alternate, compared_row, ratio_at_least
from benchmarks.services import STORE_NAMES, Store
from benchmarks.stdlib_pool import StdlibPool
from dispatch.dispatcher import NewTask
from execution import database
from execution.status import TaskStatus

POOL_TARGET = 1.0
FLOOR_TARGET = 0.5
POLL_SECONDS = 0.001
POOL_LABEL = "hand-written SQLAlchemy ThreadPoolExecutor, same writes"
FLOOR_LABELS: dict[Store, str] = {
    "sqlite": "stdlib sqlite3 pool, same transactions",
    "postgresql": "psycopg pool, same transactions",
}


@dataclass(frozen=True, slots=True)
class _Measured:
    """A variant, and the commits per task it has made over all its rounds so far."""

    variant: Variant
    commits_per_task: Callable[[], float]


def run(ctx: BenchContext) -> list[Row]:
    """Per store: same driver loop, same worker count, same schema, alternated round by round."""
    rows: list[Row] = []
    for store in ctx.stores:
        rows.extend(_on(ctx, store))
    return rows


def _on(ctx: BenchContext, store: Store) -> list[Row]:
    with ExitStack() as stack:  # closed before the next store: no thread or connection left
        ours, workers = _switchyard(ctx, stack, store)
        pool = _handwritten(ctx, stack, store, workers)
        floor = _stdlib(ctx, stack, store, workers)
        measured = (ours, pool, floor)
        figures = alternate(
            [each.variant for each in measured], rounds=ctx.sizes.rounds, console=ctx.console
        )
        commits = [each.commits_per_task() for each in measured]
    what = f"Thread backend, noop end to end ({workers} threads, {STORE_NAMES[store]})"
    ours_figures = figures[ours.variant.label]
    rows = []
    for baseline, label, target, baseline_commits in (
        (pool, POOL_LABEL, POOL_TARGET, commits[1]),
        (floor, FLOOR_LABELS[store], FLOOR_TARGET, commits[2]),
    ):
        row = compared_row(
            part="2",
            what=what,
            unit="tasks/s",
            ours=ours_figures,
            baseline_label=label,
            baseline=figures[baseline.variant.label],
            target=f"≥ {target}x",
            meets=ratio_at_least(target),
        )
        row.notes.extend(_notes(ctx, store, row, commits[0], baseline_commits))
        rows.append(row)
    return rows


def _notes(
    ctx: BenchContext, store: Store, row: Row, ours_commits: float, baseline_commits: float
) -> list[str]:
    notes = []
    if ctx.floors and row.ours and row.baseline:
        notes.append(
            f"per task: {ctx.floors.in_commits(per_task_micros(row.ours), store)} vs "
            f"{ctx.floors.in_commits(per_task_micros(row.baseline), store)}"
        )
    notes.append(f"commits per task (counted): {ours_commits:.2f} vs {baseline_commits:.2f}")
    return notes


def _switchyard(ctx: BenchContext, stack: ExitStack, store: Store) -> tuple[_Measured, int]:
    settings = Settings(
        _env_file=None,
        database_url=ctx.services.database_url(store, "thread_switchyard"),
        use_celery=False,
        background_queue_size=10_000_000,
        switchyard_data_dir=ctx.services.workdir,
        shutdown_timeout=30,
    )
    runtime = Runtime.build(settings)
    stack.callback(runtime.engine.dispose)  # also when the runtime never starts
    database.upgrade(runtime.engine)  # an external database is not migrated by the runtime
    runtime.prepare_database()
    runtime.start()
    stack.callback(runtime.stop)
    commits = _count_commits(runtime.engine, stack)  # from here: the tasks' commits only
    backend, tasks = runtime.backends["thread"], ctx.sizes.thread_tasks
    completed = 0

    def measure() -> float:
        nonlocal completed
        started = time.perf_counter()
        for _ in range(tasks):
            runtime.dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="bench"))
        completed += tasks
        _wait_until_done(backend, runtime, completed)
        elapsed = time.perf_counter() - started
        require_status(runtime.engine, TaskStatus.COMPLETED, completed, what="thread backend")
        return tasks / elapsed

    variant = Variant(f"switchyard thread backend ({store})", _counted(measure, commits))
    return _Measured(variant, lambda: commits() / completed), settings.background_workers


def _wait_until_done(backend: TaskBackend, runtime: Runtime, expected: int) -> None:
    # The backend's own counters are free to read; the row count confirms once they say idle.
    while True:
        detail = backend.health().counts
        idle = detail["waiting"] == 0 and detail["running"] == 0
        if idle and count_status(runtime.engine, TaskStatus.COMPLETED) >= expected:
            return
        time.sleep(POLL_SECONDS)


def _handwritten(ctx: BenchContext, stack: ExitStack, store: Store, workers: int) -> _Measured:
    engine = database.make_engine(ctx.services.database_url(store, "thread_handwritten"))
    stack.callback(engine.dispose)
    database.upgrade(engine)
    commits = _count_commits(engine, stack)
    pool = HandWrittenPool(engine=engine, workers=workers)
    stack.callback(pool.shutdown)
    rounds = _PoolRounds(
        ctx.sizes.thread_tasks,
        lambda: pool.submit({}),
        lambda completed: require_status(
            engine, TaskStatus.COMPLETED, completed, what="hand-written pool"
        ),
    )
    variant = Variant(f"hand-written SQLAlchemy pool ({store})", _counted(rounds.measure, commits))
    return _Measured(variant, lambda: commits() / rounds.completed)


def _stdlib(ctx: BenchContext, stack: ExitStack, store: Store, workers: int) -> _Measured:
    url = ctx.services.database_url(store, "thread_stdlib")
    # SQLAlchemy builds the schema and counts the rows after a round; the timed path is bare.
    engine = database.make_engine(url)
    stack.callback(engine.dispose)
    database.upgrade(engine)
    engine.dispose()  # no connection of its own open while the floor runs
    pool = StdlibPool(database_url=url, workers=workers)
    stack.callback(pool.shutdown)

    def check(completed: int) -> None:
        require_status(engine, TaskStatus.COMPLETED, completed, what=FLOOR_LABELS[store])
        engine.dispose()

    rounds = _PoolRounds(ctx.sizes.thread_tasks, lambda: pool.submit({}), check)
    variant = Variant(f"{FLOOR_LABELS[store].split(',')[0]} ({store})", rounds.measure)
    return _Measured(variant, lambda: pool.commits / rounds.completed)


@dataclass
class _PoolRounds:
    """A baseline pool's rounds: `tasks` submitted, timed until every one is done, then
    `check`ed against how many the rounds completed so far."""

    tasks: int
    submit: Callable[[], Future[None]]
    check: Callable[[int], None]
    completed: int = 0

    def measure(self) -> float:
        """One round; tasks per second."""
        started = time.perf_counter()
        futures = [self.submit() for _ in range(self.tasks)]
        wait(futures)
        elapsed = time.perf_counter() - started
        for future in futures:
            future.result()  # a failed write fails the run instead of flattering the baseline
        self.completed += self.tasks
        self.check(self.completed)
        return self.tasks / elapsed


def _count_commits(engine: Engine, stack: ExitStack) -> Callable[[], int]:
    """Count the transactions committed on `engine` from now on, at the driver (the store
    writes on the DB-API connection, past SQLAlchemy's events): SQLite's statement trace, or
    on PostgreSQL the transaction ids the server hands out (every writing transaction takes
    one), counted over `measure` calls only so the other variants' rounds are left out."""
    if engine.dialect.name == "postgresql":
        return _PostgresCommits(engine)
    count = 0
    lock = Lock()

    def committed(statement: str) -> None:
        nonlocal count
        if statement == "COMMIT":
            with lock:
                count += 1

    def trace(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.set_trace_callback(committed)

    event.listen(engine.pool, "checkout", trace)
    stack.callback(event.remove, engine.pool, "checkout", trace)
    return lambda: count


class _PostgresCommits:
    """Writing transactions on the server between `start` and `stop`, summed over rounds."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._count = 0
        self._since: int | None = None

    def start(self) -> None:
        self._since = self._xid()

    def stop(self) -> None:
        if self._since is not None:
            self._count += self._xid() - self._since - 1  # the reading itself takes one
            self._since = None

    def __call__(self) -> int:
        return self._count

    def _xid(self) -> int:
        with self._engine.begin() as conn:
            return int(conn.execute(text("SELECT pg_current_xact_id()::text::bigint")).scalar_one())


def _counted(measure: Callable[[], float], commits: Callable[[], int]) -> Callable[[], float]:
    """`measure`, with the commit counter told when a round starts and ends (PostgreSQL's)."""
    if not isinstance(commits, _PostgresCommits):
        return measure

    def counted() -> float:
        commits.start()
        try:
            return measure()
        finally:
            commits.stop()

    return counted
