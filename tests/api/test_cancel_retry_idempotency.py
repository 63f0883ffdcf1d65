"""Cancel, retry and Idempotency-Key over HTTP, end to end: a real thread pool, SQLite.

Each test runs the app as `switchyard serve` wires it (tests/api/reliability_tools.py), with
a heartbeat of 0.2 s and a thread sweep of 0.05 s, so what the lease keeper and the sweep do
happens within a test's bounded waits. No test asserts how fast anything happened.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.keys import Role
from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.api.conftest import ApiUnderTest, Keyholder
from tests.api.reliability_tools import Tools, reliable_api
from tests.helpers import wait_until

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}

BuildReliable = Callable[..., ApiUnderTest]


@pytest.fixture
def tools() -> Tools:
    """The controllable tools; their `release` is set when the app stops."""
    return Tools()


@pytest.fixture
def build(tmp_path: Path, tools: Tools) -> Iterator[BuildReliable]:
    """Start an app over a real thread pool, settings changed by keyword; all stop at teardown."""
    with ExitStack() as stack:
        built = 0

        def start(**overrides: Any) -> ApiUnderTest:
            nonlocal built
            directory = tmp_path / f"app{built}"
            directory.mkdir()
            built += 1
            return stack.enter_context(reliable_api(directory, tools, **overrides))

        yield start


@pytest.fixture
def api(build: BuildReliable) -> ApiUnderTest:
    """The app with two workers."""
    return build()


@pytest.fixture
def alice(api: ApiUnderTest) -> Keyholder:
    """A user."""
    return api.issue("alice")


@pytest.fixture
def bob(api: ApiUnderTest) -> Keyholder:
    """Another user."""
    return api.issue("bob")


def create(
    api: ApiUnderTest, who: Keyholder, body: dict[str, Any], *, key: str | None = None
) -> dict[str, Any]:
    """POST /tasks as `who`; the new task, checked to be 201."""
    response = post_task(api, who, body, key=key)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def post_task(
    api: ApiUnderTest, who: Keyholder, body: dict[str, Any], *, key: str | None = None
) -> httpx.Response:
    """POST /tasks as `who`, with an Idempotency-Key if given."""
    headers = who.headers | ({"Idempotency-Key": key} if key is not None else {})
    response: httpx.Response = api.client.post("/tasks", json=body, headers=headers)
    return response


def get(api: ApiUnderTest, who: Keyholder, task_id: str) -> dict[str, Any]:
    """GET /tasks/{id} as `who`, checked to be 200."""
    response = api.client.get(f"/tasks/{task_id}", headers=who.headers)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def finished(api: ApiUnderTest, who: Keyholder, task_id: str) -> dict[str, Any]:
    """The task once it has ended."""

    def ended() -> dict[str, Any] | None:
        task = get(api, who, task_id)
        return task if task["status"] in TERMINAL else None

    return wait_until(ended, what=f"task {task_id} to end")


def running(api: ApiUnderTest, who: Keyholder, task_id: str, tools: Tools) -> dict[str, Any]:
    """The task once its tool has started."""
    wait_until(lambda: task_id in tools.started, what=f"the tool of task {task_id} to start")
    task = get(api, who, task_id)
    assert task["status"] == "PROCESSING", task
    return task


def history(api: ApiUnderTest, who: Keyholder, task_id: str) -> list[tuple[str, str | None]]:
    """(status, message) of each event of the task, oldest first."""
    response = api.client.get(f"/tasks/{task_id}/events", headers=who.headers)
    assert response.status_code == 200, response.text
    return [(event["status"], event["message"]) for event in response.json()]


def action(api: ApiUnderTest, who: Keyholder, task_id: str, verb: str) -> httpx.Response:
    """POST /tasks/{id}/cancel or /retry as `who`."""
    response: httpx.Response = api.client.post(f"/tasks/{task_id}/{verb}", headers=who.headers)
    return response


def idle(api: ApiUnderTest) -> bool:
    """Whether no worker of the pool is inside `TaskExecutor.run`."""
    return api.backend.health().counts["running"] == 0


def stored(api: ApiUnderTest, task_id: str) -> TaskRecord:
    """The row as the store has it."""
    record = api.runtime.store.get(task_id)
    assert record is not None
    return record


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_of_a_running_tool_that_reports_progress_ends_it_at_its_next_progress_call(
    build: BuildReliable, tools: Tools
) -> None:
    # A heartbeat this slow cannot be what notices the cancel within the wait.
    api = build(task_heartbeat_seconds=5.0, task_lease_seconds=30.0)
    alice = api.issue("alice")
    task_id = create(api, alice, {"tool_id": "progress-loop"})["task_id"]
    running(api, alice, task_id, tools)

    response = action(api, alice, task_id, "cancel")

    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["task_id"], accepted["status"]) == (task_id, "PROCESSING")
    assert accepted["cancel_requested_at"] is not None
    task = finished(api, alice, task_id)
    assert task["status"] == "CANCELLED", task
    assert (task["result"], task["error_code"]) == (None, None)
    assert tools.stopped[task_id] == "TaskCancelled"  # raised by its progress call
    events = history(api, alice, task_id)
    assert ("PROCESSING", "cancel requested by alice") in events
    assert events[-1] == ("CANCELLED", "cancelled while running")


def test_cancel_of_a_running_tool_that_never_reports_progress_ends_it_at_the_next_heartbeat(
    build: BuildReliable, tools: Tools
) -> None:
    api = build(background_workers=1)
    alice = api.issue("alice")
    task_id = create(api, alice, {"tool_id": "blocks"})["task_id"]
    running(api, alice, task_id, tools)

    response = action(api, alice, task_id, "cancel")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "PROCESSING"
    task = finished(api, alice, task_id)
    assert task["status"] == "CANCELLED", task
    assert task_id not in tools.stopped, "the tool is still blocked: the heartbeat ended it"
    assert history(api, alice, task_id)[-1] == ("CANCELLED", "cancelled while running")
    # The thread stuck in the tool was replaced: the one-worker pool still runs tasks.
    other = create(api, alice, {"tool_id": "noop"})["task_id"]
    assert finished(api, alice, other)["status"] == "COMPLETED"
    # When the tool does return, its result is fenced off: the task stays CANCELLED.
    tools.release.set()
    wait_until(lambda: task_id in tools.stopped, what="the cancelled tool to return")
    wait_until(lambda: idle(api), what="the executor to finish the attempt")
    assert (stored(api, task_id).status, stored(api, task_id).result) == (
        TaskStatus.CANCELLED,
        None,
    )


def test_a_tool_told_to_stop_by_a_cancel_finds_the_task_cancelled_already(
    api: ApiUnderTest, alice: Keyholder, tools: Tools
) -> None:
    """The keeper writes CANCELLED before it sets `stop_requested`: a tool that returns as
    soon as it is told cannot complete the task its caller cancelled."""
    tools.observe = lambda task_id: stored(api, task_id).status
    task_id = create(api, alice, {"tool_id": "waits-for-stop"})["task_id"]
    running(api, alice, task_id, tools)

    assert action(api, alice, task_id, "cancel").status_code == 202

    task = finished(api, alice, task_id)
    assert (task["status"], task["result"]) == ("CANCELLED", None), task
    wait_until(lambda: task_id in tools.stopped, what="the tool to return")
    assert tools.seen_on_stop[task_id] is TaskStatus.CANCELLED
    wait_until(lambda: idle(api), what="the executor to finish the attempt")
    assert stored(api, task_id).status is TaskStatus.CANCELLED
    assert history(api, alice, task_id)[-1] == ("CANCELLED", "cancelled while running")


def test_cancel_of_a_waiting_task_is_200_and_its_tool_never_runs(
    build: BuildReliable, tools: Tools
) -> None:
    api = build(background_workers=1)
    alice = api.issue("alice")
    first = create(api, alice, {"tool_id": "blocks"})["task_id"]
    running(api, alice, first, tools)
    waiting = create(api, alice, {"tool_id": "blocks"})["task_id"]

    response = action(api, alice, waiting, "cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "CANCELLED"
    tools.release.set()
    assert finished(api, alice, first)["status"] == "COMPLETED"
    # The worker takes the cancelled task off its queue next; the claim refuses it.
    wait_until(lambda: api.backend.health().counts["waiting"] == 0, what="the queue to empty")
    wait_until(lambda: api.backend.health().counts["running"] == 0, what="the worker to idle")
    assert waiting not in tools.started
    assert get(api, alice, waiting)["status"] == "CANCELLED"


def test_cancel_of_a_task_waiting_out_its_retry_backoff_is_200_and_it_never_runs_again(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "slow-retry"})["task_id"]
    waiting = wait_until(
        lambda: (t := get(api, alice, task_id))["status"] == "QUEUED" and t["run_after"] and t,
        what="the first attempt to fail and wait for its retry",
    )
    assert (waiting["attempts"], waiting["error_code"]) == (1, "RuntimeError")

    response = action(api, alice, task_id, "cancel")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["run_after"]) == ("CANCELLED", None)
    # A manual retry runs it at once, with the policy's one retry afresh: attempt 2 fails and
    # waits out the backoff again.
    assert action(api, alice, task_id, "retry").status_code == 200
    again = wait_until(
        lambda: (t := get(api, alice, task_id))["attempts"] == 2 and t["run_after"] and t,
        what="the second attempt to fail and wait for its retry",
    )
    assert again["status"] == "QUEUED"
    retries = [m for s, m in history(api, alice, task_id) if (m or "").startswith("retry 1 of 1")]
    assert len(retries) == 2, retries


def test_cancel_of_a_completed_task_is_409_and_changes_nothing(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task = finished(api, alice, create(api, alice, {"tool_id": "noop"})["task_id"])

    response = action(api, alice, task["task_id"], "cancel")

    assert response.status_code == 409, response.text
    assert response.json()["detail"] == (
        f"task {task['task_id']} is COMPLETED; only a waiting or running task can be cancelled"
    )
    assert get(api, alice, task["task_id"]) == task


def test_another_users_task_cannot_be_cancelled_or_retried(
    api: ApiUnderTest, alice: Keyholder, bob: Keyholder, tools: Tools
) -> None:
    blocked = create(api, alice, {"tool_id": "blocks"})["task_id"]
    before = running(api, alice, blocked, tools)
    failed = finished(api, alice, create(api, alice, {"tool_id": "fails-once"})["task_id"])
    assert failed["status"] == "FAILED"

    for task_id, verb in ((blocked, "cancel"), (failed["task_id"], "retry")):
        response = action(api, bob, task_id, verb)
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": f"no task {task_id}"}

    assert get(api, alice, failed["task_id"]) == failed
    now = get(api, alice, blocked)
    assert (now["status"], now["cancel_requested_at"]) == ("PROCESSING", None)
    assert now["attempts"] == before["attempts"] == 1


def test_an_operator_may_cancel_any_users_task(
    api: ApiUnderTest, alice: Keyholder, tools: Tools
) -> None:
    ops = api.issue("ops-oncall", Role.OPERATOR)
    task_id = create(api, alice, {"tool_id": "progress-loop"})["task_id"]
    running(api, alice, task_id, tools)

    assert action(api, ops, task_id, "cancel").status_code == 202

    assert finished(api, alice, task_id)["status"] == "CANCELLED"
    assert ("PROCESSING", "cancel requested by ops-oncall") in history(api, alice, task_id)


# -- retry ---------------------------------------------------------------------------------------


def test_retry_of_a_failed_task_runs_it_again_and_it_completes(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "fails-once"})["task_id"]
    failed = finished(api, alice, task_id)
    assert (failed["status"], failed["attempts"], failed["error_code"]) == (
        "FAILED",
        1,
        "RuntimeError",
    )

    response = action(api, alice, task_id, "retry")

    assert response.status_code == 200, response.text
    queued = response.json()
    assert (queued["task_id"], queued["status"], queued["backend"]) == (task_id, "QUEUED", "thread")
    assert (queued["error_code"], queued["error_message"], queued["failed_at"]) == (
        None,
        None,
        None,
    )
    task = finished(api, alice, task_id)
    assert task["status"] == "COMPLETED", task
    assert (task["attempts"], task["result"]) == (2, {"attempt": 2})
    events = history(api, alice, task_id)
    assert ("QUEUED", "retry requested by alice") in events
    assert [status for status, _ in events].count("FAILED") == 1
    assert events[-1] == ("COMPLETED", "completed")


def test_retry_of_a_task_cancelled_while_running_runs_it_again(
    api: ApiUnderTest, alice: Keyholder, tools: Tools
) -> None:
    task_id = create(api, alice, {"tool_id": "blocks"})["task_id"]
    running(api, alice, task_id, tools)
    assert action(api, alice, task_id, "cancel").status_code == 202
    assert finished(api, alice, task_id)["status"] == "CANCELLED"

    response = action(api, alice, task_id, "retry")

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["cancel_requested_at"]) == ("QUEUED", None)
    wait_until(lambda: tools.started.count(task_id) == 2, what="the second attempt to start")
    tools.release.set()  # both attempts return; only the second one's result counts
    task = finished(api, alice, task_id)
    assert (task["status"], task["attempts"], task["result"]) == (
        "COMPLETED",
        2,
        {"released": True},
    )


def test_retry_of_a_completed_waiting_or_running_task_is_409(
    build: BuildReliable, tools: Tools
) -> None:
    api = build(background_workers=1)
    alice = api.issue("alice")
    completed = finished(api, alice, create(api, alice, {"tool_id": "noop"})["task_id"])
    blocked = create(api, alice, {"tool_id": "blocks"})["task_id"]
    running(api, alice, blocked, tools)
    waiting = create(api, alice, {"tool_id": "noop"})["task_id"]

    for task_id, state in (
        (completed["task_id"], "COMPLETED"),
        (blocked, "PROCESSING"),
        (waiting, "QUEUED"),
    ):
        response = action(api, alice, task_id, "retry")
        assert response.status_code == 409, response.text
        assert response.json()["detail"] == (
            f"task {task_id} is {state}; only a FAILED or CANCELLED task can be retried"
        )

    assert get(api, alice, completed["task_id"]) == completed
    tools.release.set()
    assert finished(api, alice, blocked)["attempts"] == 1
    assert finished(api, alice, waiting)["attempts"] == 1


def test_concurrent_retries_make_exactly_one_new_attempt(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "fails-once"})["task_id"]
    assert finished(api, alice, task_id)["status"] == "FAILED"
    callers = 6
    barrier = threading.Barrier(callers)
    codes: list[int] = []

    def retry() -> None:
        barrier.wait(timeout=10)
        codes.append(action(api, alice, task_id, "retry").status_code)

    threads = [threading.Thread(target=retry) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(codes) == [200] + [409] * (callers - 1)
    task = finished(api, alice, task_id)
    assert (task["status"], task["attempts"]) == ("COMPLETED", 2)
    events = history(api, alice, task_id)
    assert events.count(("QUEUED", "retry requested by alice")) == 1


def test_a_manual_retry_gives_the_tool_its_retry_policy_afresh(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "flaky", "payload": {"failures": 5}})["task_id"]
    failed = finished(api, alice, task_id)
    assert (failed["status"], failed["attempts"]) == ("FAILED", 3)  # once, then two retries

    assert action(api, alice, task_id, "retry").status_code == 200

    task = finished(api, alice, task_id)
    assert (task["status"], task["attempts"], task["result"]) == ("COMPLETED", 6, {"attempt": 6})
    retries = [m for s, m in history(api, alice, task_id) if s == "QUEUED" and m]
    assert [m.split(" in ")[0] for m in retries if re.match(r"retry \d+ of", m)] == [
        "retry 1 of 2",
        "retry 2 of 2",
        "retry 1 of 2",
        "retry 2 of 2",
    ]


# -- the tool's retry policy ---------------------------------------------------------------------


def test_a_tool_failing_twice_is_retried_by_its_policy_and_completes(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "flaky", "payload": {"failures": 2}})["task_id"]

    task = finished(api, alice, task_id)

    assert task["status"] == "COMPLETED", task
    assert (task["attempts"], task["result"]) == (3, {"attempt": 3})
    assert (task["error_code"], task["error_message"]) == (None, None)
    requeues = [m for s, m in history(api, alice, task_id) if s == "QUEUED" and m != "queued"]
    assert len(requeues) == 2, requeues
    assert [(m or "")[: len("retry 1 of 2 in ")] for m in requeues] == [
        "retry 1 of 2 in ",
        "retry 2 of 2 in ",
    ]
    assert all("FlakyError: attempt" in (m or "") for m in requeues)


def test_a_tool_failing_past_its_retries_fails_with_its_last_error(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "flaky", "payload": {"failures": 9}})["task_id"]

    task = finished(api, alice, task_id)

    assert (task["status"], task["attempts"]) == ("FAILED", 3)
    assert (task["error_code"], task["error_message"]) == ("FlakyError", "attempt 3 of 9 that fail")


def test_an_error_the_policy_does_not_retry_on_fails_the_task_at_once(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, {"tool_id": "picky"})["task_id"]

    task = finished(api, alice, task_id)

    assert (task["status"], task["attempts"]) == ("FAILED", 1)
    assert (task["error_code"], task["error_message"]) == ("ValueError", "not a connection problem")
    events = history(api, alice, task_id)
    assert not any((m or "").startswith("retry") for _, m in events), events
    assert [s for s, _ in events] == ["CREATED", "QUEUED", "PROCESSING", "FAILED"]


# -- Idempotency-Key -----------------------------------------------------------------------------


def test_the_same_key_and_request_return_the_first_task(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    body = {"tool_id": "noop", "payload": {"n": 1}, "priority": 3}
    first = post_task(api, alice, body, key="order-17")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    task_id = first.json()["task_id"]

    again = post_task(api, alice, body, key="order-17")

    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["task_id"] == task_id
    # After the task ended, a replay shows it as it is now.
    finished(api, alice, task_id)
    late = post_task(api, alice, body, key="order-17")
    assert (late.status_code, late.json()["task_id"], late.json()["status"]) == (
        200,
        task_id,
        "COMPLETED",
    )
    listed = api.client.get("/tasks", headers=alice.headers).json()["items"]
    assert [t["task_id"] for t in listed] == [task_id]


def test_a_priority_left_to_the_tools_default_replays_as_that_priority(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    first = create(api, alice, {"tool_id": "noop"}, key="k")

    again = post_task(api, alice, {"tool_id": "noop", "priority": 0, "payload": {}}, key="k")

    assert (again.status_code, again.json()["task_id"]) == (200, first["task_id"])


@pytest.mark.parametrize(
    "other",
    [
        {"tool_id": "fails-once", "payload": {"n": 1}},
        {"tool_id": "noop", "payload": {"n": 2}},
        {"tool_id": "noop", "payload": {"n": 1}, "priority": 9},
        {"tool_id": "noop", "payload": {"n": "1"}},
        # JSON true is not 1 (the API coerces neither), though Python's True == 1.
        {"tool_id": "noop", "payload": {"n": True}},
    ],
    ids=["tool", "payload", "priority", "string-for-int", "bool-for-int"],
)
def test_the_same_key_with_another_request_is_422_and_creates_nothing(
    api: ApiUnderTest, alice: Keyholder, other: dict[str, Any]
) -> None:
    first = create(api, alice, {"tool_id": "noop", "payload": {"n": 1}}, key="order-17")

    response = post_task(api, alice, other, key="order-17")

    assert response.status_code == 422, response.text
    assert "Idempotency-Key 'order-17' was used for another request" in response.json()["detail"]
    assert first["task_id"] in response.json()["detail"]
    listed = api.client.get("/tasks", headers=alice.headers).json()["items"]
    assert [t["task_id"] for t in listed] == [first["task_id"]]


def test_keys_are_per_user(api: ApiUnderTest, alice: Keyholder, bob: Keyholder) -> None:
    body = {"tool_id": "noop"}
    mine = create(api, alice, body, key="same-key")

    theirs = post_task(api, bob, body, key="same-key")

    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["task_id"] != mine["task_id"]
    assert theirs.json()["user_id"] == "bob"


def test_concurrent_first_uses_of_a_key_create_one_task(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    callers = 8
    barrier = threading.Barrier(callers)
    answers: list[httpx.Response] = []

    def submit() -> None:
        barrier.wait(timeout=10)
        answers.append(post_task(api, alice, {"tool_id": "noop"}, key="once"))

    threads = [threading.Thread(target=submit) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(answers) == callers
    assert sorted(a.status_code for a in answers) == [200] * (callers - 1) + [201]
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert all(
        a.headers.get("Idempotent-Replayed") == "true" for a in answers if a.status_code == 200
    )
    listed = api.client.get("/tasks", headers=alice.headers).json()["items"]
    assert len(listed) == 1
    assert finished(api, alice, listed[0]["task_id"])["attempts"] == 1


def test_a_key_of_128_printable_characters_is_taken(api: ApiUnderTest, alice: Keyholder) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F))[:94] + "k" * 34

    assert post_task(api, alice, {"tool_id": "noop"}, key=key).status_code == 201
    assert post_task(api, alice, {"tool_id": "noop"}, key=key).status_code == 200


@pytest.mark.parametrize(
    "key",
    ["k" * 129, "a\x01b", "a\x1bb", "a\tb", "a\x7fb", "a b", "", "café"],
    ids=["129-chars", "soh", "escape", "tab", "del", "space", "empty", "non-ascii"],
)
def test_an_invalid_key_is_422_and_creates_nothing(
    api: ApiUnderTest, alice: Keyholder, key: str
) -> None:
    headers = [
        (b"Authorization", f"Bearer {alice.token}".encode()),
        (b"Idempotency-Key", key.encode("utf-8")),  # httpx sends str headers as ASCII only
    ]

    response = api.client.post("/tasks", json={"tool_id": "noop"}, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["header", "idempotency-key"]
    assert api.client.get("/tasks", headers=alice.headers).json()["items"] == []
