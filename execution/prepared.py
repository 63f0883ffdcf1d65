"""The store's hot writes, compiled once and run on the bare DB-API connection.

A task's insert, claim and completion are a handful of fixed statements run thousands of times
a second. For each, SQLAlchemy's Core spends several times what the database itself needs:
an execution context, parameter processing, a result object, a connection wrapper. A
`Prepared` statement is the SQL SQLAlchemy compiled for the engine's dialect, run with the
bind and result processors of that same dialect, on a connection the engine's pool opened (with
the same PRAGMAs and adapters): the row written is the row the Core path would write, for less.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.sql.expression import Executable
from sqlalchemy.sql.type_api import TypeEngine

Processor = Any
"""A dialect's value converter (`TypeEngine.bind_processor` / `result_processor`), or None."""


class Prepared:
    """One statement, compiled for one dialect."""

    __slots__ = (
        "_result_processors",
        "columns",
        "defaults",
        "dialect",
        "names",
        "positional",
        "processors",
        "result_types",
        "sql",
    )

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        types = {name: bind.type for bind, name in compiled.bind_names.items()}
        expanding = [name for bind, name in compiled.bind_names.items() if bind.expanding]
        if expanding:  # rendered per execution by SQLAlchemy; spell IN (a, b) as a = ... OR
            raise ValueError(f"a prepared statement takes no IN-list parameter: {expanding}")
        self.dialect = dialect
        self.sql: str = compiled.string
        self.positional = bool(compiled.positional)
        self.names: tuple[str, ...] = (
            tuple(compiled.positiontup) if self.positional else tuple(types)
        )
        """The bound parameters, in the order a positional driver takes them."""
        self.defaults: dict[str, Any] = dict(compiled.params)
        """Values the statement binds itself (its literals); the caller's go over them."""
        self.processors: tuple[Processor, ...] = tuple(
            types[name].dialect_impl(dialect).bind_processor(dialect) for name in self.names
        )
        returning = getattr(statement, "_returning", ()) or ()
        self.columns: tuple[str, ...] = tuple(column.key for column in returning)
        """What a RETURNING statement returns, in order."""
        self.result_types: tuple[TypeEngine[Any], ...] = tuple(c.type for c in returning)
        self._result_processors: tuple[Processor, ...] | None = None

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        """The driver's parameters for `values` (bind name to value), processed."""
        given = {**self.defaults, **values}
        processed = [
            value if process is None else process(value)
            for value, process in zip(
                [given[name] for name in self.names], self.processors, strict=True
            )
        ]
        return processed if self.positional else dict(zip(self.names, processed, strict=True))

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> None:
        """Run it once."""
        parameters = self.parameters(values)
        try:
            cursor.execute(self.sql, parameters)
        except self.dialect.loaded_dbapi.Error as exc:
            raise translated(exc, self.dialect, cursor, self.sql, parameters) from exc

    def execute_many(self, cursor: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run it once per entry of `rows` (no RETURNING)."""
        parameters = [self.parameters(values) for values in rows]
        try:
            cursor.executemany(self.sql, parameters)
        except self.dialect.loaded_dbapi.Error as exc:
            raise translated(exc, self.dialect, cursor, self.sql, parameters) from exc

    def fetch_one(self, cursor: Any) -> dict[str, Any] | None:
        """The row a RETURNING statement returned, column name to value; None if none."""
        row = cursor.fetchone()
        if row is None:
            return None
        processors = self._result_processors
        if processors is None:  # they need the driver's type codes, which come with a row
            processors = self._result_processors = tuple(
                type_.dialect_impl(self.dialect).result_processor(self.dialect, entry[1])
                for type_, entry in zip(self.result_types, cursor.description, strict=True)
            )
        return {
            name: value if process is None else process(value)
            for name, value, process in zip(self.columns, row, processors, strict=True)
        }


class PreparedStatements:
    """An engine's prepared statements (compiled on first use), and its write transactions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._compiled: dict[Executable, Prepared] = {}
        # SQLite lets one writer in at a time and makes the others poll, sleeping 1 ms or more
        # between tries; threads of this process take turns on a lock instead, which hands the
        # database over at once. Other processes still meet SQLite's own wait. Since the turn
        # is held anyway, those writes share one connection: no pool checkout per transaction.
        self.serial = engine.dialect.name == "sqlite"
        self.write_turn: AbstractContextManager[Any] = (
            threading.Lock() if self.serial else nullcontext()
        )
        """Held by every write of this process to this database, prepared or not."""
        self._writer: Any = None
        self._writer_pid = 0

    def __getitem__(self, statement: Executable) -> Prepared:
        # Statements are module constants or cached per shape, never changed once built: each
        # is compiled once, keyed by the object itself.
        prepared = self._compiled.get(statement)
        if prepared is None:
            prepared = self._compiled[statement] = Prepared(statement, self.dialect)
        return prepared

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A DB-API cursor in one write transaction, in this process's write turn: committed
        when the block ends, rolled back if it raises. The driver's errors come out as
        SQLAlchemy's (`IntegrityError`...), as from the Core path, and a connection the
        database dropped is discarded, not used again."""
        with self.write_turn:
            connection = self._serial_writer() if self.serial else self.engine.raw_connection()
            cursor = connection.cursor()
            try:
                yield cursor
                try:
                    connection.commit()
                except self.dialect.loaded_dbapi.Error as exc:
                    raise translated(exc, self.dialect, cursor, "COMMIT", None) from exc
            except BaseException as exc:
                if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    self._discard(connection, exc)
                else:
                    try:
                        connection.rollback()
                    except self.dialect.loaded_dbapi.Error as failed:
                        self._discard(connection, failed)
                raise
            finally:
                with suppress(self.dialect.loaded_dbapi.Error):
                    cursor.close()
                if not self.serial:
                    connection.close()  # back to the pool

    def _serial_writer(self) -> Any:
        """This process's SQLite write connection, opened through the pool (its PRAGMAs) and
        kept out of it. A forked child opens its own: the parent's is never used there, nor
        closed: SQLite's close may checkpoint and remove files the parent still uses."""
        if self._writer is None or self._writer_pid != os.getpid():
            if self._writer is not None:
                _INHERITED.append(self._writer)
            self._writer = self.engine.raw_connection()
            self._writer.detach()
            self._writer_pid = os.getpid()
        return self._writer

    def _discard(self, connection: Any, error: BaseException) -> None:
        if connection is self._writer:
            self._writer = None
            with suppress(self.dialect.loaded_dbapi.Error):
                connection.close()
        else:
            connection.invalidate(error)


_INHERITED: list[Any] = []
"""Write connections a forked process inherited: kept referenced, so never closed there."""


def translated(
    exc: Any, dialect: Dialect, cursor: Any, sql: str, parameters: Any
) -> StatementError:
    """The SQLAlchemy exception the Core path would have raised for `exc`, an error of the
    driver's own (`dialect.loaded_dbapi.Error`)."""
    gone = dialect.is_disconnect(exc, getattr(cursor, "connection", None), cursor)
    error: StatementError = DBAPIError.instance(
        sql,
        parameters,
        exc,
        dialect.loaded_dbapi.Error,
        connection_invalidated=gone,
        dialect=dialect,
    )
    return error
