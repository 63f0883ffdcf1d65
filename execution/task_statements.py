"""The status store's SQL, built once with bound parameters.

Building and hashing a statement costs SQLAlchemy several times what SQLite needs to run it, and
every task makes several writes: the store executes these prebuilt statements instead.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import Table, Update, bindparam, func, insert, or_, select, update

from execution.models import TaskEventRow
from execution.records import TASK_COLUMNS, TASKS
from execution.status import TaskStatus

EVENTS = cast(Table, TaskEventRow.__table__)


def binds(table: Table, names: Iterable[str], prefix: str = "") -> dict[str, Any]:
    """A bound parameter per column, typed as the column."""
    return {name: bindparam(prefix + name, type_=table.c[name].type) for name in names}


INSERT_TASK = insert(TASKS).values(binds(TASKS, TASK_COLUMNS))
NEXT_SEQ = (
    select(func.coalesce(func.max(EVENTS.c.seq), 0) + 1)
    .where(EVENTS.c.task_id == bindparam("task_id"))
    .scalar_subquery()
)
INSERT_EVENT = insert(EVENTS).values(
    {**binds(EVENTS, ("task_id", "status", "progress", "message", "at")), "seq": NEXT_SEQ}
)
SELECT_TASK = select(TASKS).where(TASKS.c.task_id == bindparam("task_id"))


class AddOne:
    """A transition value meaning "this column plus one", computed by the UPDATE itself."""


ADD_ONE = AddOne()


@functools.cache  # one statement per shape of transition: a handful, fixed by the code
def update_statement(
    from_statuses: tuple[TaskStatus, ...],
    set_columns: tuple[str, ...],
    add_one: tuple[str, ...],
    only_backend: bool,
) -> Update:
    """UPDATE tasks SET <column> = :set_<column> ... WHERE the row may move, RETURNING it."""
    where = [
        TASKS.c.task_id == bindparam("where_task_id"),
        or_(*(TASKS.c.status == status for status in from_statuses)),
    ]
    if only_backend:
        where.append(TASKS.c.backend == bindparam("where_backend"))
    values = binds(TASKS, set_columns, prefix="set_")
    values.update({name: TASKS.c[name] + 1 for name in add_one})
    return update(TASKS).where(*where).values(values).returning(*TASKS.c)
