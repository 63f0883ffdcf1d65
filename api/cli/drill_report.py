"""What a drill plans and what it finds: the probes, the rollback's moments, the figures per
API process, and the report (a table or JSON) with the reasons a drill fails."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from api.cli.console import out, print_table

MAX_LISTED = 20
"""Lost or twice-run probe ids a report lists at most."""


@dataclass(frozen=True, slots=True)
class DrillPlan:
    """What one drill does: where, how hard, for how long, and what it must prove."""

    urls: tuple[str, ...]
    percentage: float = 50.0
    rate: float = 20.0
    before: float = 3.0
    after: float = 4.0
    probe_seconds: float = 0.05
    drain_timeout: float = 60.0
    routing_bound: float = 2.0
    reason: str = "drill"
    senders: int = 4
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one --url")
        if not 0 < self.percentage <= 100:
            raise ValueError("--percentage must be above 0 and at most 100")
        if self.rate <= 0 or self.before <= 0:
            raise ValueError("--rate and --before must be positive")
        # Past the bound the stream must go on, or a process still on Celery would go unseen.
        if self.after <= self.routing_bound:
            raise ValueError("--after must be longer than --routing-bound")


@dataclass(slots=True)
class Probe:
    """One probe's submission; times are time.monotonic() on the drill's host."""

    seq: int
    url: str
    sent_at: float = 0.0
    """When it was first sent: the earliest its routing could be decided."""
    answered_at: float | None = None
    status_code: int = 0
    """0: no HTTP answer at all."""
    task_id: str | None = None
    backend: str | None = None
    detail: str = ""

    @property
    def accepted(self) -> bool:
        """The API took it (201, or 200 for a resent key, or 202)."""
        return self.task_id is not None and 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class RollbackMark:
    """When the rollback request left and its answer came, and what it reclaimed."""

    sent_at: float
    answered_at: float
    reclaimed: int | None
    """Tasks QUEUED on Celery the API moved back to threads; None if it does not say."""


@dataclass(frozen=True, slots=True)
class ProcessFigures:
    """How one API process routed the probes sent to it around the rollback."""

    url: str
    probes: int
    celery_before_rollback: int
    """Routed to Celery, sent before the rollback request: the drill's load on Celery."""
    probes_after_rollback: int
    """Sent after the rollback's response."""
    celery_after_rollback: int
    """Of those, routed to Celery all the same: this process had not heard of the rollback."""
    last_celery_seconds: float
    """Rollback request sent -> answer to the last probe routed to Celery that was sent after
    it (0 if none was): no new task went to Celery past this."""


@dataclass(frozen=True, slots=True)
class DrillReport:
    """Everything a drill found; `problems` says why it failed, if it did."""

    run_id: str
    urls: list[str]
    percentage: float
    rate: float
    sent: int
    accepted: int
    refused: int
    completed: int
    failed: int
    lost: int
    """Accepted and not COMPLETED when the drain ended (the failed ones included)."""
    lost_ids: list[str]
    run_twice: int
    run_twice_ids: list[str]
    reclaimed: int | None
    handed_back: int
    """Routed to Celery, run on threads: moved back by the rollback."""
    processes: list[ProcessFigures]
    last_celery_seconds: float
    drain_seconds: float | None
    """Rollback response -> every probe seen ended; None if the drain timed out."""
    routing_bound: float
    refused_details: list[str]

    @property
    def problems(self) -> list[str]:
        """Why the drill failed: nothing means it passed."""
        found = []
        if self.refused:
            found.append(f"{self.refused} probe(s) not accepted: {self.refused_details[0]}")
        if self.lost:
            found.append(
                f"{self.lost} probe(s) lost (not COMPLETED when the drain ended): "
                + _some(self.lost_ids, self.lost)
            )
        if self.run_twice:
            found.append(
                f"{self.run_twice} probe(s) ran twice: {_some(self.run_twice_ids, self.run_twice)}"
            )
        for process in self.processes:
            if process.probes_after_rollback == 0:
                found.append(f"no probe reached {process.url} after the rollback")
            elif process.last_celery_seconds > self.routing_bound:
                found.append(
                    f"routing did not stop within {self.routing_bound:g} s: {process.url} "
                    f"routed a probe to Celery {process.last_celery_seconds:.2f} s after the "
                    "rollback"
                )
        return found

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able values, with `ok` and `problems`."""
        return {**asdict(self), "ok": not self.problems, "problems": self.problems}

    def to_json(self) -> str:
        """The report as one JSON document."""
        return json.dumps(self.as_dict(), indent=2)


def _some(ids: Sequence[str], total: int, shown: int = 3) -> str:
    more = f" and {total - shown} more" if total > shown else ""
    return ", ".join(ids[:shown]) + more


# -- the figures -------------------------------------------------------------------------------


def summarize(
    plan: DrillPlan,
    probes: Sequence[Probe],
    rollback: RollbackMark,
    records: dict[str, dict[str, Any]],
    drained_at: float | None,
) -> DrillReport:
    """The report, from the submissions, the rollback's times and the probes' final rows."""
    accepted = [p for p in probes if p.accepted]
    refused = [p for p in probes if not p.accepted]
    status = {p.task_id: records.get(p.task_id or "", {}).get("status") for p in accepted}
    lost_ids = [str(task_id) for task_id, s in status.items() if s != "COMPLETED"]
    twice = [
        str(p.task_id) for p in accepted if records.get(str(p.task_id), {}).get("attempts", 0) > 1
    ]
    processes = [
        process_figures(url, [p for p in accepted if p.url == url], rollback) for url in plan.urls
    ]
    sent_times = [p.sent_at for p in probes]
    span = max(sent_times) - min(sent_times) if len(sent_times) > 1 else 0.0
    return DrillReport(
        run_id=plan.run_id,
        urls=list(plan.urls),
        percentage=plan.percentage,
        rate=round((len(probes) - 1) / span, 1) if span else 0.0,
        sent=len(probes),
        accepted=len(accepted),
        refused=len(refused),
        completed=sum(s == "COMPLETED" for s in status.values()),
        failed=sum(s in ("FAILED", "CANCELLED") for s in status.values()),
        lost=len(lost_ids),
        lost_ids=lost_ids[:MAX_LISTED],
        run_twice=len(twice),
        run_twice_ids=twice[:MAX_LISTED],
        reclaimed=rollback.reclaimed,
        handed_back=sum(
            p.backend == "celery" and records.get(str(p.task_id), {}).get("backend") == "thread"
            for p in accepted
        ),
        processes=processes,
        last_celery_seconds=max((p.last_celery_seconds for p in processes), default=0.0),
        drain_seconds=None if drained_at is None else round(drained_at - rollback.answered_at, 3),
        routing_bound=plan.routing_bound,
        refused_details=[f"#{p.seq} {p.url}: {p.status_code} {p.detail}" for p in refused][:5],
    )


def process_figures(url: str, probes: Sequence[Probe], rollback: RollbackMark) -> ProcessFigures:
    """One process's routing around the rollback, from the probes it accepted."""
    on_celery = [p for p in probes if p.backend == "celery"]
    after_request = [p for p in on_celery if p.sent_at >= rollback.sent_at]
    last = max((p.answered_at or p.sent_at for p in after_request), default=rollback.sent_at)
    return ProcessFigures(
        url=url,
        probes=len(probes),
        celery_before_rollback=sum(p.sent_at < rollback.sent_at for p in on_celery),
        probes_after_rollback=sum(p.sent_at >= rollback.answered_at for p in probes),
        celery_after_rollback=sum(p.sent_at >= rollback.answered_at for p in on_celery),
        last_celery_seconds=round(last - rollback.sent_at, 3),
    )


def print_report(report: DrillReport) -> None:
    """The report as two tables: the probes, then routing per API process."""
    table = Table(show_header=False, title=f"drill {report.run_id}", title_justify="left")
    drain = "timed out" if report.drain_seconds is None else f"{report.drain_seconds:.2f} s"
    for name, value in (
        ("probes sent", f"{report.sent} ({report.rate:g}/s, {report.percentage:g} % to Celery)"),
        ("accepted / refused", f"{report.accepted} / {report.refused}"),
        ("completed", str(report.completed)),
        ("failed", str(report.failed)),
        ("lost (not COMPLETED)", str(report.lost)),
        ("run twice", str(report.run_twice)),
        ("reclaimed by the rollback", "n/a" if report.reclaimed is None else str(report.reclaimed)),
        ("routed to Celery, run on threads", str(report.handed_back)),
        ("last probe to Celery after the rollback", f"{report.last_celery_seconds:.2f} s"),
        ("drain (rollback answered -> all ended)", drain),
    ):
        table.add_row(name, value)
    print_table(table)
    routing = Table(
        "API process",
        "probes",
        "to Celery before",
        "after the rollback",
        "to Celery after",
        "last to Celery (s)",
    )
    for n, p in enumerate(report.processes):
        routing.add_row(
            f"{p.url} (rollback)" if n == 0 else p.url,
            str(p.probes),
            str(p.celery_before_rollback),
            str(p.probes_after_rollback),
            str(p.celery_after_rollback),
            f"{p.last_celery_seconds:.2f}",
        )
    print_table(routing)
    for line in report.lost_ids:
        out.print(f"lost: {line}", highlight=False)
