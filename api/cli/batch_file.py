"""`switchyard submit --from-file items.jsonl`: every line checked first, then sent in batches.

Each line is one `{"tool_id": ..., "payload": {...}, "priority": 0-9}` (payload and priority
optional). Nothing is sent unless every line is a valid item of a tool the API runs; then the
items go as POST /tasks/batch requests of BATCH_MAX_ITEMS each (the server's limit, learnt from
its answer when it differs from this machine's setting), and the task ids are printed in line
order as each batch is accepted.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.cli.client import call_api
from api.cli.console import err, fail, out
from api.client import error_of

FIELDS = ("tool_id", "payload", "priority")
SHOWN_PROBLEMS = 10
"""Bad lines listed before "(and N more)"."""


@dataclass(frozen=True, slots=True)
class Item:
    """One line of the file: where it is, and the batch item it becomes."""

    line: int
    body: dict[str, Any]


def read_items(source: str) -> list[Item]:
    """The items of `source` (a path, or - for stdin); exits listing every bad line."""
    try:
        if source == "-":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--from-file {source}: cannot read it: {exc}")
    items: list[Item] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(Item(number, _item(line)))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        _fail_on(problems, source)
    if not items:
        fail(f"--from-file {source} holds no items: one JSON object per line")
    return items


def _item(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError('not a JSON object like {"tool_id": "noop", "payload": {}}')
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (allowed: {', '.join(FIELDS)})")
    tool_id, payload = value.get("tool_id"), value.get("payload", {})
    priority = value.get("priority")
    if not isinstance(tool_id, str) or not tool_id:
        raise ValueError("tool_id must be a non-empty string")
    if not isinstance(payload, dict):
        raise ValueError("payload must be a JSON object")
    if priority is not None and (type(priority) is not int or not 0 <= priority <= 9):
        raise ValueError("priority must be an integer from 0 to 9")
    return value


def check_tools(client: httpx.Client, items: list[Item], source: str) -> None:
    """Exit listing every line whose tool the API does not run, before anything is sent."""
    known = {tool["tool_id"] for tool in call_api(client, "GET", "/tools")}
    problems = [
        f"line {item.line}: unknown tool {item.body['tool_id']!r}; known tools: "
        + ", ".join(sorted(known))
        for item in items
        if item.body["tool_id"] not in known
    ]
    if problems:
        _fail_on(problems, source)


def send(client: httpx.Client, items: list[Item], *, batch_size: int) -> list[dict[str, Any]]:
    """POST every item in batches, printing each task id (line order) once its batch is
    accepted, under a progress bar on stderr; the tasks, in line order. Exits at the first
    refused batch, saying which lines were sent and which were not."""
    tasks: list[dict[str, Any]] = []
    columns = (
        TextColumn("submitting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        progress = bar.add_task("submit", total=len(items))
        while len(tasks) < len(items):
            batch = items[len(tasks) : len(tasks) + batch_size]
            try:
                response = client.post("/tasks/batch", json={"items": [i.body for i in batch]})
            except httpx.HTTPError as exc:
                _stop(tasks, items, f"cannot reach the API at {client.base_url}: {exc}")
            limit = _server_limit(response)
            if limit is not None and limit < len(batch):
                batch_size = limit  # this batch created nothing: send it again, smaller
                continue
            error = error_of(response)
            if error is not None:
                _stop(tasks, items, _with_line(str(error), response, batch))
            for task in response.json()["items"]:
                out.print(task["task_id"], highlight=False)
                tasks.append(task)
            bar.update(progress, completed=len(tasks))
    return tasks


def report_rejected(tasks: list[dict[str, Any]], items: list[Item]) -> None:
    """Exit 1 naming the lines whose backend refused their task after it was written."""
    lines = [
        str(item.line)
        for item, task in zip(items, tasks, strict=True)
        if task["error_code"] == "REJECTED"
    ]
    if lines:
        fail(
            f"{len(lines)} of {len(tasks)} tasks were refused by their backend after they were "
            f"written (CANCELLED, REJECTED; their message says why): submit lines "
            f"{', '.join(lines[:20])}{' ...' if len(lines) > 20 else ''} again",
            code=1,
        )


def _server_limit(response: httpx.Response) -> int | None:
    """The server's BATCH_MAX_ITEMS, if it refused a batch for holding more."""
    if response.status_code != 422:
        return None
    try:
        limit = response.json().get("max_items")
    except ValueError:
        return None
    return limit if isinstance(limit, int) and limit > 0 else None


def _with_line(message: str, response: httpx.Response, batch: list[Item]) -> str:
    """A refused batch's error with the item indexes it names turned into line numbers."""
    if response.status_code != 422:
        return message
    for error in response.json().get("errors", []):
        loc = error.get("loc", [])
        if len(loc) >= 3 and loc[:2] == ["body", "items"] and isinstance(loc[2], int):
            where = ".".join(str(part) for part in loc[3:]) or "item"
            return f"line {batch[loc[2]].line}: {where}: {error.get('msg')}"
    return message


def _stop(tasks: list[dict[str, Any]], items: list[Item], reason: str) -> NoReturn:
    sent = len(tasks)
    where = (
        "nothing was submitted"
        if sent == 0
        else f"the tasks of lines {items[0].line}-{items[sent - 1].line} were submitted "
        "(their ids are above)"
    )
    fail(f"{reason}; {where}, from line {items[sent].line} on nothing was")


def _fail_on(problems: list[str], source: str) -> NoReturn:
    more = len(problems) - SHOWN_PROBLEMS
    fail(
        f"--from-file {source}: nothing sent; "
        + "; ".join(problems[:SHOWN_PROBLEMS])
        + (f" (and {more} more)" if more > 0 else "")
    )
