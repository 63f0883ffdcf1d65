"""`switchyard drill`: roll back under load against a running deployment, and measure it.

The drill sends its own probe tasks (tool `probe`, tagged with the drill's id) at a steady rate
from one HTTP client, raises the rollout, rolls back mid-stream through the first API process,
streams on, waits for every probe to end, puts the rollout back where it found it, and reports
what a rollback promises: nothing lost, nothing run twice, no new task on Celery past a bound.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any

import httpx
import structlog
import typer

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, api_client
from api.cli.console import err, fail
from api.cli.drill_report import (
    DrillPlan,
    DrillReport,
    Probe,
    RollbackMark,
    print_report,
    summarize,
)
from execution.logs import configure_logging

log = structlog.get_logger(__name__)

PROBE_TOOL = "probe"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
SEND_TRIES = 3
"""A probe is resent (same Idempotency-Key, so never twice) after no answer or a 5xx."""
POLL_SECONDS = 0.25
PAGE = 500
MAX_RETRY_AFTER = 65.0
"""Longest 429 Retry-After the drill waits out (ROLLOUT_CHANGE_LIMIT's window is 60 s)."""
RATE_LIMIT_WAITS = 3


class DrillError(RuntimeError):
    """The drill could not run: an API unreachable or refusing it; the message says which."""


# -- talking to the API ------------------------------------------------------------------------


def call(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Any:
    """The JSON answer, waiting out a 429's Retry-After a few times; DrillError otherwise."""
    for _ in range(RATE_LIMIT_WAITS):
        try:
            response = client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise DrillError(f"cannot reach {url}: {exc}") from None
        wait = _retry_after(response)
        if response.status_code != 429 or wait > MAX_RETRY_AFTER:
            break
        log.warning("drill.rate_limited", url=url, retry_after=wait)
        time.sleep(wait)
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise DrillError(f"{method} {url} answered {response.status_code}: {detail}")
    return response.json()


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(float(response.headers.get("Retry-After", "1")), 0.5)
    except ValueError:  # an HTTP date: not what Switchyard sends
        return 1.0


def send_probe(client: httpx.Client, plan: DrillPlan, seq: int) -> Probe:
    """POST one probe, resending with the same Idempotency-Key after no answer or a 5xx."""
    probe = Probe(seq=seq, url=plan.urls[seq % len(plan.urls)], sent_at=time.monotonic())
    body = {
        "tool_id": PROBE_TOOL,
        "payload": {"drill": plan.run_id, "seq": seq, "seconds": plan.probe_seconds},
    }
    headers = {"Idempotency-Key": f"drill-{plan.run_id}-{seq}"}
    for attempt in range(SEND_TRIES):
        if attempt:
            time.sleep(0.2 * attempt)
        try:
            response = client.post(f"{probe.url}/tasks", json=body, headers=headers)
        except httpx.HTTPError as exc:
            probe.status_code, probe.detail = 0, f"{type(exc).__name__}: {exc}"
            continue
        probe.answered_at, probe.status_code = time.monotonic(), response.status_code
        if response.status_code < 300:
            record = response.json()
            probe.task_id, probe.backend = record["task_id"], record["backend"]
            return probe
        probe.detail = response.text[:200]
        if response.status_code < 500:
            return probe
    log.warning("drill.probe_refused", seq=seq, url=probe.url, detail=probe.detail)
    return probe


class ProbeStream:
    """Probes at `plan.rate` a second, round-robin over the URLs, until stopped.

    A pacer thread hands each probe to a few sender threads at its due time (start + n / rate),
    so a slow answer delays no other probe; all share one HTTP client.
    """

    def __init__(self, client: httpx.Client, plan: DrillPlan) -> None:
        self._client = client
        self._plan = plan
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=plan.senders, thread_name_prefix="probe")
        self._sent: list[Future[Probe]] = []
        self._pacer = threading.Thread(target=self._pace, name="probe-pacer", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._pacer.start()

    def stop(self) -> list[Probe]:
        """Stop sending; every probe's submission, once all have their answer."""
        self._stop.set()
        self._pacer.join()
        probes = [future.result() for future in self._sent]
        self._pool.shutdown()
        return probes

    def _pace(self) -> None:
        started = time.monotonic()
        for seq in itertools.count():
            due = started + seq / self._plan.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._sent.append(self._pool.submit(send_probe, self._client, self._plan, seq))


def fetch_records(client: httpx.Client, url: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The rows of `ids`: pages of the newest probe tasks, then one GET for any not found."""
    wanted, found = set(ids), {}
    for offset in range(0, PAGE * (len(wanted) // PAGE + 4), PAGE):
        params = {"tool_id": PROBE_TOOL, "limit": PAGE, "offset": offset}
        items = call(client, "GET", f"{url}/tasks", params=params)["items"]
        found.update({item["task_id"]: item for item in items if item["task_id"] in wanted})
        if len(items) < PAGE or wanted <= found.keys():
            break
    for task_id in sorted(wanted - found.keys()):
        try:
            found[task_id] = call(client, "GET", f"{url}/tasks/{task_id}")
        except DrillError:  # no such task: counted lost, not a reason to stop counting
            continue
    return found


def wait_for_drain(
    client: httpx.Client, url: str, ids: Sequence[str], *, timeout: float
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Poll until every probe has ended: the rows, and when that was seen (None: timed out)."""
    deadline = time.monotonic() + timeout
    while True:
        records = fetch_records(client, url, ids)
        seen = time.monotonic()
        if all(records.get(task_id, {}).get("status") in TERMINAL for task_id in ids):
            return records, seen
        if seen >= deadline:
            return records, None
        time.sleep(POLL_SECONDS)


# -- the drill ---------------------------------------------------------------------------------


def run_drill(
    client: httpx.Client, plan: DrillPlan, *, say: Callable[[str], None] = lambda _: None
) -> DrillReport:
    """Raise, stream, roll back mid-stream, stream on, drain, put back; the report.

    The rollout ends where the drill found it, also when the drill is interrupted.
    """
    original = preflight(client, plan)
    routing = _routing(original)
    why = f"raise to {plan.percentage:g} %"
    set_routing(client, plan, drill_routing(plan, routing), original["version"], why)
    say(f"drill {plan.run_id}: rollout at {plan.percentage:g} %, streaming probes")
    rollback: RollbackMark | None = None
    try:
        probes, rollback = _stream(client, plan, say)
        say(f"{len(probes)} probes sent; waiting for them to end")
        ids = [str(p.task_id) for p in probes if p.accepted]
        records, drained_at = wait_for_drain(client, plan.urls[0], ids, timeout=plan.drain_timeout)
    except BaseException as exc:
        try:
            put_back(client, plan, routing, rolled_back=rollback is not None)
        except DrillError as cleanup:
            raise DrillError(f"{exc}; then putting the rollout back failed: {cleanup}") from exc
        raise
    put_back(client, plan, routing, rolled_back=True)
    say("rollout put back where the drill found it")
    report = summarize(plan, probes, rollback, records, drained_at)
    log.info("drill.report", **report.as_dict())
    return report


def _stream(
    client: httpx.Client, plan: DrillPlan, say: Callable[[str], None]
) -> tuple[list[Probe], RollbackMark]:
    stream = ProbeStream(client, plan)
    stream.start()
    try:
        time.sleep(plan.before)
        rollback = roll_back(client, plan)
        say(f"rolled back through {plan.urls[0]}; reclaimed: {rollback.reclaimed}")
        time.sleep(plan.after)
    finally:
        probes = stream.stop()
    return probes, rollback


def drill_routing(plan: DrillPlan, routing: dict[str, Any]) -> dict[str, Any]:
    """The routing during the drill: its percentage; per task id, else all probes go together."""
    overrides = {k: v for k, v in routing["tool_overrides"].items() if k != PROBE_TOOL}
    return {"percentage": plan.percentage, "tool_overrides": overrides, "stickiness": "task_id"}


def preflight(client: httpx.Client, plan: DrillPlan) -> dict[str, Any]:
    """The first process's rollout, once every process publishes to Celery and knows probes."""
    rollouts = [call(client, "GET", f"{url}/rollout") for url in plan.urls]
    for url, rollout in zip(plan.urls, rollouts, strict=True):
        if not rollout["use_celery"]:
            raise DrillError(f"{url} runs with USE_CELERY=false: it would send no probe to Celery")
        tools = {tool["tool_id"] for tool in call(client, "GET", f"{url}/tools")}
        if PROBE_TOOL not in tools:
            raise DrillError(f"{url} has no {PROBE_TOOL!r} tool (SWITCHYARD_TOOLS)")
    first: dict[str, Any] = rollouts[0]
    return first


def roll_back(client: httpx.Client, plan: DrillPlan) -> RollbackMark:
    """POST /rollout/rollback through the first process, timed."""
    reason = _reason(plan, "roll back under load")
    sent_at = time.monotonic()
    body = call(client, "POST", f"{plan.urls[0]}/rollout/rollback", json={"reason": reason})
    reclaimed = body.get("reclaimed")
    answered_at = time.monotonic()
    return RollbackMark(sent_at, answered_at, None if reclaimed is None else int(reclaimed))


def put_back(
    client: httpx.Client, plan: DrillPlan, routing: dict[str, Any], *, rolled_back: bool
) -> None:
    """Restore after the rollback, then return to the routing from before the drill."""
    main = plan.urls[0]
    if rolled_back:
        body = {"reason": _reason(plan, "restore")}
        now = call(client, "POST", f"{main}/rollout/restore", json=body)
    else:
        now = call(client, "GET", f"{main}/rollout")
    if _routing(now) != routing:
        set_routing(client, plan, routing, now["version"], "put back as found")


def set_routing(
    client: httpx.Client, plan: DrillPlan, routing: dict[str, Any], version: int, why: str
) -> dict[str, Any]:
    """PUT /rollout against `version` (If-Match), the reason saying which drill and why."""
    changed: dict[str, Any] = call(
        client,
        "PUT",
        f"{plan.urls[0]}/rollout",
        json={**routing, "reason": _reason(plan, why)},
        headers={"If-Match": f'"{version}"'},
    )
    return changed


def _reason(plan: DrillPlan, why: str) -> str:
    return f"{plan.reason} ({plan.run_id}): {why}"


def _routing(rollout: dict[str, Any]) -> dict[str, Any]:
    return {key: rollout[key] for key in ("percentage", "tool_overrides", "stickiness")}


# -- the command -------------------------------------------------------------------------------

UrlsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--url",
        envvar="SWITCHYARD_URL",
        show_default=DEFAULT_API_URL,
        help="An API process (repeatable): probes go round-robin, the rollback through the first.",
    ),
]


def drill(
    url: UrlsOption = None,
    percentage: Annotated[
        float, typer.Option(min=0.01, max=100, help="Raise the rollout to this, in %.")
    ] = 50.0,
    rate: Annotated[float, typer.Option(min=0.5, max=500, help="Probes a second.")] = 20.0,
    before: Annotated[
        float, typer.Option(min=0.5, help="Seconds of stream before the rollback.")
    ] = 3.0,
    after: Annotated[
        float,
        typer.Option(help="Seconds of stream after it; longer than --routing-bound."),
    ] = 4.0,
    probe_seconds: Annotated[
        float, typer.Option(min=0, max=60, help="How long each probe works.")
    ] = 0.05,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait, after the stream, for every probe.")
    ] = 60.0,
    routing_bound: Annotated[
        float,
        typer.Option(min=0, help="Seconds after the rollback by which no probe may go to Celery."),
    ] = 2.0,
    reason: Annotated[
        str, typer.Option(help="Recorded in the rollout history, for every change made.")
    ] = "drill",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the JSON report.")
    ] = False,
    api_key: ApiKeyOption = None,
) -> None:
    """Roll back under load with probe tasks; exit 1 if one was lost or ran twice, or if routing
    did not leave Celery within the bound."""
    configure_logging(level="WARNING")
    urls = tuple(url or [DEFAULT_API_URL])
    try:
        plan = DrillPlan(
            urls=tuple(u.rstrip("/") for u in urls),
            percentage=percentage,
            rate=rate,
            before=before,
            after=after,
            probe_seconds=probe_seconds,
            drain_timeout=drain_timeout,
            routing_bound=routing_bound,
            reason=reason,
        )
    except ValueError as exc:
        fail(str(exc))
    say: Callable[[str], None] = (lambda _: None) if json_output else _say
    with api_client(plan.urls[0], api_key) as client:
        try:
            report = run_drill(client, plan, say=say)
        except DrillError as exc:
            fail(str(exc))
    if json_output:
        typer.echo(report.to_json())
    else:
        print_report(report)
    if report.problems:
        fail("drill failed: " + "; ".join(report.problems), code=1)


def _say(message: str) -> None:
    err.print(message, highlight=False, soft_wrap=True)
