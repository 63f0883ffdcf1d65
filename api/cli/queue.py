"""`switchyard queue ...`: what waits, and the operations on it, through a running API."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, UrlOption, api_client, call_api
from api.cli.console import out, print_table

queue_app = typer.Typer(
    help="The queue: stats, pause and resume, purge.",
    no_args_is_help=True,
)


@queue_app.command("purge")
def purge(
    reason: Annotated[
        str,
        typer.Option(help="Why; kept in each purged task's history.", show_default=False),
    ],
    tool: Annotated[str | None, typer.Option(help="Only this tool's tasks.")] = None,
    backend: Annotated[
        str | None, typer.Option(help="Only the tasks on this backend: thread or celery.")
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="Only the tasks of the tools on this Celery queue.")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every QUEUED task; no filter may be given.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be cancelled.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask to confirm.")] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel every QUEUED task of a tool, a backend or a queue (filters combine), on both
    backends; running tasks are not touched. Asks first, showing what would go, unless --yes.
    Use this, never `celery purge`: that drops the messages and leaves the tasks QUEUED."""
    body: dict[str, Any] = {
        "tool_id": tool,
        "backend": backend,
        "queue": queue,
        "all": all_,
        "reason": reason,
    }
    with api_client(url, api_key) as client:
        if dry_run or not yes:
            counted = call_api(client, "POST", "/queue/purge", json={**body, "dry_run": True})
            _print_purge(counted)
            if dry_run or not counted["cancelled"]:
                return
            typer.confirm(f"Cancel these {counted['cancelled']} QUEUED task(s)?", abort=True)
        _print_purge(call_api(client, "POST", "/queue/purge", json={**body, "dry_run": False}))


def _print_purge(outcome: dict[str, Any]) -> None:
    table = Table("backend", "tool", "tasks")
    for backend, tools in sorted(outcome["by_backend"].items()):
        for tool_id, count in sorted(tools.items()):
            table.add_row(backend, tool_id, str(count))
    if outcome["cancelled"]:
        print_table(table)
    total = outcome["cancelled"]
    if outcome["dry_run"]:
        said = f"{total} QUEUED task(s) would be cancelled (dry run: nothing changed)"
    else:
        said = f"{total} QUEUED task(s) cancelled"
    out.print(said if total else "nothing QUEUED matches: nothing to purge", highlight=False)
    running = outcome["running"]
    out.print(
        f"{running} task(s) of this selection running now: not touched"
        + (" (`switchyard cancel <task id>` stops one)" if running else ""),
        highlight=False,
    )


@queue_app.command("stats")
def stats(url: UrlOption = DEFAULT_API_URL, api_key: ApiKeyOption = None) -> None:
    """Tasks by status and backend, the thread pool, the broker's queues and workers, the
    oldest wait, the paused tools; answers (saying the broker is down) even when Redis is
    not."""
    with api_client(url, api_key) as client:
        body = call_api(client, "GET", "/queue/stats")
    _print_tasks(body)
    _print_backends(body)
    _print_broker(body["broker"])
    paused = body["paused"]
    if paused:
        tools = "every tool" if "*" in paused else ", ".join(paused)
        out.print(f"[bold yellow]dispatch paused:[/] {tools}", highlight=False, soft_wrap=True)
    else:
        out.print("dispatch paused: none", highlight=False)
    for reason in body["reasons"]:
        out.print(f"[bold red]degraded:[/] {reason}", highlight=False, soft_wrap=True)


def _print_tasks(body: dict[str, Any]) -> None:
    tasks: dict[str, dict[str, int]] = body["tasks"]
    backends = sorted({backend for counts in tasks.values() for backend in counts})
    table = Table("status", *backends, "total", title=f"tasks (database: {body['database']})")
    for status, counts in tasks.items():
        cells = [str(counts.get(backend, 0)) for backend in backends]
        table.add_row(status, *cells, str(sum(counts.values())))
    print_table(table)


def _print_backends(body: dict[str, Any]) -> None:
    table = Table("backend", "state", "queued", "oldest waiting", title="queued per backend")
    for name, backend in sorted(body["backends"].items()):
        oldest = backend.get("oldest_waiting_seconds")
        table.add_row(
            name,
            str(backend.get("state")),
            str(backend.get("queued", 0)),
            "-" if oldest is None else f"{oldest:g} s",
        )
    print_table(table)
    pool = body.get("thread_pool")
    if pool:
        table = Table(*pool, title="thread pool (this API process)")
        table.add_row(*(str(value) for value in pool.values()))
        print_table(table)


def _print_broker(broker: dict[str, Any]) -> None:
    state = broker["state"]
    if state == "broker_down":
        shown = "[bold red]broker down[/]"
    elif state == "ok":
        shown = "[green]ok[/]"
    else:
        shown = f"[yellow]{state}[/]"
    at = f" at {broker['address']}" if broker.get("address") else ""
    out.print(f"celery broker{at}: {shown}", highlight=False, soft_wrap=True)
    if broker.get("reason"):
        out.print(f"  {broker['reason']}", highlight=False, soft_wrap=True)
    if broker.get("queues") is not None:
        table = Table("celery queue", "messages", title="broker queues")
        for name, count in sorted(broker["queues"].items()):
            table.add_row(name, str(count))
        print_table(table)
    if state != "not_in_this_process":
        workers = ", ".join(broker["workers"]) or "none answered"
        out.print(f"celery workers: {workers}", highlight=False, soft_wrap=True)
