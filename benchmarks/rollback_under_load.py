"""Issue 11, part 6: a rollback under a steady stream at 50 % through two API processes.

Redis, one worker and two `switchyard serve` on one SQLite file; each round is one
`run_drill` (the code of `switchyard drill`): probes at a steady rate, round-robin over both
processes, the rollback through the first. Per process: how many tasks still went to Celery
after the rollback's response, and how long after the rollback request the last one did; and
whether every task completed, none lost, none run twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import replace

import httpx

from api.cli.drill import run_drill
from api.cli.drill_report import DrillPlan, DrillReport
from benchmarks.api_load import authorization_headers
from benchmarks.context import BenchContext, Sizes
from benchmarks.runner import Row, Summary

SERVERS = 2
PERCENTAGE = 50.0
RATE = 20.0
"""Probes a second, shared by the two processes."""
ROUTING_BOUND_MS = 2_000.0
"""rollout.md's propagation promise."""
WORKER_CONCURRENCY = 2
PART = "11.6"
"""Issue 11, part 6 (the memory rows' "6a"/"6b" are another issue's)."""
REQUEST_TIMEOUT = 10.0


def run(ctx: BenchContext) -> list[Row]:
    """Start the stack, run one drill a round, and turn the reports into rows."""
    services, workdir = ctx.services, ctx.services.workdir
    key_file = workdir / "rollback-operator.key"
    broker = services.redis_url()
    database_url = f"sqlite:///{workdir / 'rollback.db'}"
    env = {
        "DATABASE_URL": database_url,
        "USE_CELERY": "true",
        "CELERY_ROLLOUT_PERCENTAGE": "0",
        "REDIS_URL": broker,
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        "SWITCHYARD_DATA_DIR": str(workdir),
        "OPERATOR_KEY_FILE": str(key_file),
        "ROLLOUT_CHANGE_LIMIT": "1000",  # two changes a round; the default 10 would refuse some
        **ctx.server_env,
    }
    # One after another: the first migrates the database and writes the operator key.
    urls = tuple(
        services.http_server(
            [sys.executable, "-m", "api.cli", "serve"], name=f"rollback-api-{n}", env=env
        )
        for n in range(SERVERS)
    )
    services.switchyard_worker(
        env=env,
        broker_url=broker,
        name="rollback-worker",
        concurrency=WORKER_CONCURRENCY,
        pool="prefork",
    )
    before, after = _stream_seconds(ctx.sizes)
    plan = DrillPlan(urls=urls, percentage=PERCENTAGE, rate=RATE, before=before, after=after)
    reports = []
    headers = authorization_headers(ctx.authorization, key_file)
    with httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT) as client:
        for number in range(ctx.sizes.rounds):
            report = run_drill(client, plan)
            reports.append(report)
            ctx.console.log(f"  round {number + 1}/{ctx.sizes.rounds}: {_line(report)}")
    return rows(reports, before=before, after=after)


def _stream_seconds(sizes: Sizes) -> tuple[float, float]:
    """Seconds of stream before and after the rollback: short for the quick preset."""
    return (1.5, 2.5) if sizes == Sizes.preset("quick") else (3.0, 4.0)


def rows(reports: Sequence[DrillReport], *, before: float, after: float) -> list[Row]:
    """Per process: tasks to Celery after the rollback and the time until the last; then
    completeness over every round. The setup is described once, on the first row."""
    first = reports[0]
    found: list[Row] = []
    for index in range(len(first.urls)):
        name = "process 1 (rolled back here)" if index == 0 else f"process {index + 1}"
        per_round = [report.processes[index] for report in reports]
        late = Summary.of([float(p.celery_after_rollback) for p in per_round])
        until = Summary.of([p.last_celery_seconds * 1e3 for p in per_round])
        found.append(
            Row(
                part=PART,
                what=f"Rollback under load, {name}: tasks routed to Celery after the "
                "rollback's response",
                unit="tasks",
                ours=late,
                # The process that answers the rollback routes by it at once (rollout.md).
                target="0, every round" if index == 0 else "",
                met=late.high == 0 if index == 0 else None,
            )
        )
        found.append(
            Row(
                part=PART,
                what=f"Rollback under load, {name}: rollback request until no new task "
                "went to Celery",
                unit="ms",
                ours=until,
                target=f"≤ {ROUTING_BOUND_MS:,.0f} ms, every round",
                met=until.high <= ROUTING_BOUND_MS,
            )
        )
    setup = (
        f"{PERCENTAGE:g} % to Celery, {RATE:g} tasks/s round-robin over {SERVERS} API "
        f"processes and a worker; {before:g} s of stream, rollback through process 1, "
        f"{after:g} s more; {len(reports)} rounds of {first.sent} tasks"
    )
    found[0] = replace(found[0], notes=[setup])
    found.append(_completeness(reports))
    return found


def _completeness(reports: Sequence[DrillReport]) -> Row:
    """Tasks not completed (lost), run twice or refused, summed per round: 0 every round."""
    values = [float(r.lost + r.run_twice + r.refused) for r in reports]
    ours = Summary.of(values)
    completed = sum(r.completed for r in reports)
    sent = sum(r.sent for r in reports)
    return Row(
        part=PART,
        what="Rollback under load: tasks lost, run twice or refused",
        unit="tasks",
        ours=ours,
        target="0, every round",
        met=ours.high == 0,
        notes=[f"{completed} of {sent} tasks completed"],
    )


def _line(report: DrillReport) -> str:
    per_process = ", ".join(
        f"{p.celery_after_rollback} to Celery after, last at {p.last_celery_seconds:.2f} s"
        for p in report.processes
    )
    return (
        f"{report.sent} tasks, {report.completed} completed, {report.lost} lost, "
        f"{report.run_twice} run twice; {per_process}"
    )
