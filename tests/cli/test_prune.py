"""`switchyard db prune`: old finished tasks deleted by hand, straight on DATABASE_URL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from execution.database import make_engine, upgrade
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.cli.conftest import RunSwitchyard
from tests.execution.aged_tasks import aged, ended


def test_prune_deletes_what_its_dry_run_counted_and_keeps_the_rest(
    switchyard: RunSwitchyard, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    engine = make_engine(url)
    upgrade(engine)
    store = TaskStore(engine)
    old = [aged(store, ended(store, s)) for s in (TaskStatus.COMPLETED, TaskStatus.FAILED)]
    recent = aged(store, ended(store, TaskStatus.FAILED), by=timedelta(days=20))

    counted = switchyard("db", "prune", "--older-than", "30d", "--dry-run", DATABASE_URL=url)
    assert all(store.get(task.task_id) is not None for task in old)
    deleted = switchyard("db", "prune", "--older-than", "30d", DATABASE_URL=url)
    again = switchyard("db", "prune", "--older-than", "30d", DATABASE_URL=url)

    assert counted.returncode == 0, counted.stderr
    assert counted.stdout.startswith("would delete 2 tasks and 8 events finished before ")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith("deleted 2 tasks and 8 events finished before ")
    assert f"UTC in {url}" in deleted.stdout
    assert again.stdout.startswith("deleted 0 tasks and 0 events")
    assert all(store.get(task.task_id) is None for task in old)
    assert store.get(recent.task_id) is not None
    engine.dispose()


def test_prune_refuses_a_bad_window_and_a_database_without_the_schema(
    switchyard: RunSwitchyard, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    bad = switchyard("db", "prune", "--older-than", "a month", DATABASE_URL=url)
    unmigrated = switchyard("db", "prune", "--older-than", "30d", DATABASE_URL=url)

    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr.strip() == (
        "error: --older-than: 'a month' is not a window like 3600, 90s, 15m, 1h or 2d"
    )
    assert unmigrated.returncode == 2
    assert "run `switchyard db upgrade`" in unmigrated.stderr
