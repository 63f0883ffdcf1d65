"""What the Celery backend publishes, read back from a fakeredis broker (no worker involved)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import kombu.pools
import pytest
from kombu.transport import redis as kombu_redis

from api.settings import Settings
from backends.base import BackendUnavailable
from backends.celery_app import RUN_TASK, make_celery_app, redis_priority
from backends.celery_backend import CeleryBackend
from dispatch.dispatcher import Dispatcher, NewTask
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.watch import StaticRollout
from execution.settings import SettingsError
from execution.store import TaskFilter, TaskStore
from execution.tools.registry import Tool, ToolContext, ToolRegistry

PRIORITY_SEP = "\x06\x16"  # kombu's separator between a queue and its priority step


def report(ctx: ToolContext) -> dict[str, Any]:
    """Stands in for a slow reporting job routed to its own queue."""
    return {}


@pytest.fixture
def registry() -> ToolRegistry:
    """One tool with its own queue and time limits, one with the defaults."""
    return ToolRegistry(
        [
            Tool(
                tool_id="report", handler=report, queue="reports", time_limit=60, soft_time_limit=50
            ),
            Tool(tool_id="plain", handler=report),
        ]
    )


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[fakeredis.FakeStrictRedis]:
    """kombu's Redis transport talking to an in-memory fakeredis server."""
    server = fakeredis.FakeServer()

    def fake_client_class(_channel: object) -> Any:
        return lambda *args, **kwargs: fakeredis.FakeStrictRedis(server=server)

    monkeypatch.setattr(kombu_redis.Channel, "_get_client", fake_client_class)
    kombu.pools.reset()  # kombu keeps producer connections per URL, across Celery apps
    yield fakeredis.FakeStrictRedis(server=server)
    kombu.pools.reset()


@pytest.fixture
def backend(broker: fakeredis.FakeStrictRedis, registry: ToolRegistry) -> Iterator[CeleryBackend]:
    """A Celery backend publishing to the fake broker."""
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/0")
    backend = CeleryBackend(
        app=make_celery_app(settings, registry), registry=registry, publish_retries=0
    )
    yield backend
    backend.shutdown(timeout=1)


@pytest.fixture
def dispatcher(store: TaskStore, registry: ToolRegistry, backend: CeleryBackend) -> Dispatcher:
    """Every task to Celery."""
    return Dispatcher(
        store=store,
        registry=registry,
        backends={"celery": backend},
        rollout=StaticRollout(RolloutPolicy(use_celery=True, percentage=100, salt="s")),
    )


def published(broker: fakeredis.FakeStrictRedis, key: str) -> list[dict[str, Any]]:
    """The messages waiting in one Redis list, oldest first."""
    return [json.loads(raw) for raw in reversed(broker.lrange(key, 0, -1))]


def test_the_message_carries_only_the_task_id_as_json(
    dispatcher: Dispatcher, broker: fakeredis.FakeStrictRedis
) -> None:
    task = dispatcher.submit(NewTask(tool_id="plain", payload={"big": "x" * 100}, user_id="u"))
    (message,) = published(broker, f"default{PRIORITY_SEP}9")
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == RUN_TASK
    assert message["headers"]["id"] == task.celery_task_id
    assert message["headers"]["switchyard_tool_id"] == "plain"
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([task.task_id], {})


def test_the_tool_registration_picks_queue_and_time_limits(
    dispatcher: Dispatcher, broker: fakeredis.FakeStrictRedis
) -> None:
    dispatcher.submit(NewTask(tool_id="report", payload={}, user_id="u", priority=9))
    (message,) = published(broker, "reports")
    assert message["properties"]["delivery_info"]["routing_key"] == "reports"
    assert message["headers"]["timelimit"] == [60, 50]


@pytest.mark.parametrize(
    ("priority", "key"),
    [(9, "default"), (5, f"default{PRIORITY_SEP}4"), (0, f"default{PRIORITY_SEP}9")],
)
def test_priority_maps_onto_redis_priority_steps(
    dispatcher: Dispatcher, broker: fakeredis.FakeStrictRedis, priority: int, key: str
) -> None:
    dispatcher.submit(NewTask(tool_id="plain", payload={}, user_id="u", priority=priority))
    (message,) = published(broker, key)
    assert message["properties"]["priority"] == redis_priority(priority)


def test_the_row_is_queued_with_the_published_celery_id(
    dispatcher: Dispatcher, store: TaskStore, broker: fakeredis.FakeStrictRedis
) -> None:
    task = dispatcher.submit(NewTask(tool_id="plain", payload={}, user_id="u"))
    row = store.get(task.task_id)
    assert row is not None
    assert (row.status, row.backend) == ("QUEUED", "celery")
    (message,) = published(broker, f"default{PRIORITY_SEP}9")
    assert row.celery_task_id == message["headers"]["id"]
    assert [e.status for e in store.events(task.task_id)] == ["CREATED", "QUEUED"]


def test_an_unreachable_broker_is_a_clear_backend_error_and_nothing_runs_on_threads(
    store: TaskStore, registry: ToolRegistry
) -> None:
    settings = Settings(_env_file=None, redis_url="redis://:secret@127.0.0.1:9/0")
    celery = CeleryBackend(
        app=make_celery_app(settings, registry), registry=registry, publish_retries=0
    )
    dispatcher = Dispatcher(
        store=store,
        registry=registry,
        backends={"celery": celery},
        rollout=StaticRollout(RolloutPolicy(use_celery=True, percentage=100, salt="s")),
    )
    with pytest.raises(BackendUnavailable, match="celery broker unreachable") as caught:
        dispatcher.submit(NewTask(tool_id="plain", payload={}, user_id="u"))
    assert "secret" not in caught.value.reason
    (row,) = store.find(TaskFilter(), limit=10, offset=0)
    assert (row.status, row.backend, row.error_code) == ("CANCELLED", "celery", "REJECTED")
    assert row.message is not None
    assert "celery broker unreachable" in row.message


def test_the_app_is_configured_for_long_jobs_and_json_only(registry: ToolRegistry) -> None:
    conf = make_celery_app(Settings(_env_file=None), registry).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_backend is None
    assert conf.task_ignore_result is True
    assert conf.worker_send_task_events is True
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_a_tool_time_limit_beyond_the_visibility_timeout_is_refused() -> None:
    slow = ToolRegistry([Tool(tool_id="slow", handler=report, time_limit=7200)])
    with pytest.raises(SettingsError, match="CELERY_VISIBILITY_TIMEOUT"):
        make_celery_app(Settings(_env_file=None), slow)
