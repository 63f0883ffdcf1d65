"""Pausing dispatch: which tools' new tasks wait QUEUED, kept in the stored rollout state so
every process honours it within ROLLOUT_REFRESH_SECONDS and a restart keeps it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dispatch.rollout.state import RolloutState
from dispatch.rollout.store import Transform
from dispatch.rollout.watch import RolloutSource
from execution.dispatch_gate import ALL_TOOLS


class ResumeRefused(Exception):
    """One tool was asked to resume while every tool is paused; nothing was written."""


def pausing(tool_id: str | None) -> Transform:
    """The change pausing `tool_id` (None: every tool); nothing to write if it is paused
    already. Pausing all replaces the per-tool pauses: resuming all resumes everything."""

    def apply(current: RolloutState) -> tuple[RolloutState, Mapping[str, Any] | None] | None:
        if ALL_TOOLS in current.paused or tool_id in current.paused:
            return None
        paused = {ALL_TOOLS} if tool_id is None else {*current.paused, tool_id}
        # The restore point stays: a pause during a rollback must not forget where to return.
        return replace(current, paused=frozenset(paused)), current.restore_point

    return apply


def resuming(tool_id: str | None) -> Transform:
    """The change resuming `tool_id` (None: every tool); nothing to write if it is not
    paused. ResumeRefused for one tool while all are paused: it would stay paused."""

    def apply(current: RolloutState) -> tuple[RolloutState, Mapping[str, Any] | None] | None:
        if tool_id is not None and ALL_TOOLS in current.paused:
            raise ResumeRefused(
                f"dispatch is paused for every tool, so {tool_id} cannot resume alone: resume "
                "all (no tool_id), then pause the tools that must stay paused"
            )
        paused = frozenset() if tool_id is None else current.paused - {tool_id}
        if paused == current.paused:
            return None
        return replace(current, paused=paused), current.restore_point

    return apply


class PauseGate:
    """The execution layer's `DispatchGate` over the rollout this process follows: a copy
    handed over before a pause took effect does not start, and sweeps leave held tasks."""

    def __init__(self, rollout: RolloutSource) -> None:
        self._rollout = rollout

    def held_tools(self) -> frozenset[str]:
        """The paused tools in force here (two attribute reads)."""
        return self._rollout.current().paused
