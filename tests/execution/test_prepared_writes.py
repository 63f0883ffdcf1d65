"""The store's prepared writes: the rows the Core path would write, on one SQLite connection
per process, and never on a connection a forked process inherited."""

from __future__ import annotations

import os

from sqlalchemy import Engine, event, select

from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import claim, queued_task


def _stored(engine: Engine, task_id: str) -> TaskRecord:
    """The row as SQLAlchemy's Core reads it back, with its own result processing."""
    with engine.connect() as conn:
        row = conn.execute(select(TASKS).where(TASKS.c.task_id == task_id)).one()
    return TaskRecord.from_row(row._mapping)


def test_what_a_write_returns_is_what_the_core_path_reads_back(
    store: TaskStore, engine: Engine
) -> None:
    created = queued_task(store, payload={"rows": [1, 2.5, "x", None], "nested": {"a": True}})
    assert _stored(engine, created.task_id) == created

    claimed = claim(store, created.task_id)
    assert claimed is not None
    assert _stored(engine, created.task_id) == claimed

    assert store.complete(created.task_id, attempt=1, result={"ok": "é ✓", "n": 10**12})
    done = store.get(created.task_id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED
    assert _stored(engine, created.task_id) == done
    assert [e.seq for e in store.events(created.task_id)] == [1, 2, 3, 4]


def test_sqlite_writes_share_one_connection_instead_of_a_checkout_each(
    store: TaskStore, engine: Engine
) -> None:
    queued_task(store)  # the first write opens it
    checkouts: list[object] = []
    event.listen(engine.pool, "checkout", lambda *args: checkouts.append(args))

    for _ in range(5):
        task = queued_task(store)
        assert claim(store, task.task_id) is not None

    assert checkouts == []


def test_a_forked_process_writes_on_its_own_connection_and_leaves_the_parent_s_open(
    store: TaskStore, engine: Engine
) -> None:
    before = queued_task(store)
    checkouts: list[object] = []
    event.listen(engine.pool, "checkout", lambda *args: checkouts.append(args))
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            claimed = claim(store, before.task_id) is not None
            code = 0 if claimed and len(checkouts) == 1 else 2 if not claimed else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "0: claimed on a connection of its own"

    # The parent's connection still works: the child neither used nor closed it.
    after = queued_task(store)
    assert claim(store, after.task_id) is not None
    assert _stored(engine, before.task_id).attempts == 1
