"""`switchyard submit`, `status` and `tasks`: tasks through the API of a running service."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import typer
from httpx_sse import SSEError, connect_sse
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from api.cli import batch_file
from api.cli.client import (
    DEFAULT_API_URL,
    ApiKeyOption,
    UrlOption,
    api_client,
    call_api,
    fail_on_error,
)
from api.cli.console import err, fail, out, print_table, settings_or_exit
from api.cli.health import fetch_health, print_health

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}

STREAM_ATTEMPTS = 4
"""Broken task streams in a row before following a task falls back to polling GET /tasks/{id}."""

STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)
"""A quiet stream still gets a `: ping` every 15 s; a minute without a byte means it is gone."""

STREAM_BACKOFF_SECONDS = 0.5
"""The wait before opening a broken stream again, doubled at each break in a row."""

POLL_SECONDS = 0.3
"""How often a task is read while following it without its stream."""


def submit(
    tool_id: Annotated[
        str | None,
        typer.Argument(
            help="A tool id from `switchyard tools`.", show_default="none with --from-file"
        ),
    ] = None,
    payload: Annotated[str, typer.Option(help="The payload as a JSON object.")] = "{}",
    priority: Annotated[int | None, typer.Option(min=0, max=9, help="0-9, 9 highest.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show a progress bar until the task ends.")
    ] = False,
    from_file: Annotated[
        str | None,
        typer.Option(
            "--from-file",
            help='Submit a JSON Lines file (- for stdin), one {"tool_id", "payload", '
            '"priority"} per line: every line is checked first, then sent in batches; the task '
            "ids are printed in line order.",
        ),
    ] = None,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Create a task through the API; with --wait, follow it to the end. With --from-file,
    create many."""
    if from_file is not None:
        _submit_file(from_file, tool_id, payload, priority, wait, url, api_key)
        return
    if tool_id is None:
        fail("give a tool id (`switchyard tools` lists them), or --from-file FILE")
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


def _submit_file(
    source: str,
    tool_id: str | None,
    payload: str,
    priority: int | None,
    wait: bool,
    url: str,
    api_key: str | None,
) -> None:
    """`submit --from-file`: each line carries its own tool, payload and priority."""
    if tool_id is not None or payload != "{}" or priority is not None:
        fail("--from-file takes no tool id, --payload or --priority: each line has its own")
    if wait:
        fail("--wait follows one task; after --from-file, `switchyard tasks --wait SECONDS`")
    items = batch_file.read_items(source)
    with api_client(url, api_key) as client:
        batch_file.check_tools(client, items, source)
        limit = settings_or_exit().batch_max_items
        tasks = batch_file.send(client, items, batch_size=limit)
    batch_file.report_rejected(tasks, items)


def status(
    task_id: Annotated[
        str | None,
        typer.Argument(
            help="The task's id.", show_default="none: the API's health, workers and queues"
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", help="Show a progress bar until the task ends; exit 1 unless COMPLETED."
        ),
    ] = False,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Show a task's status, progress and result (with --follow, once it has ended); without
    a task id, whether the API can take work: Celery workers, queue depths, the oldest wait
    per backend (exit 1 when degraded)."""
    if task_id is None:
        if follow:
            fail("--follow needs a task id: `switchyard status TASK_ID --follow`")
        with api_client(url, api_key) as client:
            code, body = fetch_health(client)
        print_health(body)
        if code != 200:
            raise typer.Exit(1)
        return
    with api_client(url, api_key) as client:
        task = _follow(client, task_id) if follow else call_api(client, "GET", f"/tasks/{task_id}")
    _print_task(task)
    if follow and task["status"] != "COMPLETED":
        raise typer.Exit(1)


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
    """The task once it has ended, after a progress bar on stderr while it runs."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    # Into a pipe a transient bar shows nothing but leaves a blank line: none at all there.
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        handle = bar.add_task("queued", total=100)

        def show(task: dict[str, Any]) -> None:
            bar.update(
                handle,
                completed=task["progress"],
                description=f"{task['status']}: {task['message'] or ''}"[:60],
            )

        if not _watch_stream(client, task_id, show):
            while (task := call_api(client, "GET", f"/tasks/{task_id}"))["status"] not in TERMINAL:
                show(task)
                time.sleep(POLL_SECONDS)
    # The events carry no result: the whole task, once, to print it.
    return call_api(client, "GET", f"/tasks/{task_id}")


def _watch_stream(
    client: httpx.Client, task_id: str, show: Callable[[dict[str, Any]], None]
) -> bool:
    """Pass each state of the task's event stream to `show`; True once it showed the end.

    A stream that breaks (a server restart, the network) is opened again, up to
    STREAM_ATTEMPTS times in a row; False then, or at once from a server without the stream
    (404: a missing task gets its own 404 from GET), and the caller polls instead.
    """
    broken = 0
    while broken < STREAM_ATTEMPTS:
        try:
            with connect_sse(
                client, "GET", f"/tasks/{task_id}/stream", timeout=STREAM_TIMEOUT
            ) as source:
                if source.response.status_code == 404:
                    return False
                if source.response.status_code < 500:
                    fail_on_error(source.response)  # 401, 422: asking again changes nothing
                source.response.raise_for_status()  # 5xx: a restart under way, perhaps
                for event in source.iter_sse():
                    if event.event != "task":
                        continue  # `timeout`: the server's bound on a stream; reconnect
                    task = event.json()
                    broken = 0
                    show(task)
                    if task["status"] in TERMINAL:
                        return True
        except (httpx.HTTPError, SSEError, ValueError, KeyError, TypeError) as exc:
            # A broken stream, a proxy's page, a garbled event: one line of what it was.
            problem = str(exc).partition("\n")[0] or type(exc).__name__
        else:
            problem = "it ended before the task did"
        broken += 1
        if broken < STREAM_ATTEMPTS:
            time.sleep(STREAM_BACKOFF_SECONDS * 2 ** (broken - 1))
    err.print(
        f"warning: the task's event stream broke ({problem}); polling",
        highlight=False,
        soft_wrap=True,
    )
    return False


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
