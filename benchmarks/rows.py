"""Reads the benchmarks make of the status store: how many tasks reached a status."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from execution.records import TASKS
from execution.status import TaskStatus


def count_status(engine: Engine, status: TaskStatus, *, backend: str | None = None) -> int:
    """Tasks now in `status` (and recorded for `backend`, if given)."""
    query = select(func.count()).select_from(TASKS).where(TASKS.c.status == status)
    if backend is not None:
        query = query.where(TASKS.c.backend == backend)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def require_status(
    engine: Engine, status: TaskStatus, expected: int, *, what: str, backend: str | None = None
) -> None:
    """Fail the run if the store does not hold `expected` tasks in `status`: no silent miscount."""
    found = count_status(engine, status, backend=backend)
    if found != expected:
        where = f" on {backend}" if backend else ""
        raise RuntimeError(f"{what}: expected {expected} {status} tasks{where}, found {found}")
