"""Part 2: noop tasks from submit to COMPLETED on the thread backend vs a hand-written pool."""

from __future__ import annotations

import time
from concurrent.futures import wait
from contextlib import ExitStack

from api.runtime import Runtime
from api.settings import Settings
from backends.base import TaskBackend
from benchmarks.context import BenchContext, per_task_micros
from benchmarks.handwritten_pool import HandWrittenPool
from benchmarks.rows import count_status, require_status
from benchmarks.runner import Row, Variant, alternate, compared_row
from dispatch.dispatcher import NewTask
from execution import database
from execution.status import TaskStatus

TARGET_RATIO = 0.8
POLL_SECONDS = 0.001


def run(ctx: BenchContext) -> list[Row]:
    """Same driver loop, same worker count, same engine settings, alternated round by round."""
    with ExitStack() as stack:
        ours, workers = _switchyard(ctx, stack)
        baseline = _handwritten(ctx, stack, workers)
        figures = alternate([ours, baseline], rounds=ctx.sizes.rounds, console=ctx.console)
    row = compared_row(
        part="2",
        what=f"Thread backend, noop end to end ({workers} threads, SQLite)",
        unit="tasks/s",
        ours=figures[ours.label],
        baseline_label="ThreadPoolExecutor + same status writes",
        baseline=figures[baseline.label],
        target=f"≥ {TARGET_RATIO}x",
        meets=lambda _, ratio: ratio.median >= TARGET_RATIO,
    )
    if ctx.floors and row.ours and row.baseline:
        row.notes.append(
            f"per task: {ctx.floors.in_commits(per_task_micros(row.ours))} vs "
            f"{ctx.floors.in_commits(per_task_micros(row.baseline))}"
        )
    return [row]


def _switchyard(ctx: BenchContext, stack: ExitStack) -> tuple[Variant, int]:
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{ctx.services.workdir / 'thread-switchyard.db'}",
        use_celery=False,
        background_queue_size=10_000_000,
        switchyard_data_dir=ctx.services.workdir,
        shutdown_timeout=30,
    )
    runtime = Runtime.build(settings)
    runtime.prepare_database()
    runtime.start()
    stack.callback(runtime.stop)
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

    return Variant("switchyard thread backend", measure), settings.background_workers


def _wait_until_done(backend: TaskBackend, runtime: Runtime, expected: int) -> None:
    # The backend's own counters are free to read; the row count confirms once they say idle.
    while True:
        detail = backend.health().counts
        idle = detail["waiting"] == 0 and detail["running"] == 0
        if idle and count_status(runtime.engine, TaskStatus.COMPLETED) >= expected:
            return
        time.sleep(POLL_SECONDS)


def _handwritten(ctx: BenchContext, stack: ExitStack, workers: int) -> Variant:
    engine = database.make_engine(f"sqlite:///{ctx.services.workdir / 'thread-handwritten.db'}")
    database.upgrade(engine)
    stack.callback(engine.dispose)
    pool = HandWrittenPool(engine=engine, workers=workers)
    stack.callback(pool.shutdown)
    tasks, completed = ctx.sizes.thread_tasks, 0

    def measure() -> float:
        nonlocal completed
        started = time.perf_counter()
        futures = [pool.submit({}) for _ in range(tasks)]
        wait(futures)
        elapsed = time.perf_counter() - started
        for future in futures:
            future.result()  # a failed write fails the run instead of flattering the baseline
        completed += tasks
        require_status(engine, TaskStatus.COMPLETED, completed, what="hand-written pool")
        return tasks / elapsed

    return Variant("hand-written ThreadPoolExecutor", measure)
