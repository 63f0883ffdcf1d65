"""`switchyard failed ...`: the tasks that failed for good, listed and retried in bulk."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import click
import typer
from rich.table import Table

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, UrlOption, api_client, call_api
from api.cli.console import fail, out, print_table
from api.cli.windows import window_start

failed_app = typer.Typer(
    help="Failed tasks: list them, retry them in bulk.",
    no_args_is_help=True,
)

ToolOption = Annotated[
    str | None, typer.Option("--tool", help="Only this tool id.", show_default=False)
]
CodeOption = Annotated[
    str | None,
    typer.Option(
        "--code", help="Only this error code, e.g. TIME_LIMIT_EXCEEDED.", show_default=False
    ),
]


@failed_app.command("list")
def list_failed(
    tool: ToolOption = None,
    code: CodeOption = None,
    since: Annotated[
        str | None,
        typer.Option(help="Failed within this window: 90s, 15m, 1h, 2d.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="The newest this many.")] = 50,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """The FAILED tasks, newest first: tool, backend, attempts, error and when it failed."""
    params = _filters(tool=tool, code=code, since=since)
    with api_client(url, api_key) as client:
        tasks = call_api(client, "GET", "/tasks", params={**params, "limit": limit})["items"]
    if not tasks:
        out.print("no failed task matches", highlight=False)
        return
    table = Table("task_id", "tool", "backend", "attempts", "error code", "message", "failed at")
    for task in tasks:
        table.add_row(
            task["task_id"],
            task["tool_id"],
            task["backend"] or "-",
            str(task["attempts"]),
            task["error_code"] or "-",
            task["error_message"] or "",
            _moment(task["failed_at"] or task["updated_at"]),
        )
    print_table(table)


@failed_app.command("retry")
def retry_failed(
    since: Annotated[
        str,
        typer.Option(
            help="Failed within this window: 90s, 15m, 1h, 2d (required: say how far back)."
        ),
    ],
    tool: ToolOption = None,
    code: CodeOption = None,
    limit: Annotated[
        int, typer.Option(min=1, max=1000, help="At most this many, newest first.")
    ] = 100,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be retried; change nothing.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Retry the FAILED tasks that match, each as `switchyard retry` would: a new attempt on
    the backend the rollout gives it now. Asks first, showing how many, unless --yes."""
    # The window ends now: what is confirmed is what is retried, not what fails meanwhile.
    until = datetime.now(UTC)
    params: dict[str, Any] = {
        **_filters(tool=tool, code=code, since=since, now=until),
        "until": until.isoformat(),
        "limit": limit,
    }
    which = _qualified(tool=tool, code=code, since=since)
    with api_client(url, api_key) as client:
        if dry_run or not yes:
            preview = call_api(client, "POST", "/tasks/retry", params={**params, "dry_run": True})
            matched = len(preview["matched"])
            count = f"{matched} task{'' if matched == 1 else 's'} {which}{_more(preview)}"
            if dry_run:
                out.print(f"would retry {count}", highlight=False, soft_wrap=True)
                for task_id in preview["matched"]:
                    out.print(task_id, highlight=False)
                return
            if not preview["matched"]:
                out.print(f"nothing to retry: no tasks {which}", highlight=False, soft_wrap=True)
                return
            _confirm(f"Retry {count}?")
        answer = call_api(client, "POST", "/tasks/retry", params=params)
    _print_outcome(answer)


def _filters(
    *, tool: str | None, code: str | None, since: str | None, now: datetime | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"status": "FAILED"}
    if tool is not None:
        params["tool_id"] = tool
    if code is not None:
        params["error_code"] = code
    if since is not None:
        params["since"] = window_start(since, option="--since", now=now).isoformat()
    return params


def _qualified(*, tool: str | None, code: str | None, since: str) -> str:
    """`of tool X with error code C that failed in the last 1h`."""
    parts = []
    if tool is not None:
        parts.append(f"of tool {tool}")
    if code is not None:
        parts.append(f"with error code {code}")
    return " ".join([*parts, f"that failed in the last {since}"])


def _more(answer: dict[str, Any]) -> str:
    return " (more match: raise --limit or run it again)" if answer["more"] else ""


def _confirm(question: str) -> None:
    try:
        confirmed = typer.confirm(question, default=False)
    except click.exceptions.Abort:  # no terminal to ask on (stdin closed)
        fail("not confirmed: nothing retried (--yes retries without asking)", code=1)
    if not confirmed:
        fail("nothing retried", code=1)


def _print_outcome(answer: dict[str, Any]) -> None:
    retried, skipped = answer["retried"], answer["skipped"]
    if retried:
        table = Table("task_id", "tool", "queued on")
        for task in retried:
            table.add_row(task["task_id"], task["tool_id"], task["backend"] or "-")
        print_table(table)
    out.print(
        f"retried {len(retried)}, skipped {len(skipped)}{_more(answer)}",
        highlight=False,
    )
    for task in skipped:
        out.print(f"skipped {task['task_id']}: {task['reason']}", highlight=False, soft_wrap=True)
    if skipped:
        raise typer.Exit(1)


def _moment(iso: str) -> str:
    """`2026-11-30 09:15:02` (UTC) from the API's ISO 8601."""
    return iso[:19].replace("T", " ")
