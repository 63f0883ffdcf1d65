"""Which tools' tasks must not start now (an operator paused their dispatch), as the executor
and the backends' sweeps ask it: they cannot read the rollout, which lives above them."""

from __future__ import annotations

from typing import Protocol

ALL_TOOLS = "*"
"""In a set of held tools: every tool."""


class DispatchGate(Protocol):
    """Tells whoever is about to start a task whether its tool is held."""

    def held_tools(self) -> frozenset[str]:
        """The tools held now (ALL_TOOLS: every one). Asked before every run: empty, the usual
        case, must cost no more than an attribute read."""
        ...


def is_held(held: frozenset[str], tool_id: str) -> bool:
    """Whether `held` holds the tasks of `tool_id`."""
    return bool(held) and (ALL_TOOLS in held or tool_id in held)


def held_message(tool_id: str) -> str:
    """The message (and history line) of a task waiting QUEUED because its tool is paused."""
    return f"held: dispatch of {tool_id} is paused; it starts when it is resumed"
