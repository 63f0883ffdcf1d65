"""The rollout's concurrency rules on a real PostgreSQL, where writers do not queue on one file
lock as SQLite's do: separate engines stand for separate API processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import TypeVar

import pytest
from sqlalchemy import Engine

from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import (
    ChangeLimit,
    EnvironmentApplied,
    EnvironmentOutcome,
    RolloutConflict,
    RolloutRateLimited,
    RolloutStore,
)
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import queued_task
from tests.integration.conftest import postgres_engines
from tests.integration.servers import PostgresServer

pytestmark = pytest.mark.integration

PROCESSES = 6
T = TypeVar("T")


@pytest.fixture
def engines(postgres_server: PostgresServer) -> Iterator[list[Engine]]:
    """A fresh migrated database, and one engine per simulated API process."""
    with postgres_engines(postgres_server, PROCESSES) as engines:
        yield engines


def at_once(calls: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run every call in its own thread, released together; results or exceptions."""
    start = threading.Barrier(len(calls))
    results: list[T | BaseException] = [RuntimeError("not run")] * len(calls)

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = calls[index]()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_processes_starting_together_with_new_values_adopt_them_once(
    engines: list[Engine],
) -> None:
    stores = [RolloutStore(engine) for engine in engines]
    stores[0].apply_environment(percentage=5, salt="s")
    applied = at_once(
        [partial(RolloutStore.apply_environment, s, percentage=50, salt="s") for s in stores]
    )
    results = [r.outcome if isinstance(r, EnvironmentApplied) else r for r in applied]
    assert sorted(map(str, results)) == sorted(
        [EnvironmentOutcome.ADOPTED] + [EnvironmentOutcome.UNCHANGED] * (PROCESSES - 1)
    )
    state = stores[0].load()
    assert state is not None
    assert (state.percentage, state.version) == (50, 2)


def test_the_change_limit_holds_across_processes_changing_at_once(
    engines: list[Engine],
) -> None:
    stores = [RolloutStore(engine) for engine in engines]
    stores[0].apply_environment(percentage=0, salt="s")
    limit = ChangeLimit(changes=2, window_seconds=600)

    def change(store: RolloutStore, percentage: float) -> int:
        for _ in range(20):  # a lost compare-and-set is re-read and tried again, as a CLI would
            try:
                return store.change(
                    lambda s: (replace(s, percentage=percentage), None),
                    action=RolloutAction.SET,
                    actor="ops",
                    reason="race",
                    expected_version=None,
                    key_id="key-1",
                    limit=limit,
                ).version
            except RolloutConflict:
                continue
        raise AssertionError("never got a turn")

    results = at_once([partial(change, s, i + 1) for i, s in enumerate(stores)])
    accepted = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, RolloutRateLimited)]
    assert (len(accepted), len(refused)) == (2, PROCESSES - 2), results
    assert all(r.retry_after > 590 for r in refused)


def test_a_reclaim_moves_every_queued_celery_task_once(engines: list[Engine]) -> None:
    tasks = TaskStore(engines[0])
    waiting = {queued_task(tasks, backend="celery").task_id for _ in range(40)}
    stores = [TaskStore(engine) for engine in engines[:3]]
    results = at_once(
        [
            partial(
                TaskStore.move_queued, s, from_backend="celery", to_backend="thread", reason="r"
            )
            for s in stores
        ]
    )
    moved = [record.task_id for batch in results if isinstance(batch, list) for record in batch]
    assert sorted(moved) == sorted(waiting)  # each exactly once, whoever moved it
    assert {tasks.get(t).backend for t in waiting} == {"thread"}  # type: ignore[union-attr]
    assert {tasks.get(t).status for t in waiting} == {TaskStatus.QUEUED}  # type: ignore[union-attr]
