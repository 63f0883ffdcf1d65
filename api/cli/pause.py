"""`switchyard queue pause` and `queue resume`: hold a tool's new tasks QUEUED during an
incident or a deploy, then hand them to their backends."""

from __future__ import annotations

from typing import Annotated

import typer

from api.cli.client import DEFAULT_API_URL, ApiKeyOption, UrlOption, api_client, call_api
from api.cli.console import out
from api.cli.queue import queue_app
from api.cli.rollout import ReasonOption, paused_tools

ToolOption = Annotated[str | None, typer.Option(help="Only this tool.", show_default="every tool")]


@queue_app.command("pause")
def pause(
    reason: ReasonOption,
    tool: ToolOption = None,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Pause dispatch of one tool, or of all: new tasks are accepted and wait QUEUED, nothing
    of it starts on either backend; every process honours it within ROLLOUT_REFRESH_SECONDS."""
    with api_client(url, api_key) as client:
        state = call_api(client, "POST", "/queue/pause", json={"tool_id": tool, "reason": reason})
    out.print(
        f"dispatch paused for {paused_tools(state['paused'])} (rollout version "
        f"{state['version']}); `switchyard queue resume` hands the waiting tasks over",
        highlight=False,
    )


@queue_app.command("resume")
def resume(
    reason: ReasonOption,
    tool: ToolOption = None,
    url: UrlOption = DEFAULT_API_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Resume dispatch of one tool, or of all, and hand its waiting tasks to their backends,
    highest priority first."""
    with api_client(url, api_key) as client:
        state = call_api(client, "POST", "/queue/resume", json={"tool_id": tool, "reason": reason})
    still = f"; still paused: {paused_tools(state['paused'])}" if state["paused"] else ""
    out.print(
        f"dispatch resumed for {tool or 'every tool'} (rollout version {state['version']}): "
        f"{state['released']} waiting task(s) handed to their backends{still}",
        highlight=False,
    )
