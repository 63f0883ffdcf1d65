"""`switchyard rollout ...`: the runbook's commands, through the API of a running service."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, UrlOption, api_client, call_api
from api.cli.console import fail, out, print_table
from dispatch.rollout.policy import check_percentage

rollout_app = typer.Typer(
    help="Where new tasks run: status, set, rollback, restore, history, preview, compare, advance.",
    no_args_is_help=True,
)

ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why; recorded in the rollout history.", show_default=False)
]


def _percentage(value: float) -> float:
    try:
        return check_percentage(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@rollout_app.command("status")
def status(url: UrlOption = DEFAULT_API_URL, api_key: ApiKeyOption = None) -> None:
    """The rollout this API process routes by."""
    with api_client(url, api_key) as client:
        _print_rollout(call_api(client, "GET", "/rollout"))


@rollout_app.command("set")
def set_(
    percentage: Annotated[
        float,
        typer.Argument(callback=_percentage, help="Share of new tasks for Celery, 0-100."),
    ],
    reason: ReasonOption,
    tool: Annotated[
        list[str] | None,
        typer.Option(
            help="TOOL=PERCENT override for one tool (repeatable; merged with the "
            "overrides in force)."
        ),
    ] = None,
    clear_overrides: Annotated[
        bool, typer.Option("--clear-overrides", help="Drop every per-tool override first.")
    ] = False,
    stickiness: Annotated[
        str | None, typer.Option(help="Bucket on task_id (default) or user_id.")
    ] = None,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Set the percentage (and overrides), guarded by the version just read."""
    asked = _parse_overrides(tool or [])  # a typo is refused before anything is read or sent
    with api_client(url, api_key) as client:
        current = call_api(client, "GET", "/rollout")
        overrides: dict[str, float] = {} if clear_overrides else dict(current["tool_overrides"])
        overrides.update(asked)
        body: dict[str, Any] = {
            "percentage": percentage,
            "tool_overrides": overrides,
            "reason": reason,
        }
        if stickiness is not None:
            body["stickiness"] = stickiness
        changed = call_api(
            client,
            "PUT",
            "/rollout",
            json=body,
            headers={"If-Match": f'"{current["version"]}"'},
        )
        _print_rollout(changed)


@rollout_app.command("rollback")
def rollback(
    reason: ReasonOption,
    tool: Annotated[
        str | None, typer.Option(help="Roll back this tool only (its override to 0 %).")
    ] = None,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Every new task (or one tool's) to threads at once, with the tasks still QUEUED on
    Celery; never refused. `restore` returns to the routing before the first rollback."""
    with api_client(url, api_key) as client:
        rolled = call_api(
            client, "POST", "/rollout/rollback", json={"reason": reason, "tool_id": tool}
        )
    _print_rollout(rolled)
    out.print(f"{rolled['reclaimed']} task(s) QUEUED on Celery moved to the thread backend")


@rollout_app.command("restore")
def restore(
    reason: Annotated[str, typer.Option(help="Why; recorded in the rollout history.")] = (
        "restore after rollback"
    ),
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Return to where the last rollback found the rollout."""
    with api_client(url, api_key) as client:
        _print_rollout(call_api(client, "POST", "/rollout/restore", json={"reason": reason}))


@rollout_app.command("history")
def history(
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many changes.")] = 20,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Every accepted change, newest first, with author and reason."""
    with api_client(url, api_key) as client:
        events = call_api(client, "GET", "/rollout/history", params={"limit": limit})
    table = Table("version", "at (UTC)", "action", "by", "from", "to", "reason")
    for event in events:
        table.add_row(
            str(event["version"]),
            event["at"][:19].replace("T", " "),
            event["action"],
            event["actor"],
            _routing(event["before"]),
            _routing(event["after"]),
            event["reason"],
        )
    print_table(table)


@rollout_app.command("preview")
def preview(
    percentage: Annotated[
        float, typer.Argument(callback=_percentage, help="The percentage to try, 0-100.")
    ],
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """How much new traffic, and how many QUEUED tasks, a percentage would move."""
    with api_client(url, api_key) as client:
        seen = call_api(client, "GET", "/rollout/preview", params={"percentage": percentage})
    table = Table(show_header=False)
    table.add_row("now", f"{seen['current_percentage']:g}%")
    table.add_row("proposed", f"{seen['proposed_percentage']:g}%")
    table.add_row(
        "new traffic moving", f"{seen['new_traffic_moving']:g} points {seen['direction']}"
    )
    table.add_row("queued now", ", ".join(f"{k}: {v}" for k, v in seen["queued"].items()) or "none")
    table.add_row("queued tasks handed back to threads", str(seen["queued_that_would_move"]))
    out.print(table)


def _parse_overrides(pairs: list[str]) -> dict[str, float]:
    parsed: dict[str, float] = {}
    for pair in pairs:
        tool_id, sep, value = pair.partition("=")
        try:
            share: float | None = check_percentage(float(value))
        except ValueError:
            share = None
        if not sep or not tool_id or share is None:
            fail(f"--tool: {pair!r} is not TOOL=PERCENT with PERCENT in 0-100")
        parsed[tool_id] = share
    return parsed


def _routing(routing: dict[str, Any] | None) -> str:
    if routing is None:
        return "-"
    text = f"{routing['percentage']:g}%"
    if routing.get("tool_overrides"):
        text += " " + ",".join(f"{k}={v:g}%" for k, v in routing["tool_overrides"].items())
    if routing.get("stickiness") == "user_id":
        text += " by user"
    if "paused" in routing:
        text += f"; paused: {paused_tools(routing['paused'])}"
    return text


def paused_tools(paused: list[Any]) -> str:
    """`every tool`, `a, b`, or `no tool`, for a list of paused tools."""
    if "*" in paused:
        return "every tool"
    return ", ".join(map(str, paused)) or "no tool"


def _print_rollout(rollout: dict[str, Any]) -> None:
    table = Table(show_header=False)
    table.add_row("USE_CELERY (this API process)", str(rollout["use_celery"]).lower())
    table.add_row("percentage", f"{rollout['percentage']:g}%")
    overrides = rollout["tool_overrides"]
    table.add_row("tool overrides", ", ".join(f"{k}={v:g}%" for k, v in overrides.items()) or "-")
    table.add_row("stickiness", rollout["stickiness"])
    table.add_row("version", str(rollout["version"]))
    table.add_row(
        "changed by",
        f"{rollout['updated_by']} ({rollout['source']}) at {rollout['updated_at']}",
    )
    environment = rollout.get("environment")
    if environment:
        said = {
            "seeded": "the first start: seeded the rollout",
            "adopted": "new at this start: adopted",
            "unchanged": "already applied: the stored rollout stays in force",
            "stale": "an older value, replaced since: ignored",
        }.get(environment["outcome"], environment["outcome"])
        value = environment["percentage"]
        shown = "not set (the default)" if value is None else f"{value:g}%"
        if value is None and environment["outcome"] != "seeded":
            said = "the stored rollout stays in force"
        table.add_row("CELERY_ROLLOUT_PERCENTAGE (this API process)", f"{shown}, {said}")
    if rollout["restore_point"]:
        table.add_row("restore point", _routing(rollout["restore_point"]))
    if rollout.get("paused"):
        table.add_row(
            "dispatch PAUSED", f"{paused_tools(rollout['paused'])} (`switchyard queue resume`)"
        )
    table.add_row("meaning", rollout["explanation"])
    out.print(table)
