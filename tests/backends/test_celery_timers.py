"""drop_cancelled on kombu's own Timer: cancelled entries go, live ones keep their order."""

from __future__ import annotations

from kombu.asynchronous.timer import Timer

from backends.celery_app import make_celery_app
from backends.celery_timers import CancelledTimerSweep, drop_cancelled
from backends.settings import CelerySettings
from execution.tools.registry import ToolRegistry


def test_cancelled_entries_are_dropped_and_the_rest_still_fire_in_order() -> None:
    timer, fired = Timer(), list[int]()
    entries = [timer.call_after(100 - n, fired.append, (n,)) for n in range(100)]
    for n, entry in enumerate(entries):
        if n % 10:
            entry.cancel()

    assert drop_cancelled(timer) == 90
    assert len(timer) == 10
    assert drop_cancelled(timer) == 0

    for event in sorted(timer._queue):  # what the loop would fire, soonest first
        event[2]()
    assert fired == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]


def test_every_worker_of_the_app_runs_the_sweep(registry: ToolRegistry) -> None:
    app = make_celery_app(CelerySettings(_env_file=None), registry)
    assert CancelledTimerSweep in app.steps["worker"]
