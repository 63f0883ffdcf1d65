"""`switchyard drill` without a deployment: the probe tool, the report's figures, the pacing,
and a whole drill against a small fake of the API (httpx.MockTransport), so the rollout is seen
put back where the drill found it, also when the drill breaks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from api.cli.app import app
from api.cli.drill import DrillError, ProbeStream, call, run_drill, send_probe
from api.cli.drill_report import DrillPlan, Probe, RollbackMark, summarize
from execution.tools.registry import InvalidPayload, ToolRegistry
from tests.helpers import call_tool
from tests.integration.servers import free_port

A, B = "http://a", "http://b"
ROLLBACK = RollbackMark(sent_at=10.0, answered_at=10.1, reclaimed=3)


def probe(seq: int, url: str, at: float, backend: str = "thread") -> Probe:
    """An accepted probe sent at `at`, answered 10 ms later."""
    return Probe(seq, url, at, at + 0.01, 201, f"t{seq}", backend)


def done(*probes: Probe, status: str = "COMPLETED", attempts: int = 1) -> dict[str, Any]:
    """Rows for the probes, all ended alike."""
    return {str(p.task_id): {"status": status, "attempts": attempts} for p in probes}


# -- the probe tool ----------------------------------------------------------------------------


def test_a_probe_returns_its_drill_and_sequence_number(
    registry: ToolRegistry, data_dir: Path
) -> None:
    payload = {"drill": "run1", "seq": 7, "seconds": 0}

    assert call_tool(registry["probe"], payload, data_dir=data_dir) == {"drill": "run1", "seq": 7}


@pytest.mark.parametrize(
    "payload",
    [
        {"seq": 1},
        {"drill": "x" * 65, "seq": 1},
        {"drill": "r", "seq": -1},
        {"drill": "r", "seq": 1, "seconds": 61},
        {"drill": "r", "seq": 1, "extra": True},
    ],
)
def test_a_probe_refuses_a_payload_out_of_shape(registry: ToolRegistry, payload: object) -> None:
    with pytest.raises(InvalidPayload):
        registry["probe"].validate_payload(payload)


# -- the figures -------------------------------------------------------------------------------


def test_routing_after_the_rollback_is_counted_per_process() -> None:
    plan = DrillPlan(urls=(A, B))
    probes = [
        probe(0, A, 9.0, "celery"),
        probe(1, B, 9.5, "celery"),
        probe(2, A, 10.05, "celery"),  # in flight with the rollback: not "after its response"
        probe(3, B, 10.4, "celery"),  # B had not heard of it yet
        probe(4, A, 10.5),
        probe(5, B, 11.0),
    ]

    report = summarize(plan, probes, ROLLBACK, done(*probes), drained_at=12.1)

    a, b = report.processes
    assert (a.celery_before_rollback, a.probes_after_rollback, a.celery_after_rollback) == (1, 1, 0)
    assert (b.celery_before_rollback, b.probes_after_rollback, b.celery_after_rollback) == (1, 2, 1)
    assert a.last_celery_seconds == pytest.approx(0.06)  # the in-flight one's answer
    assert b.last_celery_seconds == pytest.approx(0.41)
    assert report.last_celery_seconds == pytest.approx(0.41)
    assert report.drain_seconds == pytest.approx(2.0)
    assert (report.sent, report.completed, report.lost, report.reclaimed) == (6, 6, 0, 3)
    assert report.problems == []


def test_not_completed_ran_twice_and_refused_probes_each_fail_the_drill() -> None:
    plan = DrillPlan(urls=(A,))
    ok, failed, open_, twice = (probe(n, A, 10.5 + n / 10) for n in range(4))
    refused = Probe(4, A, 10.9, 10.95, 422, None, None, "unknown tool")
    rows = {
        **done(ok),
        **done(failed, status="FAILED"),
        **done(open_, status="QUEUED"),
        **done(twice, attempts=2),
    }

    report = summarize(plan, [ok, failed, open_, twice, refused], ROLLBACK, rows, drained_at=None)

    assert (report.completed, report.failed, report.lost, report.run_twice) == (2, 1, 2, 1)
    assert report.lost_ids == ["t1", "t2"]
    assert report.drain_seconds is None
    assert [p.split(" ")[1] for p in report.problems] == ["probe(s)", "probe(s)", "probe(s)"]
    assert "1 probe(s) not accepted: #4 http://a: 422 unknown tool" in report.problems
    assert report.problems[1].startswith("2 probe(s) lost (not COMPLETED when the drain ended)")
    assert json.loads(report.to_json())["ok"] is False


def test_routing_past_the_bound_or_unseen_after_the_rollback_fails_the_drill() -> None:
    plan = DrillPlan(urls=(A, B), routing_bound=1.0, after=2.0)
    probes = [probe(0, A, 10.5), probe(1, A, 11.5, "celery")]  # none reached B after it

    problems = summarize(plan, probes, ROLLBACK, done(*probes), drained_at=12.0).problems

    assert problems == [
        "routing did not stop within 1 s: http://a routed a probe to Celery 1.51 s after the "
        "rollback",
        "no probe reached http://b after the rollback",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"urls": ()}, "at least one --url"),
        ({"percentage": 0}, "--percentage"),
        ({"after": 2.0, "routing_bound": 2.0}, "--after must be longer than --routing-bound"),
    ],
)
def test_a_plan_that_cannot_prove_anything_is_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DrillPlan(**{"urls": (A,), **change})


# -- sending -----------------------------------------------------------------------------------


class FakeApi:
    """Just enough of the API for a drill: rollout, rollback, restore, tools and probe tasks.

    A probe goes to Celery when the percentage is above 0 for two sequence numbers in four.
    """

    def __init__(self, *, fail_posts: int = 0) -> None:
        self.lock = threading.Lock()
        self.rollout: dict[str, Any] = {
            "use_celery": True,
            "percentage": 5.0,
            "tool_overrides": {"profile-csv": 100.0, "probe": 0.0},
            "stickiness": "user_id",
            "version": 1,
        }
        self.restore_point: dict[str, Any] | None = None
        self.tasks: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        """Every request but probes and reads."""
        self.fail_posts = fail_posts
        self.break_rollback = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Route one request."""
        with self.lock:
            route = f"{request.method} {request.url.path}"
            body = json.loads(request.content) if request.content else {}
            if request.method != "GET" and route != "POST /tasks":
                self.calls.append(route)
            if route == "POST /tasks":
                return self._create(request, body)
            return self._rollout(route, request, body)

    def _create(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        if self.fail_posts:
            self.fail_posts -= 1
            return httpx.Response(500, text="boom")
        key = request.headers["Idempotency-Key"]
        seq = body["payload"]["seq"]
        backend = "celery" if self.rollout["percentage"] and seq // 2 % 2 == 0 else "thread"
        created = key not in self.tasks
        task = self.tasks.setdefault(
            key, {"task_id": key, "backend": backend, "status": "COMPLETED", "attempts": 1}
        )
        return httpx.Response(201 if created else 200, json=task)

    def _rollout(self, route: str, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        if route == "GET /tools":
            return httpx.Response(200, json=[{"tool_id": "probe"}, {"tool_id": "noop"}])
        if route == "GET /tasks":
            return httpx.Response(200, json={"items": list(self.tasks.values())})
        if route == "PUT /rollout":
            assert request.headers["If-Match"] == f'"{self.rollout["version"]}"'
            self._change({k: body[k] for k in ("percentage", "tool_overrides", "stickiness")})
        elif route == "POST /rollout/rollback":
            if self.break_rollback:
                return httpx.Response(503, json={"detail": "database unavailable"})
            self.restore_point = {k: self.rollout[k] for k in ("percentage", "tool_overrides")}
            self._change({"percentage": 0.0, "tool_overrides": {}})
            return httpx.Response(200, json={**self.rollout, "reclaimed": 2})
        elif route == "POST /rollout/restore":
            assert self.restore_point is not None
            self._change(self.restore_point)
        return httpx.Response(200, json=self.rollout)

    def _change(self, fields: dict[str, Any]) -> None:
        self.rollout = {**self.rollout, **fields, "version": self.rollout["version"] + 1}


@pytest.fixture
def fake() -> FakeApi:
    """A fresh fake API."""
    return FakeApi()


@pytest.fixture
def client(fake: FakeApi) -> Iterator[httpx.Client]:
    """One client for both fake processes."""
    with httpx.Client(transport=httpx.MockTransport(fake.handle)) as client:
        yield client


QUICK = {"before": 0.5, "after": 0.4, "routing_bound": 0.2, "rate": 40.0}


def test_probes_go_round_robin_at_the_rate_each_with_its_own_key(
    fake: FakeApi, client: httpx.Client
) -> None:
    plan = DrillPlan(urls=(A, B), rate=40.0)
    stream = ProbeStream(client, plan)
    started = time.monotonic()
    stream.start()
    threading.Event().wait(0.5)
    probes = stream.stop()
    elapsed = time.monotonic() - started

    assert abs(len(probes) - (1 + elapsed * plan.rate)) <= 3  # due at start + n / rate
    assert [p.url for p in probes[:4]] == [A, B, A, B]
    assert all(p.accepted for p in probes)
    assert sorted(fake.tasks) == sorted(f"drill-{plan.run_id}-{p.seq}" for p in probes)


def test_a_probe_answered_500_is_resent_with_the_same_key_and_made_once() -> None:
    fake = FakeApi(fail_posts=1)
    with httpx.Client(transport=httpx.MockTransport(fake.handle)) as client:
        sent = send_probe(client, DrillPlan(urls=(A,)), 3)

    assert (sent.accepted, sent.status_code, len(fake.tasks)) == (True, 201, 1)


def test_a_drill_rolls_back_mid_stream_and_puts_the_rollout_back(
    fake: FakeApi, client: httpx.Client
) -> None:
    before = {k: fake.rollout[k] for k in ("percentage", "tool_overrides", "stickiness")}
    plan = DrillPlan(urls=(A, B), **QUICK)  # type: ignore[arg-type]

    report = run_drill(client, plan)

    assert fake.calls == [
        "PUT /rollout",
        "POST /rollout/rollback",
        "POST /rollout/restore",
        "PUT /rollout",
    ]
    assert {k: fake.rollout[k] for k in before} == before
    assert report.problems == []
    assert (report.reclaimed, report.lost, report.completed) == (2, 0, report.sent)
    assert all(p.celery_before_rollback > 0 for p in report.processes)
    assert report.last_celery_seconds < 0.1  # the fake routes by the rollback at once


def test_a_drill_whose_rollback_fails_still_puts_the_rollout_back(
    fake: FakeApi, client: httpx.Client
) -> None:
    fake.break_rollback = True
    plan = DrillPlan(urls=(A,), **QUICK)  # type: ignore[arg-type]

    with pytest.raises(DrillError, match="rollout/rollback answered 503: database unavailable"):
        run_drill(client, plan)

    assert fake.calls == ["PUT /rollout", "POST /rollout/rollback", "PUT /rollout"]
    assert fake.rollout["percentage"] == 5.0


def test_a_rate_limited_change_is_sent_again_after_retry_after() -> None:
    limited = httpx.Response(429, headers={"Retry-After": "0"})
    answers = iter([limited, httpx.Response(200, json={})])
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request.method)
        return next(answers)

    with httpx.Client(transport=httpx.MockTransport(handle)) as client:
        assert call(client, "PUT", f"{A}/rollout", json={}) == {}

    assert sent == ["PUT", "PUT"]


# -- the command -------------------------------------------------------------------------------


def test_an_unreachable_api_is_one_line_and_exit_2() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = CliRunner().invoke(app, ["drill", "--url", url, "--api-key", "k"])

    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot reach {url}/rollout")
    assert len(result.output.strip().splitlines()) == 1


def test_an_after_shorter_than_the_bound_is_refused_before_anything_is_sent() -> None:
    args = ["drill", "--url", "http://127.0.0.1:1", "--after", "1", "--api-key", "k"]

    result = CliRunner().invoke(app, args)

    assert result.exit_code == 2
    assert result.output == "error: --after must be longer than --routing-bound\n"
