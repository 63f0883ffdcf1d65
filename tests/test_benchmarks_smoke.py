"""`python -m benchmarks --quick` runs end to end and prints its table; no figure is checked."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.workers import REPO_ROOT

QUICK_RUN_SECONDS = 420
"""About two minutes on an idle 2-core machine: both stores, PostgreSQL started by the run."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(QUICK_RUN_SECONDS + 30)]
ROWS = (
    "floor",
    "Routing decision",
    "Thread backend",
    "Celery backend",
    "CPU per Celery task",
    "POST /tasks",
    "Rollout change",
    "Rollback",
    "Rollback under load",
    "RSS",
    "Soak",
)
STORES = ("SQLite", "PostgreSQL")


def test_the_benchmark_command_runs_on_tiny_sizes_and_prints_every_comparison() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=QUICK_RUN_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Switchyard benchmarks" in done.stdout
    missing = [row for row in ROWS if row not in done.stdout]
    assert not missing, f"rows missing from the table: {missing}\n{done.stdout}"
    for store in STORES:  # the store-dependent parts run on each
        assert done.stdout.count(store) >= 4, f"too few {store} rows:\n{done.stdout}"
    assert "machine:" in done.stdout
    assert "date:" in done.stdout
