"""The Celery baselines: a no-op task on plain Celery, for `celery -A benchmarks.plain_celery_app`.

Two apps, both with the transport settings Switchyard's app uses (late acks, one message per
process at a time, JSON, ten priority steps, task events), so the comparison shows what
Switchyard adds per task rather than what those reliability choices cost:

- `app`: no result backend, results ignored (the issue's "plain Celery").
- `tracked_app`: the status rows a team would otherwise get from Celery itself: a SQLAlchemy
  database result backend (`--result-backend db+sqlite:///...` or
  `db+postgresql+psycopg://...`) and `task_track_started`.

The broker (and the result backend) come from the worker's command line (`--broker`,
`--result-backend`), so importing this module reads no environment.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

NOOP = "bench.noop"
QUEUE = "default"
PRIORITY_LEVELS = 10


def make_app(name: str, *, tracked: bool, broker_url: str | None = None) -> Celery:
    """A plain Celery app with the no-op task registered (publishers pass the broker)."""
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_ignore_result=not tracked,
        task_track_started=tracked,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"priority_steps": list(range(PRIORITY_LEVELS))},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
    )
    # One function for every app: Celery warns of a task name taken by another callable.
    app.task(name=NOOP)(noop)
    return app


def noop() -> dict[str, Any]:
    """The task: nothing, returned at once."""
    return {"ok": True}


app = make_app("plain", tracked=False)
tracked_app = make_app("tracked", tracked=True)
