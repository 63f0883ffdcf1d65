"""Periodic jobs of the deployment that one process at a time runs, whichever it is."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Engine, String, Table, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from execution.models import Base, utcnow


class JobLeaseRow(Base):
    """Who runs a deployment-wide job now and until when; a process takes it only when it is
    free or expired, so every API and worker may try and exactly one runs the job."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    last_run_at: Mapped[datetime | None]


LEASES = cast(Table, JobLeaseRow.__table__)


class JobLeases:
    """Takes, renews and gives back job leases. Each is one conditional write that a single
    process wins, on SQLite (one writer at a time) and on PostgreSQL (the row lock, then the
    condition checked again), so no process needs to know the others."""

    def __init__(self, engine: Engine, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self._clock = clock

    def take_due(self, name: str, *, owner: str, every: float, lease_seconds: float) -> bool:
        """Take `name` for `lease_seconds` if nobody holds it (or their lease expired) and its
        last run is `every` seconds old or more (or it never ran); True: run the job now, then
        `finish`. A process that died holding it is replaced once its lease expires."""
        now = self._clock()
        free_row = {"name": name, "owner": "", "expires_at": now, "last_run_at": None}
        insert = (
            postgresql.insert(LEASES)
            if self.engine.dialect.name == "postgresql"
            else sqlite.insert(LEASES)
        )
        take = (
            update(LEASES)
            .where(
                LEASES.c.name == name,
                or_(LEASES.c.owner == owner, LEASES.c.expires_at <= now),
                or_(
                    LEASES.c.last_run_at.is_(None),
                    LEASES.c.last_run_at <= now - timedelta(seconds=every),
                ),
            )
            .values(owner=owner, expires_at=now + timedelta(seconds=lease_seconds))
        )
        with self.engine.begin() as conn:
            conn.execute(insert.values(free_row).on_conflict_do_nothing(index_elements=["name"]))
            return conn.execute(take).rowcount == 1

    def renew(self, name: str, *, owner: str, lease_seconds: float) -> bool:
        """Keep holding `name` while the job runs; False if another process took it over (the
        lease expired first)."""
        now = self._clock()
        renew = (
            update(LEASES)
            .where(LEASES.c.name == name, LEASES.c.owner == owner)
            .values(expires_at=now + timedelta(seconds=lease_seconds))
        )
        with self.engine.begin() as conn:
            return conn.execute(renew).rowcount == 1

    def finish(self, name: str, *, owner: str, ran: bool) -> None:
        """Give `name` back; with `ran`, the job ran now (the next run is due `every` from now),
        otherwise the next `take_due` may run it at once."""
        now = self._clock()
        values: dict[str, object] = {"expires_at": now}
        if ran:
            values["last_run_at"] = now
        release = (
            update(LEASES).where(LEASES.c.name == name, LEASES.c.owner == owner).values(values)
        )
        with self.engine.begin() as conn:
            conn.execute(release)

    def last_run(self, name: str) -> datetime | None:
        """When `name` last ran to its end, if ever."""
        with self.engine.connect() as conn:
            query = select(LEASES.c.last_run_at).where(LEASES.c.name == name)
            return conn.execute(query).scalar_one_or_none()
