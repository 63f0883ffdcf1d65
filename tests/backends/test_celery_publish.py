"""What the Celery backend publishes, read back from a fakeredis broker (no worker involved)."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import fakeredis
import kombu.pools
import pytest
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from structlog.testing import capture_logs

from api.settings import Settings
from backends import celery_backend
from backends.base import BackendHealth, BackendUnavailable
from backends.celery_app import (
    BROKER_CONNECT_TIMEOUT,
    BROKER_SOCKET_TIMEOUT,
    PersistenceCheck,
    make_celery_app,
    redis_persists,
    redis_priority,
    tool_task_name,
)
from backends.celery_backend import (
    BREAKER_COOLDOWN_SECONDS,
    PROBE_WAIT_SECONDS,
    CeleryBackend,
    CircuitBreaker,
)
from dispatch.dispatcher import Dispatcher, NewTask
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.watch import StaticRollout
from execution.records import TaskRecord
from execution.settings import SettingsError
from execution.store import TaskFilter, TaskStore
from execution.tools.registry import Tool, ToolContext, ToolRegistry
from tests.helpers import WAIT_SECONDS, queued_task, wait_until

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
    # Each tool's own task name, and the Switchyard task_id as Flower and events show the args.
    assert message["headers"]["task"] == tool_task_name("plain") == "switchyard.tool.plain"
    assert message["headers"]["argsrepr"] == f"task_id={task.task_id}"
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
    # Celery kills 5 s after the hard limit: the executor ends the attempt at 60 s itself.
    assert message["headers"]["timelimit"] == [65, 50]


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


# --- A hung or failing broker: bounded calls, no retry on a timeout, a circuit breaker -------


class Faults:
    """Errors the fake broker raises on its next LPUSHes (one each), and how many it saw."""

    def __init__(self) -> None:
        self.pending: list[BaseException] = []
        self.lpushes = 0


@pytest.fixture
def faults(broker: fakeredis.FakeStrictRedis, monkeypatch: pytest.MonkeyPatch) -> Faults:
    """The fake broker, but each LPUSH first raises the next pending fault, if any."""
    server = broker.connection_pool.connection_kwargs["server"]
    faults = Faults()

    class FaultyRedis(fakeredis.FakeStrictRedis):
        def lpush(self, *args: Any, **kwargs: Any) -> Any:
            faults.lpushes += 1
            if faults.pending:
                raise faults.pending.pop(0)
            return super().lpush(*args, **kwargs)

    def faulty_client_class(_channel: object) -> Any:
        return lambda *args, **kwargs: FaultyRedis(server=server)

    monkeypatch.setattr(kombu_redis.Channel, "_get_client", faulty_client_class)
    return faults


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    """Time for the breaker, standing still until the test advances it."""
    return FakeClock()


@pytest.fixture
def guarded(
    broker: fakeredis.FakeStrictRedis, registry: ToolRegistry, clock: FakeClock
) -> Iterator[CeleryBackend]:
    """A Celery backend that retries refused publishes twice, with a breaker on `clock`."""
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/0")
    backend = CeleryBackend(
        app=make_celery_app(settings, registry),
        registry=registry,
        publish_retries=2,
        breaker=CircuitBreaker(BREAKER_COOLDOWN_SECONDS, clock=clock),
    )
    yield backend
    backend.shutdown(timeout=1)


def celery_task(store: TaskStore) -> TaskRecord:
    """A QUEUED row recorded for Celery, as the dispatcher writes it."""
    return queued_task(store, tool_id="plain", backend="celery")


def waiting(broker: fakeredis.FakeStrictRedis) -> int:
    """How many messages wait in the default queue."""
    return len(published(broker, f"default{PRIORITY_SEP}9"))


def test_every_broker_call_is_bounded_and_the_consumer_can_live_with_it(
    registry: ToolRegistry,
) -> None:
    conf = make_celery_app(Settings(_env_file=None), registry).conf
    options = conf.broker_transport_options
    assert options["socket_connect_timeout"] == BROKER_CONNECT_TIMEOUT
    assert options["socket_timeout"] == BROKER_SOCKET_TIMEOUT
    assert options["retry_on_timeout"] is False
    assert conf.broker_connection_timeout == BROKER_CONNECT_TIMEOUT
    # A worker's BRPOP is answered by Redis within brpop_timeout even when no task comes:
    # a socket timeout shorter than that would break an idle consumer.
    assert options["socket_timeout"] > kombu_redis.Transport.brpop_timeout


def test_a_publish_that_times_out_is_not_retried_and_opens_the_breaker(
    guarded: CeleryBackend, store: TaskStore, faults: Faults, broker: fakeredis.FakeStrictRedis
) -> None:
    faults.pending.append(RedisTimeoutError("Timeout reading from socket"))
    with pytest.raises(BackendUnavailable, match="no answer in") as caught:
        guarded.submit(celery_task(store))
    assert faults.lpushes == 1  # publish_retries=2, but a hung broker is not asked again
    assert caught.value.retry_after >= 1
    # The broker is fine again, but the breaker refuses without asking it.
    with pytest.raises(BackendUnavailable, match="publishing resumes in"):
        guarded.submit(celery_task(store))
    assert faults.lpushes == 1
    assert waiting(broker) == 0


def test_a_refused_connection_is_retried_and_the_task_published(
    guarded: CeleryBackend, store: TaskStore, faults: Faults, broker: fakeredis.FakeStrictRedis
) -> None:
    # What a pooled connection to a Redis that restarted meanwhile gives on first use.
    faults.pending.append(RedisConnectionError("Connection reset by peer"))
    guarded.submit(celery_task(store))
    assert faults.lpushes == 2
    assert waiting(broker) == 1
    guarded.submit(celery_task(store))  # the breaker stayed closed
    assert waiting(broker) == 2


def test_after_the_cool_down_one_trial_publish_closes_the_breaker(
    guarded: CeleryBackend,
    store: TaskStore,
    faults: Faults,
    broker: fakeredis.FakeStrictRedis,
    clock: FakeClock,
) -> None:
    faults.pending.append(RedisTimeoutError("Timeout reading from socket"))
    with pytest.raises(BackendUnavailable):
        guarded.submit(celery_task(store))
    clock.now += BREAKER_COOLDOWN_SECONDS / 2
    with pytest.raises(BackendUnavailable, match="publishing resumes"):
        guarded.submit(celery_task(store))
    clock.now += BREAKER_COOLDOWN_SECONDS
    guarded.submit(celery_task(store))
    guarded.submit(celery_task(store))
    assert waiting(broker) == 2


def test_a_failed_trial_reopens_the_breaker_for_a_full_cool_down(
    guarded: CeleryBackend, store: TaskStore, faults: Faults, clock: FakeClock
) -> None:
    faults.pending.extend(RedisTimeoutError("Timeout") for _ in range(2))
    with pytest.raises(BackendUnavailable):
        guarded.submit(celery_task(store))
    clock.now += BREAKER_COOLDOWN_SECONDS
    with pytest.raises(BackendUnavailable, match="no answer in"):
        guarded.submit(celery_task(store))
    clock.now += BREAKER_COOLDOWN_SECONDS - 0.1
    with pytest.raises(BackendUnavailable, match="publishing resumes"):
        guarded.submit(celery_task(store))
    assert faults.lpushes == 2


def test_the_half_open_breaker_lets_one_trial_through_at_a_time(clock: FakeClock) -> None:
    breaker = CircuitBreaker(5.0, clock=clock)
    assert breaker.admit() == (False, 0.0)
    breaker.failed()
    assert breaker.admit()[1] == pytest.approx(5.0)
    clock.now += 5.0
    assert breaker.admit() == (True, 0.0)
    assert breaker.admit()[1] > 0  # the trial is out: everyone else waits for its verdict
    breaker.abandoned(trial=True)  # it failed for a reason of its own, not the broker's
    assert breaker.admit() == (True, 0.0)
    breaker.succeeded()
    assert breaker.admit() == (False, 0.0)


def test_a_rejected_task_row_is_cancelled_while_the_breaker_is_open(
    guarded: CeleryBackend, store: TaskStore, registry: ToolRegistry, faults: Faults
) -> None:
    dispatcher = Dispatcher(
        store=store,
        registry=registry,
        backends={"celery": guarded},
        rollout=StaticRollout(RolloutPolicy(use_celery=True, percentage=100, salt="s")),
    )
    faults.pending.append(RedisTimeoutError("Timeout reading from socket"))
    for _ in range(2):  # a timed-out publish, then one the breaker refused
        with pytest.raises(BackendUnavailable):
            dispatcher.submit(NewTask(tool_id="plain", payload={}, user_id="u"))
    rows = store.find(TaskFilter(), limit=10, offset=0)
    assert [(r.status, r.error_code) for r in rows] == [("CANCELLED", "REJECTED")] * 2


def test_when_every_pooled_connection_is_stuck_the_next_publish_gives_up_instead_of_queueing(
    broker: fakeredis.FakeStrictRedis,
    registry: ToolRegistry,
    store: TaskStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = make_celery_app(Settings(_env_file=None), registry)
    app.conf.broker_pool_limit = 1
    backend = CeleryBackend(app=app, registry=registry, publish_retries=0)
    stuck, release = threading.Event(), threading.Event()
    lpush = fakeredis.FakeStrictRedis.lpush

    def hung_lpush(self: fakeredis.FakeStrictRedis, *args: Any) -> Any:
        stuck.set()
        release.wait(WAIT_SECONDS)
        return lpush(self, *args)

    monkeypatch.setattr(fakeredis.FakeStrictRedis, "lpush", hung_lpush)
    first = threading.Thread(target=backend.submit, args=(celery_task(store),))
    first.start()
    try:
        assert stuck.wait(WAIT_SECONDS)
        with pytest.raises(BackendUnavailable, match="every pooled connection has been busy"):
            backend.submit(celery_task(store))
    finally:
        release.set()
        first.join(WAIT_SECONDS)
        backend.shutdown(timeout=1)
    assert waiting(broker) == 1  # the first one got through once the broker answered


class BlackHole:
    """A TCP server that accepts connections, reads everything and never answers: a frozen
    Redis (SIGSTOP) or a network black hole, as a client sees it."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.received = 0
        self._peers: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._server.settimeout(0.05)
        while not self._closed.is_set():
            try:
                peer, _ = self._server.accept()
            except TimeoutError:
                pass
            else:
                peer.setblocking(False)
                self._peers.append(peer)
            for peer in self._peers:
                with contextlib.suppress(BlockingIOError, OSError):
                    self.received += len(peer.recv(65536))

    def close(self) -> None:
        """Stop serving and drop every connection."""
        self._closed.set()
        self._thread.join()
        for peer in self._peers:
            peer.close()
        self._server.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A broker address that never answers."""
    hole = BlackHole()
    yield hole
    hole.close()


def test_a_broker_that_never_answers_costs_one_publish_a_socket_timeout_not_a_hang(
    black_hole: BlackHole, store: TaskStore, registry: ToolRegistry
) -> None:
    kombu.pools.reset()
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{black_hole.port}/0")
    backend = CeleryBackend(
        app=make_celery_app(settings, registry), registry=registry, publish_retries=2
    )
    try:
        outcome: list[BaseException] = []

        def publish() -> None:
            try:
                backend.submit(celery_task(store))
            except BackendUnavailable as exc:
                outcome.append(exc)

        first = threading.Thread(target=publish)
        first.start()
        first.join(timeout=BROKER_SOCKET_TIMEOUT + 5)  # generous: proves "does not hang"
        assert not first.is_alive()
        assert "celery broker unreachable" in str(outcome[0])
        sent = black_hole.received
        assert sent > 0  # it did try the broker
        publish()
        assert "publishing resumes" in str(outcome[1])
        assert black_hole.received == sent  # the breaker refused without a word to Redis
        report = backend.health()  # waits at most PROBE_WAIT_SECONDS for the hung probe
        assert report.ok is False
    finally:
        backend.shutdown(timeout=1)
        kombu.pools.reset()


# --- /health: one probe at a time, nobody waits long behind it -------------------------------


def test_health_runs_one_probe_at_a_time_and_answers_while_it_hangs(
    backend: CeleryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    probes: list[int] = []

    def hung_probe() -> BackendHealth:
        probes.append(1)
        release.wait(WAIT_SECONDS)
        return BackendHealth(ok=True, detail={"broker": "b"})

    monkeypatch.setattr(backend, "_probe", hung_probe)
    answers: list[BackendHealth] = []
    callers = [threading.Thread(target=lambda: answers.append(backend.health())) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=PROBE_WAIT_SECONDS + 5)  # generous: proves "does not hang"
    assert not any(caller.is_alive() for caller in callers)
    assert len(probes) == 1
    assert [a.ok for a in answers] == [False] * 8
    assert "no answer within" in str(answers[0].detail["error"])
    release.set()
    wait_until(lambda: backend.health().ok, what="the probe's answer")
    assert len(probes) == 1  # and it is cached


def test_a_failed_probe_spares_the_next_publishes_the_wait(
    backend: CeleryBackend, store: TaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        backend, "_probe", lambda: BackendHealth(ok=False, detail={"error": "Timeout"})
    )
    assert backend.health().ok is False
    with pytest.raises(BackendUnavailable, match="publishing resumes"):
        backend.submit(celery_task(store))


def test_health_reports_a_live_broker_its_queues_and_the_workers_that_answered(
    backend: CeleryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fakeredis runs no Lua, which kombu's broadcast needs: the workers' answers are given
    # here (tests/integration/test_health_and_metrics.py pings real workers).
    answers = [{"w2@host": {"ok": "pong"}}, {"w1@host": {"ok": "pong"}}]
    monkeypatch.setattr(backend._app.control, "ping", lambda **_: answers)

    report = backend.health()

    assert (report.ok, report.state) == (True, "ok")
    assert report.counts["workers"] == 2
    assert report.counts["workers_absent_seconds"] == 0.0
    assert set(report.counts["queues"]) == {"default"} | {  # type: ignore[call-overload]
        spec.queue for spec in backend._registry.values()
    }
    assert report.detail == {
        "broker": "redis://127.0.0.1:6379/0",
        "workers": ["w1@host", "w2@host"],
    }


def test_health_says_no_workers_when_none_answers(
    backend: CeleryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend._app.control, "ping", lambda **_: [])

    report = backend.health()

    assert (report.ok, report.state, report.counts["workers"]) == (True, "no_workers", 0)


# --- Startup: say when Redis would lose queued tasks ------------------------------------------


class ConfigOnly:
    """A Redis client that answers CONFIG GET from a dict, or refuses it."""

    def __init__(self, config: dict[str, str] | None) -> None:
        self.config = config

    def config_get(self, name: str) -> dict[str, str]:
        if self.config is None:
            raise ResponseError("unknown command 'CONFIG'")
        return {name: self.config[name]}


@pytest.mark.parametrize(
    ("config", "persists"),
    [
        ({"appendonly": "no", "save": ""}, False),
        ({"appendonly": "yes", "save": ""}, True),
        ({"appendonly": "no", "save": "3600 1 300 100"}, True),
        (None, None),
    ],
)
def test_redis_persistence_is_read_from_its_config(
    config: dict[str, str] | None, persists: bool | None
) -> None:
    assert redis_persists(ConfigOnly(config)) is persists


def test_startup_says_nothing_when_redis_will_not_show_its_config(
    backend: CeleryBackend,
) -> None:
    with capture_logs() as logs:
        backend.start()  # fakeredis, like many managed Redis, has no CONFIG command
    assert [e for e in logs if e["log_level"] == "warning"] == []
    assert [e["event"] for e in logs] == ["broker.persistence_unknown"]


def test_startup_warns_when_redis_has_no_persistence(
    backend: CeleryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"appendonly": "no", "save": ""}  # the README's own `--save '' --appendonly no`
    monkeypatch.setattr(
        fakeredis.FakeStrictRedis, "config_get", lambda self, name: {name: config[name]}
    )
    with capture_logs() as logs:
        backend.start()
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "broker.no_persistence"
    assert "lost on a Redis restart" in warning["detail"]


def test_a_worker_checks_persistence_when_it_starts(registry: ToolRegistry) -> None:
    app = make_celery_app(Settings(_env_file=None), registry)
    assert PersistenceCheck in app.steps["worker"]


def test_health_answers_the_last_probe_while_the_next_runs_until_it_is_stale(
    backend: CeleryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(celery_backend, "HEALTH_CACHE_SECONDS", 0.0)  # every call probes again
    monkeypatch.setattr(celery_backend, "HEALTH_STALE_SECONDS", 0.5)
    monkeypatch.setattr(backend._app.control, "ping", lambda **_: [{"w@h": {"ok": "pong"}}])
    assert backend.health().ok
    release = threading.Event()

    def hung_probe() -> BackendHealth:
        release.wait(WAIT_SECONDS)
        return BackendHealth(ok=True)

    monkeypatch.setattr(backend, "_probe", hung_probe)
    try:
        # A probe hangs: the last answer serves at once...
        assert backend.health().counts["workers"] == 1

        # ...until it is stale: then the broker counts as down
        def down_now() -> BackendHealth | None:
            report = backend.health()
            return None if report.ok else report

        down = wait_until(down_now, what="the last answer to go stale")
        assert (down.state, down.detail["error"]) == ("broker_down", "no answer within 2 s")
    finally:
        release.set()
