"""Purge: cancel every QUEUED task of a tool, a backend or a queue, on both backends at once.

The row is the truth: a purged task ends CANCELLED, its history naming who purged it and why,
and whatever copy its backend still holds (a Celery message, an entry in a thread pool's queue)
finds nothing to claim when it comes up. This is what replaces `celery purge`, which drops the
broker's messages and leaves their rows QUEUED (until the recovery sweep publishes them again).
Tasks already running are not touched; the outcome says how many there are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from backends.celery_app import queues_of
from execution.status import BackendName, TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

Counts = Mapping[str, Mapping[str, int]]
"""Tasks per backend, then per tool."""


class PurgeInvalid(ValueError):
    """A purge names a bad filter, or none; `field` says which. Nothing was changed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class PurgeSelection:
    """Which QUEUED tasks a purge takes: every filter given must hold. No filter at all must
    be asked for (`everything`), so a forgotten option never purges the whole queue."""

    tool_id: str | None = None
    backend: str | None = None
    queue: str | None = None
    """A tool's Celery queue (`@tool(queue=...)`): its tools' tasks, on either backend."""
    everything: bool = False


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    """What a purge cancelled (or, dry, would cancel), and what it left running."""

    dry_run: bool
    cancelled: Counts
    running: Counts
    """PROCESSING tasks of the selection: not touched (`switchyard cancel` stops one)."""

    @property
    def total(self) -> int:
        """Tasks cancelled (or that would be)."""
        return _sum(self.cancelled)

    @property
    def running_total(self) -> int:
        """Tasks of the selection running now."""
        return _sum(self.running)


def purge_queued(
    store: TaskStore,
    registry: ToolRegistry,
    selection: PurgeSelection,
    *,
    actor: str,
    reason: str,
    dry_run: bool,
) -> PurgeOutcome:
    """Cancel the QUEUED tasks `selection` names, in batches; with `dry_run`, only count
    them. Raises PurgeInvalid (or UnknownTool) before anything changes."""
    tool_ids = _tools_of(registry, selection)
    if not reason.strip():
        raise PurgeInvalid("reason", "say why; it is kept in each task's history")

    def chosen(backend: str, tool_id: str) -> bool:
        return (selection.backend is None or backend == selection.backend) and (
            tool_ids is None or tool_id in tool_ids
        )

    if dry_run:
        found = store.tally(TaskStatus.QUEUED, TaskStatus.PROCESSING)
        cancelled = _nest(
            (b, t, n) for (s, b, t), n in found.items() if s is TaskStatus.QUEUED and chosen(b, t)
        )
    else:
        done = store.cancel_queued(
            reason=f"purged by {actor}: {reason}", tool_ids=tool_ids, backend=selection.backend
        )
        cancelled = _nest((b, t, n) for (b, t), n in done.items())
        found = store.tally(TaskStatus.PROCESSING)
    running = _nest(
        (b, t, n) for (s, b, t), n in found.items() if s is TaskStatus.PROCESSING and chosen(b, t)
    )
    outcome = PurgeOutcome(dry_run=dry_run, cancelled=cancelled, running=running)
    if not dry_run:
        log.info(
            "queue.purged",
            actor=actor,
            reason=reason,
            tool_ids=sorted(tool_ids) if tool_ids is not None else "all",
            backend=selection.backend or "all",
            cancelled=outcome.total,
            left_running=outcome.running_total,
        )
    return outcome


def _tools_of(registry: ToolRegistry, selection: PurgeSelection) -> frozenset[str] | None:
    """The tools whose tasks the selection takes; None for every tool."""
    given = (selection.tool_id, selection.backend, selection.queue)
    if selection.everything and any(value is not None for value in given):
        raise PurgeInvalid("all", "purge everything, or give filters (tool, backend, queue)")
    if not selection.everything and all(value is None for value in given):
        raise PurgeInvalid(
            "tool_id", "name a tool, a backend or a queue (or all, for every QUEUED task)"
        )
    if selection.backend is not None and selection.backend not in set(BackendName):
        known = ", ".join(sorted(BackendName))
        raise PurgeInvalid("backend", f"{selection.backend!r} is not a backend; known: {known}")
    tool_ids: frozenset[str] | None = None
    if selection.tool_id is not None:
        tool_ids = frozenset({registry[selection.tool_id].tool_id})  # UnknownTool if not one
    if selection.queue is not None:
        queues = queues_of(registry)
        if selection.queue not in queues:
            known = ", ".join(queues)
            raise PurgeInvalid("queue", f"no tool uses queue {selection.queue!r}; known: {known}")
        on_queue = frozenset(t for t, spec in registry.items() if spec.queue == selection.queue)
        if tool_ids is not None and not tool_ids <= on_queue:
            spec = registry[selection.tool_id or ""]
            raise PurgeInvalid(
                "queue",
                f"tool {spec.tool_id!r} is on queue {spec.queue!r}, not {selection.queue!r}",
            )
        tool_ids = on_queue if tool_ids is None else tool_ids
    return tool_ids


def _nest(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for backend, tool_id, count in rows:
        nested.setdefault(backend, {})[tool_id] = count
    return nested


def _sum(counts: Counts) -> int:
    return sum(n for per_tool in counts.values() for n in per_tool.values())
