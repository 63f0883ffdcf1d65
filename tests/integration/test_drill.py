"""`switchyard drill` against a live stack: two `switchyard serve` processes on one SQLite file
with USE_CELERY=true, a real Redis, and a worker (or none). Each drill streams a few seconds of
probes at 50 %, rolls back through the first process and must lose nothing and run nothing
twice; the rollback-under-load figures (issue 11, part 6) are printed, never asserted on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli.drill import run_drill
from api.cli.drill_report import DrillPlan
from tests.integration.faults import ApiProcess, FaultRig, fault_rig
from tests.integration.workers import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SHORT = ("--before", "1.5", "--after", "2.5", "--rate", "20", "--drain-timeout", "15")
"""A few seconds of stream: enough for probes on both sides of the rollback in each process."""
DRILL_SECONDS = 60


@dataclass
class Stack:
    """The rig and its two API processes; the rollback goes through `apis[0]`."""

    rig: FaultRig
    apis: tuple[ApiProcess, ApiProcess]

    def drill(self, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        """Run `switchyard drill --json` against both processes: the run and its report."""
        urls = [arg for api in self.apis for arg in ("--url", api.url)]
        done = subprocess.run(
            [sys.executable, "-m", "api.cli", "drill", *urls, "--json", *args],
            cwd=self.rig.workdir,
            env={**self.rig.env, "SWITCHYARD_API_KEY": self.rig.token},
            capture_output=True,
            text=True,
            timeout=DRILL_SECONDS,
            check=False,
        )
        try:
            report: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise AssertionError(
                f"no JSON report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                f"{self.rig.log_tails()}"
            ) from None
        print(f"\ndrill {args}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done, report

    def percentage(self) -> float:
        """The stored percentage, read through the first process."""
        with self.apis[0].new_client() as client:
            return float(client.get("/rollout").json()["percentage"])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Redis, one SQLite file, two API processes publishing to Celery; no worker yet."""
    with fault_rig(tmp_path, USE_CELERY="true", CELERY_ROLLOUT_PERCENTAGE="0") as rig:
        yield Stack(rig, (rig.start_api("a"), rig.start_api("b")))


@pytest.fixture
def worker(stack: Stack) -> WorkerProcess:
    """One `switchyard worker` for the stack (stopped with the rig)."""
    return stack.rig.start_worker()


def assert_passed(done: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    """Exit 0 and a clean report, or fail showing both."""
    assert done.returncode == 0, f"{done.stderr}\n{done.stdout}"
    assert report["ok"]
    assert report["problems"] == []
    assert report["accepted"] == report["sent"] == report["completed"] > 0
    assert (report["lost"], report["run_twice"], report["refused"]) == (0, 0, 0)
    for process in report["processes"]:
        assert process["celery_before_rollback"] > 0, process  # Celery had work to give back
        assert process["probes_after_rollback"] > 0, process


def test_the_drill_passes_with_a_live_worker(stack: Stack, worker: WorkerProcess) -> None:
    done, report = stack.drill(*SHORT)

    assert_passed(done, report)
    assert isinstance(report["reclaimed"], int)  # the rollback says what it took back
    assert report["processes"][0]["celery_after_rollback"] == 0  # it routes by its own change
    assert stack.percentage() == 0  # put back where the drill found it


def test_without_a_worker_the_rollback_reclaims_what_waits_on_celery(stack: Stack) -> None:
    # Every probe must complete, also those the second process sends to Celery in the moments
    # before it hears of the rollback: with no worker, nothing but Switchyard can move them.
    done, report = stack.drill(*SHORT)

    assert_passed(done, report)
    assert report["reclaimed"] > 0
    assert report["handed_back"] > 0  # routed to Celery, completed on threads


def test_a_drill_that_loses_probes_exits_1_and_says_so(stack: Stack, worker: WorkerProcess) -> None:
    # Probes that work 3 s cannot all be done when a 0 s drain ends: honestly "lost" to the drill.
    done, report = stack.drill(*SHORT[:4], "--probe-seconds", "3", "--drain-timeout", "0")

    assert done.returncode == 1
    assert report["ok"] is False
    assert report["lost"] > 0
    assert "probe(s) lost (not COMPLETED when the drain ended)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert stack.percentage() == 0


def test_rollback_under_load_at_50_percent_through_two_processes(
    stack: Stack, worker: WorkerProcess
) -> None:
    """Issue 11, part 6: what `make bench` reports, run once; completeness asserted only."""
    urls = tuple(api.url for api in stack.apis)
    plan = DrillPlan(urls=urls, before=1.5, after=2.5, drain_timeout=15)
    headers = {"Authorization": f"Bearer {stack.rig.token}"}
    with httpx.Client(headers=headers, timeout=10) as client:
        report = run_drill(client, plan)

    print(f"\nrollback under load: {report.sent} probes, reclaimed {report.reclaimed}")
    for process in report.processes:
        print(
            f"  {process.url}: {process.celery_after_rollback} of "
            f"{process.probes_after_rollback} probes routed to Celery after the rollback's "
            f"response; none past {process.last_celery_seconds:.2f} s"
        )
    assert report.completed == report.accepted == report.sent > 0
    assert report.lost == 0
    assert report.run_twice == 0
