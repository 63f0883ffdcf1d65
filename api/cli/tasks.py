"""`switchyard submit`, `status` and `tasks`: tasks through the API of a running service."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, UrlOption, api_client, call_api
from api.cli.console import err, fail, out, print_table

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def submit(
    tool_id: Annotated[str, typer.Argument(help="A tool id from `switchyard tools`.")],
    payload: Annotated[str, typer.Option(help="The payload as a JSON object.")] = "{}",
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="0-9, 9 highest.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show a progress bar until the task ends.")
    ] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a task through the API; with --wait, follow it to the end."""
    try:
        body = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not valid JSON: {exc}")
    if not isinstance(body, dict):
        fail("--payload must be a JSON object")
    request: dict[str, Any] = {"tool_id": tool_id, "payload": body}
    if priority is not None:
        request["priority"] = priority
    with api_client(url, api_key) as client:
        task = call_api(client, "POST", "/tasks", json=request)
        out.print(f"task {task['task_id']} {task['status']} on {task['backend']}", highlight=False)
        if wait:
            task = _follow(client, task["task_id"])
            _print_task(task)
            if task["status"] != "COMPLETED":
                raise typer.Exit(1)


def status(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a task's status, progress and result."""
    with api_client(url, api_key) as client:
        _print_task(call_api(client, "GET", f"/tasks/{task_id}"))


def cancel(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a task: a waiting one at once, a running one within TASK_HEARTBEAT_SECONDS."""
    with api_client(url, api_key) as client:
        task = call_api(client, "POST", f"/tasks/{task_id}/cancel")
    if task["status"] == "PROCESSING":
        out.print(f"task {task_id} is running: asked to stop", highlight=False)
    else:
        out.print(f"task {task_id} {task['status']}", highlight=False)


def retry(
    task_id: Annotated[str, typer.Argument(help="The id of a FAILED or CANCELLED task.")],
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Run a FAILED or CANCELLED task again, as a new attempt of the same task."""
    with api_client(url, api_key) as client:
        task = call_api(client, "POST", f"/tasks/{task_id}/retry")
    out.print(
        f"task {task_id} {task['status']} on {task['backend']} (attempt {task['attempts'] + 1})",
        highlight=False,
    )


def count_tasks(
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. QUEUED.")] = None,
    backend: Annotated[str | None, typer.Option(help="Only thread or celery.")] = None,
    tool: Annotated[str | None, typer.Option(help="Only this tool id.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=500, help="How many of the newest tasks to count.")
    ] = 500,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for queued and running tasks to end.")
    ] = 0,
    require_completed: Annotated[
        bool,
        typer.Option(
            "--require-completed",
            help="Exit 1 unless every counted task is COMPLETED (a drill's check).",
        ),
    ] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Count the newest tasks (up to --limit) by status and backend; `status` shows one task."""
    params = {"limit": limit, "status": status, "backend": backend, "tool_id": tool}
    deadline = time.monotonic() + wait
    with api_client(url, api_key) as client:
        while True:
            items = call_api(
                client, "GET", "/tasks", params={k: v for k, v in params.items() if v is not None}
            )["items"]
            pending = [t for t in items if t["status"] in ("QUEUED", "PROCESSING")]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    counts: dict[tuple[str, str], int] = {}
    for task in items:
        key = (task["status"], task["backend"] or "-")
        counts[key] = counts.get(key, 0) + 1
    table = Table("status", "backend", "tasks")
    for (state, where), count in sorted(counts.items()):
        table.add_row(state, where, str(count))
    print_table(table)
    unfinished = sum(n for (state, _), n in counts.items() if state != "COMPLETED")
    if require_completed and unfinished:
        fail(f"{unfinished} of {len(items)} tasks did not complete", code=1)


def _follow(client: httpx.Client, task_id: str) -> Any:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        handle = bar.add_task("queued", total=100)
        while True:
            task = call_api(client, "GET", f"/tasks/{task_id}")
            bar.update(
                handle,
                completed=task["progress"],
                description=f"{task['status']}: {task['message'] or ''}"[:60],
            )
            if task["status"] in TERMINAL:
                return task
            time.sleep(0.3)


def _print_task(task: dict[str, Any]) -> None:
    table = Table(show_header=False)
    for key in (
        "task_id",
        "tool_id",
        "status",
        "progress",
        "message",
        "backend",
        "attempts",
        "run_after",
        "cancel_requested_at",
        "error_code",
        "error_message",
        "created_at",
        "completed_at",
        "failed_at",
    ):
        if task.get(key) is not None:
            table.add_row(key, str(task[key]))
    print_table(table)
    if task.get("result") is not None:
        out.print_json(data=task["result"])
