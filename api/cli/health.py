"""`switchyard status` without a task id: the API's /health as an operator reads it."""

from __future__ import annotations

from typing import Any

import httpx
from rich.table import Table

from api.cli.console import fail, out, print_table

COLUMNS = (
    ("state", "state"),
    ("workers", "workers"),
    ("running", "running"),
    ("queued", "queued (rows)"),
    ("oldest_waiting_seconds", "oldest waiting"),
)


def fetch_health(client: httpx.Client) -> tuple[int, dict[str, Any]]:
    """/health's status code and body; 503 is an answer here, not an error."""
    try:
        response = client.get("/health")
    except httpx.HTTPError as exc:
        fail(f"cannot reach the API at {client.base_url}: {exc}")
    if response.status_code not in (200, 503):
        fail(f"{response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return response.status_code, body


def print_health(body: dict[str, Any]) -> None:
    """The verdict and its reasons, one row per backend, and the broker's queues."""
    verdict = body.get("status", "unknown")
    colour = "green" if verdict == "ok" else "bold red"
    out.print(f"[{colour}]{verdict}[/]  database: {body.get('database')}", highlight=False)
    for reason in body.get("reasons", []):
        out.print(f"  - {reason}", highlight=False, soft_wrap=True)
    table = Table("backend", *(title for _, title in COLUMNS))
    for name, backend in sorted(body.get("backends", {}).items()):
        table.add_row(name, *(_cell(key, backend) for key, _ in COLUMNS))
    print_table(table)
    celery = body.get("backends", {}).get("celery", {})
    if celery.get("queues"):
        queues = ", ".join(f"{queue}={count}" for queue, count in sorted(celery["queues"].items()))
        out.print(f"celery queues (messages in the broker): {queues}", highlight=False)
    workers = (body.get("detail") or {}).get("celery", {}).get("workers")
    if workers:
        out.print(f"celery workers: {', '.join(workers)}", highlight=False)


def _cell(key: str, backend: dict[str, Any]) -> str:
    value = backend.get(key)
    if value is None:
        return "-"
    if key == "workers" and "alive" in backend:
        return f"{backend['alive']}/{value}"
    if key == "oldest_waiting_seconds":
        return f"{value:g} s"
    return str(value)
