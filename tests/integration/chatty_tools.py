"""A tool that writes to stdout and to the standard library's logging, as tools do."""

from __future__ import annotations

import logging
from typing import Any

from execution.tools.registry import ToolContext, tool

log = logging.getLogger("chatty.tool")


@tool("chatty")
def chatty(ctx: ToolContext) -> dict[str, Any]:
    """print() a line and log one: both must reach the worker log as its structured lines."""
    print("chatty printed this")
    log.info("chatty logged this")
    return {"ok": True}
