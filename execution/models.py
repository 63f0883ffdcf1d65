"""How records are stored: the declarative base, UTC times, and tables derived from records.

Every room declares its own tables on `Base` (execution: tasks and their events; dispatch: the
rollout; api: keys); migrations/ holds the one Alembic history of them all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, get_args, get_type_hints

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.schema import SchemaItem
from sqlalchemy.types import TypeEngine


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database; SQLite would otherwise hand back naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The one clock every status write uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with the naming convention Alembic needs for stable constraint names."""

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


Base.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


@dataclass(frozen=True, slots=True)
class Stored:
    """How a record's field is stored: `Annotated[int | None, Stored(Integer, index=True)]`.

    Nullable follows the field's type (`X | None`) unless given, which `Any` needs.
    """

    type: TypeEngine[Any] | type[TypeEngine[Any]]
    primary_key: bool = False
    index: bool = False
    nullable: bool | None = None


def table_of(record: type[Any], name: str, *extra: SchemaItem) -> Table:
    """The table whose columns are `record`'s fields, in order, as their `Stored` says."""
    hints = get_type_hints(record, include_extras=True)
    columns: list[SchemaItem] = []
    for field in fields(record):
        python_type, *metadata = get_args(hints[field.name])
        stored = next(item for item in metadata if isinstance(item, Stored))
        nullable = stored.nullable
        if nullable is None:
            nullable = type(None) in get_args(python_type)
        columns.append(
            Column(
                field.name,
                stored.type,
                primary_key=stored.primary_key,
                index=stored.index,
                nullable=nullable and not stored.primary_key,
            )
        )
    return Table(name, Base.metadata, *columns, *extra)


class TaskEventRow(Base):
    """One status change or progress step of a task, in order: the audit of how it ran."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("tasks.task_id", ondelete="CASCADE")
    )  # (task_id, seq) is unique, and that index serves lookups by task_id
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[int] = mapped_column(Integer)
    message: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("task_id", "seq"),)
