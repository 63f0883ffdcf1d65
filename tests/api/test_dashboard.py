"""/dashboard: a page without data served without a key, its local assets, and
/dashboard/activity (operators only): what ended per minute and backend, and the latest failures.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from itertools import pairwise
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.keys import Role
from api.runtime import Runtime
from api.settings import Settings
from execution.activity import MESSAGE_CHARS, read_activity
from execution.records import TASKS
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.api.conftest import ApiUnderTest, Keyholder
from tests.helpers import operator_client, queued_task, wait_until

ASSETS = ("dashboard.css", "dashboard.js")
URL = re.compile(r"https?://[^\s\"'<>)]+")
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
"""The one absolute URL the script holds: a name for createElementNS, never fetched."""


class References(HTMLParser):
    """The URLs the page makes a browser load (scripts, styles, icons, images)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


# ---- the page and its assets ------------------------------------------------------------------


def test_the_page_is_served_without_a_key_and_holds_no_data(auth_api: ApiUnderTest) -> None:
    page = auth_api.client.get("/dashboard")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="rollout-percentage"' in page.text
    assert "sy_" not in page.text.replace("sy_...", "").replace("sy_&lt;", "")


def test_the_page_loads_only_its_own_local_assets(auth_api: ApiUnderTest) -> None:
    page = auth_api.client.get("/dashboard").text
    parser = References()
    parser.feed(page)

    assert sorted(parser.urls) == sorted(f"/dashboard/assets/{name}" for name in ASSETS)
    assert URL.findall(page) == []
    for name in ASSETS:
        asset = auth_api.client.get(f"/dashboard/assets/{name}")
        assert asset.status_code == 200, name
        assert set(URL.findall(asset.text)) <= {SVG_NAMESPACE}, name
    assert (
        auth_api.client.get("/dashboard/assets/dashboard.css")
        .headers["content-type"]
        .startswith("text/css")
    )
    assert (
        "javascript"
        in auth_api.client.get("/dashboard/assets/dashboard.js").headers["content-type"]
    )
    assert auth_api.client.get("/dashboard/assets/nothing.js").status_code == 404


def test_the_script_writes_data_as_text_and_keeps_the_key_out_of_the_address_bar(
    auth_api: ApiUnderTest,
) -> None:
    script = auth_api.client.get("/dashboard/assets/dashboard.js").text

    assert "innerHTML" not in script
    assert "outerHTML" not in script
    assert "insertAdjacentHTML" not in script
    assert "history.replaceState" in script
    assert "sessionStorage" in script
    assert "localStorage" not in script


def test_the_page_is_not_in_the_openapi_schema_and_activity_is(auth_api: ApiUnderTest) -> None:
    paths = auth_api.client.get("/openapi.json").json()["paths"]

    assert "/dashboard" not in paths
    assert set(paths["/dashboard/activity"]["get"]["responses"]) >= {"200", "401", "403", "422"}


# ---- who may read the activity ----------------------------------------------------------------


def test_activity_needs_an_operator_key(
    auth_api: ApiUnderTest, alice: Keyholder, ops: Keyholder
) -> None:
    client = auth_api.client

    anonymous = client.get("/dashboard/activity")
    forged = client.get("/dashboard/activity", headers={"Authorization": "Bearer sy_nope_nope"})
    as_user = client.get("/dashboard/activity", headers=alice.headers)
    as_operator = client.get("/dashboard/activity", headers=ops.headers)

    assert anonymous.status_code == 401
    assert forged.status_code == 401
    assert as_user.status_code == 403
    assert as_user.json() == {"detail": "this needs an operator key"}
    assert as_operator.status_code == 200, as_operator.text


@pytest.mark.parametrize("minutes", ["0", "-1", "1441", "ten", "1.5", ""])
def test_minutes_out_of_bounds_or_not_a_number_is_a_clear_422(
    auth_api: ApiUnderTest, ops: Keyholder, minutes: str
) -> None:
    refused = auth_api.client.get(f"/dashboard/activity?minutes={minutes}", headers=ops.headers)

    assert refused.status_code == 422
    assert [e["loc"] for e in refused.json()["errors"]] == [["query", "minutes"]]


def test_an_unknown_query_parameter_is_refused(auth_api: ApiUnderTest, ops: Keyholder) -> None:
    refused = auth_api.client.get("/dashboard/activity?minute=5", headers=ops.headers)

    assert refused.status_code == 422


@pytest.mark.parametrize("minutes", [1, 15, 1440])
def test_the_series_has_one_bucket_per_minute_ending_with_this_one(
    auth_api: ApiUnderTest, ops: Keyholder, minutes: int
) -> None:
    body = auth_api.client.get(f"/dashboard/activity?minutes={minutes}", headers=ops.headers)
    found = body.json()

    (thread,) = found["backends"]
    assert thread["backend"] == "thread"
    stamps = [datetime.fromisoformat(m["minute"]) for m in thread["per_minute"]]
    assert len(stamps) == minutes == found["minutes"]
    assert stamps[0] == datetime.fromisoformat(found["since"])
    assert all(b - a == timedelta(minutes=1) for a, b in pairwise(stamps))
    assert stamps[-1] <= datetime.fromisoformat(found["until"]) < stamps[-1] + timedelta(minutes=1)
    assert (found["completed"], found["failed"], found["failure_rate"]) == (0, 0, None)
    assert found["recent_failures"] == []


# ---- counts over the real thread backend ------------------------------------------------------


@pytest.fixture
def served(settings: Settings, registry: ToolRegistry) -> Iterator[tuple[TestClient, Runtime]]:
    """The app over the real thread backend, as `switchyard serve` wires it, with an operator."""
    runtime = Runtime.build(settings, registry=registry)
    runtime.prepare_database()
    with operator_client(runtime) as client:
        yield client, runtime


def _run(client: TestClient, tool_id: str, payload: dict[str, Any] | None = None) -> str:
    created = client.post("/tasks", json={"tool_id": tool_id, "payload": payload or {}})
    assert created.status_code == 201, created.text
    task_id: str = created.json()["task_id"]

    def ended() -> bool:
        return client.get(f"/tasks/{task_id}").json()["status"] in {"COMPLETED", "FAILED"}

    wait_until(ended, what=f"{tool_id} task {task_id} to end")
    return task_id


def _thread(found: dict[str, Any]) -> dict[str, Any]:
    (thread,) = [b for b in found["backends"] if b["backend"] == "thread"]
    assert isinstance(thread, dict)
    return thread


def test_counts_move_as_tasks_complete_and_fail_on_the_thread_backend(
    served: tuple[TestClient, Runtime],
) -> None:
    client, _ = served
    before = client.get("/dashboard/activity").json()

    for _ in range(3):
        _run(client, "noop")
    first = _run(client, "fail", {"message": "first failure"})
    second = _run(client, "fail", {"message": "second failure"})
    after = client.get("/dashboard/activity").json()

    assert (before["completed"], before["failed"]) == (0, 0)
    assert (after["completed"], after["failed"], after["failure_rate"]) == (3, 2, 40.0)
    thread = _thread(after)
    assert (thread["completed"], thread["failed"], thread["failure_rate"]) == (3, 2, 40.0)
    assert sum(m["completed"] for m in thread["per_minute"]) == 3
    assert sum(m["failed"] for m in thread["per_minute"]) == 2
    assert len(thread["per_minute"]) == after["minutes"] == 30
    failures = after["recent_failures"]
    assert [f["task_id"] for f in failures] == [second, first]  # newest first
    assert {(f["tool_id"], f["backend"], f["error_code"]) for f in failures} == {
        ("fail", "thread", "ToolFailure")
    }
    assert [f["error_message"] for f in failures] == ["second failure", "first failure"]
    assert all(
        datetime.fromisoformat(after["since"]) <= datetime.fromisoformat(f["ended_at"])
        for f in failures
    )


def test_a_long_error_message_is_cut_and_at_most_ten_failures_are_listed(
    served: tuple[TestClient, Runtime],
) -> None:
    client, _ = served
    for _ in range(11):
        _run(client, "fail", {"message": "x" * 1500})

    found = client.get("/dashboard/activity").json()

    assert found["failed"] == 11
    assert len(found["recent_failures"]) == 10
    message = found["recent_failures"][0]["error_message"]
    assert len(message) == MESSAGE_CHARS
    assert message.endswith("…")


def test_a_user_key_gets_403_from_the_real_app_too(served: tuple[TestClient, Runtime]) -> None:
    client, runtime = served
    user = runtime.keys.create(user_id="alice", role=Role.USER)

    refused = client.get("/dashboard/activity", headers={"Authorization": f"Bearer {user.token}"})

    assert refused.status_code == 403


# ---- the counting itself, at exact times ------------------------------------------------------

NOW = datetime(2025, 3, 4, 12, 30, 20, 500_000, tzinfo=UTC)


def _ended(
    engine: Engine,
    store: TaskStore,
    *,
    at: datetime,
    status: TaskStatus,
    backend: str = "thread",
    tool_id: str = "noop",
    message: str | None = None,
) -> str:
    task = queued_task(store, tool_id=tool_id, backend=backend)
    with engine.begin() as conn:
        conn.execute(
            TASKS.update()
            .where(TASKS.c.task_id == task.task_id)
            .values(
                status=status,
                updated_at=at,
                error_code="Boom" if status is TaskStatus.FAILED else None,
                error_message=message,
            )
        )
    return task.task_id


def check_minute_buckets(engine: Engine) -> None:
    """Tasks ended at exact times land in the right UTC minute, on SQLite and PostgreSQL."""
    store = TaskStore(engine)
    minute = NOW.replace(second=0, microsecond=0)
    _ended(engine, store, at=minute - timedelta(microseconds=1), status=TaskStatus.COMPLETED)
    _ended(engine, store, at=minute, status=TaskStatus.COMPLETED)
    _ended(engine, store, at=NOW, status=TaskStatus.COMPLETED)
    oldest = _ended(
        engine, store, at=minute - timedelta(minutes=29), status=TaskStatus.FAILED, message="old"
    )
    newest = _ended(
        engine,
        store,
        at=minute - timedelta(minutes=15, seconds=-30),
        status=TaskStatus.FAILED,
        backend="celery",
        tool_id="profile-csv",
        message="late",
    )
    # Outside the window, or not COMPLETED/FAILED: not counted.
    _ended(
        engine, store, at=minute - timedelta(minutes=29, microseconds=1), status=TaskStatus.FAILED
    )
    _ended(engine, store, at=NOW + timedelta(seconds=1), status=TaskStatus.COMPLETED)
    _ended(engine, store, at=minute, status=TaskStatus.CANCELLED)
    queued_task(store)

    found = read_activity(engine, now=NOW, minutes=30, backends=["thread"])

    assert found.since == minute - timedelta(minutes=29)
    assert (found.completed, found.failed, found.failure_rate) == (3, 2, 40.0)
    thread, celery = found.backends
    assert (thread.backend, celery.backend) == ("thread", "celery")
    assert [
        (m.minute, m.completed, m.failed) for m in thread.per_minute if m.completed or m.failed
    ] == [
        (minute - timedelta(minutes=29), 0, 1),
        (minute - timedelta(minutes=1), 1, 0),
        (minute, 2, 0),
    ]
    assert [(m.minute, m.failed) for m in celery.per_minute if m.failed] == [
        (minute - timedelta(minutes=15), 1)
    ]
    assert (celery.completed, celery.failed, celery.failure_rate) == (0, 1, 100.0)
    assert [f.task_id for f in found.recent_failures] == [newest, oldest]
    assert found.recent_failures[0].backend == "celery"
    assert found.recent_failures[0].tool_id == "profile-csv"
    assert found.recent_failures[0].error_message == "late"
    assert found.recent_failures[0].ended_at == minute - timedelta(minutes=14, seconds=30)

    one = read_activity(engine, now=NOW, minutes=1, backends=["thread", "celery"], recent=1)
    assert [(b.backend, b.completed, b.failed) for b in one.backends] == [
        ("thread", 2, 0),
        ("celery", 0, 0),
    ]
    assert one.recent_failures == []


def test_tasks_land_in_the_utc_minute_they_ended_in(engine: Engine) -> None:
    check_minute_buckets(engine)


def test_a_window_of_no_minutes_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        read_activity(engine, now=NOW, minutes=0)
