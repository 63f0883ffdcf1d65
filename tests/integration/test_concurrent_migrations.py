"""An API and a worker started together on a fresh database both migrate it; neither may fail."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from pathlib import Path

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from execution import database
from execution.database import make_engine
from tests.integration.conftest import fresh_database_url

pytestmark = pytest.mark.integration

PROCESSES = 4
# The race is narrow (one process reads the version table while another creates tables): one
# round without the lock fails only now and then, so each test runs several.
ROUNDS = 6


def _upgrade_after(barrier: multiprocessing.synchronize.Barrier, urls: list[str]) -> None:
    for url in urls:
        engine = make_engine(url)
        barrier.wait(timeout=30)
        database.upgrade(engine)
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_processes_migrating_one_fresh_database_at_once_all_succeed(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    urls = []
    for round_no in range(ROUNDS):
        (tmp_path / str(round_no)).mkdir()
        urls.append(fresh_database_url(kind, request, tmp_path / str(round_no)))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    processes = [
        context.Process(target=_upgrade_after, args=(barrier, urls)) for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    assert [process.exitcode for process in processes] == [0] * PROCESSES
    for url in urls:
        engine = make_engine(url)
        head = ScriptDirectory.from_config(database.alembic_config(engine)).get_current_head()
        with engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == head
        engine.dispose()
