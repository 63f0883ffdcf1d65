"""`switchyard rollout compare` and `switchyard rollout advance`: judge Celery, then step on."""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, UrlOption, api_client, call_api
from api.cli.console import fail, out, print_table
from api.cli.rollout import ReasonOption, rollout_app
from api.cli.windows import parse_window


@rollout_app.command("compare")
def compare(
    window: Annotated[
        str | None,
        typer.Option(
            help="Over this window (3600, 90s, 15m, 1h, 2d) instead of since the last change.",
            show_default=False,
        ),
    ] = None,
    tool: Annotated[str | None, typer.Option(help="One tool only.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The API's JSON as it is.")] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Celery against threads: failure rate, queue wait and run time, per backend and tool."""
    params: dict[str, Any] = {}
    if (seconds := parse_window(window)) is not None:
        params["window_seconds"] = seconds
    if tool is not None:
        params["tool_id"] = tool
    with api_client(url, api_key) as client:
        report = call_api(client, "GET", "/rollout/cohorts", params=params)
    if as_json:
        out.print_json(json.dumps(report))
        return
    out.print(
        f"{report['basis']}: {report['rows_read']} finished tasks from "
        f"{report['since'][:19].replace('T', ' ')} UTC",
        highlight=False,
        soft_wrap=True,
    )
    if report["capped"]:
        out.print(
            f"capped: only the newest {report['row_cap']} were read; use a shorter --window",
            highlight=False,
        )
    table = Table(
        "backend", "tool", "tasks", "failed", "failure", "wait p50", "wait p95", "run p50",
        "run p95", "samples",
    )  # fmt: skip
    for cohort in [*report["backends"], *report["tools"]]:
        table.add_row(
            cohort["backend"],
            cohort["tool_id"] or "(all)",
            str(cohort["tasks"]),
            str(cohort["failed"]),
            _percent(cohort["failure_rate"]),
            *(
                _seconds(cohort[key])
                for key in ("queue_wait_p50", "queue_wait_p95", "run_time_p50", "run_time_p95")
            ),
            str(cohort["samples"]) + ("" if cohort["enough"] else " (too few)"),
        )
    print_table(table)
    out.print(
        f"A cohort needs {report['min_samples']} finished tasks (ROLLOUT_MIN_SAMPLES) to be "
        "judged; cancelled tasks count in tasks but are no sample.",
        highlight=False,
        soft_wrap=True,
    )


@rollout_app.command("advance")
def advance(
    reason: ReasonOption,
    force: Annotated[
        bool,
        typer.Option("--force", help="Step on although a check failed (recorded in history)."),
    ] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """The next step of the schedule, if Celery did no worse than threads (exits 1 if not)."""
    with api_client(url, api_key) as client:
        try:
            response = client.post("/rollout/advance", json={"reason": reason, "force": force})
        except httpx.HTTPError as exc:
            fail(f"cannot reach the API at {client.base_url}: {exc}")
    if response.status_code == 409:
        refused = response.json()
        _print_checks(refused.get("checks", []))
        fail(refused["detail"], code=1)
    if response.status_code >= 400:
        fail(f"{response.status_code}: {_detail(response)}")
    result = response.json()
    _print_checks(result["checks"])
    if not result["checks"]:
        out.print("first step from 0%: no Celery cohort to judge yet", highlight=False)
    forced = " (forced past the failed checks)" if result["forced"] else ""
    out.print(
        f"advanced from {result['from_percentage']:g}% to {result['to_percentage']:g}%{forced}",
        highlight=False,
    )


def _print_checks(checks: list[dict[str, Any]]) -> None:
    for check in checks:
        verdict = "passed" if check["passed"] else "FAILED"
        out.print(f"{verdict:6}  {check['name']}: {check['detail']}", highlight=False)


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except ValueError:
        return response.text


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}s"
