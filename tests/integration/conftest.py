"""Fixtures that start real servers and worker processes; each fails loudly if it cannot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine

from execution import database
from tests.integration.servers import (
    PostgresServer,
    RedisServer,
    ServerUnavailable,
    start_postgres,
    start_redis,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session."""
    try:
        server = start_redis(tmp_path_factory.mktemp("redis"))
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session."""
    try:
        server = start_postgres()
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()


def fresh_database_url(kind: str, request: pytest.FixtureRequest, workdir: Path) -> str:
    """An empty database of `kind` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'switchyard.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@contextmanager
def postgres_engines(server: PostgresServer, count: int) -> Iterator[list[Engine]]:
    """A fresh migrated database on `server`, and `count` engines on it: each stands for a
    separate process, so writers meet PostgreSQL's own locks, not one another's pool."""
    url = server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    engines = [database.make_engine(url) for _ in range(count)]
    database.upgrade(engines[0])
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()
