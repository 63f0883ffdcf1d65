"""Keeps a worker's timer heap to the timers that can still fire.

A prefork worker's main process arms a timer for every task it hands to a child: the task's
soft time limit (or its hard one). When the task ends the timer is cancelled, but kombu only
flags it: the entry stays in the heap until the moment it would have fired, `task_soft_time_limit`
later (1,500 s by default). At a few hundred tasks a second that is hundreds of thousands of
dead entries, ~540 B each: a worker whose memory grows for the first 25 minutes of every run.
Dropping the cancelled entries every few seconds keeps the heap to the tasks now running,
while Celery goes on enforcing every limit exactly as before.
"""

from __future__ import annotations

import heapq
from typing import Any

import structlog
from celery import bootsteps
from kombu.asynchronous.timer import Timer

log = structlog.get_logger(__name__)

SWEEP_SECONDS = 5.0
"""How often the heap is swept; what it may hold in between is rate x this many entries."""


def drop_cancelled(timer: Timer) -> int:
    """Remove the cancelled entries from `timer`'s heap, in place; returns how many.

    In place, because the event loop iterates the very list object; it runs in the loop's own
    thread (a timer callback), between two of its steps, so nothing else touches the heap.
    """
    queue: list[Any] = timer._queue  # kombu keeps no public way to prune
    live = [event for event in queue if not event[2].canceled]
    dropped = len(queue) - len(live)
    if dropped:
        heapq.heapify(live)
        queue[:] = live
    return dropped


class CancelledTimerSweep(bootsteps.StartStopStep):
    """Sweeps the worker's event-loop timer every SWEEP_SECONDS (prefork's event loop only)."""

    requires = ("celery.worker.components:Hub",)

    def include_if(self, parent: Any) -> bool:
        """Only where there is an event loop: the pools that run without one arm no timers."""
        return bool(parent.use_eventloop)

    def start(self, parent: Any) -> None:
        """Schedule the sweep on the loop itself, so it never races the loop's own use."""
        parent.hub.call_repeatedly(SWEEP_SECONDS, sweep, parent.hub.timer)


def sweep(timer: Timer) -> None:
    """One sweep, logged (DEBUG) when it dropped something."""
    dropped = drop_cancelled(timer)
    if dropped:
        log.debug("worker.timers_swept", dropped=dropped, left=len(timer))
