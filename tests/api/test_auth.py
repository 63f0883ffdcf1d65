"""Who may call what: 401 without a valid key, 404 for another user's task, operators see all."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.api.conftest import ApiUnderTest, Keyholder

ENDPOINTS_NEEDING_A_KEY = [
    ("POST", "/tasks", {"tool_id": "noop"}),
    ("GET", "/tasks", None),
    ("GET", "/tasks/some-task", None),
    ("GET", "/tasks/some-task/events", None),
    ("POST", "/tasks/some-task/cancel", None),
    ("GET", "/rollout", None),
    ("GET", "/tools", None),
]


def create(auth_api: ApiUnderTest, holder: Keyholder, tool_id: str = "noop") -> dict[str, Any]:
    response = auth_api.client.post("/tasks", json={"tool_id": tool_id}, headers=holder.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS_NEEDING_A_KEY)
def test_a_request_without_a_key_gets_401_asking_for_a_bearer_key(
    auth_api: ApiUnderTest, method: str, path: str, body: dict[str, str] | None
) -> None:
    response = auth_api.client.request(method, path, json=body)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="switchyard"'
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer sy_0123456789abcdef_" + "A" * 43,  # well formed, unknown
        "Bearer not-a-key",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
    ],
)
def test_a_wrong_key_gets_401(auth_api: ApiUnderTest, alice: Keyholder, authorization: str) -> None:
    response = auth_api.client.get("/tasks", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="switchyard"')


def test_a_real_key_id_with_a_wrong_secret_gets_401_invalid_token(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    forged = f"sy_{alice.key_id}_" + "B" * 43
    response = auth_api.client.get("/tasks", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_revoked_key_is_refused_from_the_next_request_on(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    assert auth_api.client.get("/tasks", headers=alice.headers).status_code == 200
    auth_api.runtime.keys.revoke(alice.key_id)
    assert auth_api.client.get("/tasks", headers=alice.headers).status_code == 401


def test_a_refused_key_is_logged_without_its_secret(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    forged = f"sy_{alice.key_id}_" + "C" * 43
    with capture_logs() as logs:
        auth_api.client.get("/tasks", headers={"Authorization": f"Bearer {forged}"})
    denied = [entry for entry in logs if entry["event"] == "auth.denied"]
    assert denied
    assert denied[0]["status"] == 401
    assert "C" * 43 not in repr(logs)


def test_health_answers_without_a_key(auth_api: ApiUnderTest) -> None:
    assert auth_api.client.get("/health").status_code == 200


def test_a_task_belongs_to_the_user_whose_key_created_it(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    assert create(auth_api, alice)["user_id"] == "alice"


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("GET", "/events"), ("POST", "/cancel")]
)
def test_another_users_task_is_404_as_if_it_did_not_exist(
    auth_api: ApiUnderTest, alice: Keyholder, bob: Keyholder, method: str, suffix: str
) -> None:
    task = create(auth_api, alice)
    response = auth_api.client.request(
        method, f"/tasks/{task['task_id']}{suffix}", headers=bob.headers
    )
    missing = auth_api.client.request(method, f"/tasks/no-such-task{suffix}", headers=bob.headers)
    assert response.status_code == missing.status_code == 404
    assert response.json()["detail"] == f"no task {task['task_id']}"


def test_another_user_cannot_cancel_a_task(
    auth_api: ApiUnderTest, alice: Keyholder, bob: Keyholder
) -> None:
    task = create(auth_api, alice)
    auth_api.client.post(f"/tasks/{task['task_id']}/cancel", headers=bob.headers)
    mine = auth_api.client.get(f"/tasks/{task['task_id']}", headers=alice.headers).json()
    assert mine["status"] == "QUEUED"


def test_reaching_for_another_users_task_is_logged(
    auth_api: ApiUnderTest, alice: Keyholder, bob: Keyholder
) -> None:
    task = create(auth_api, alice)
    with capture_logs() as logs:
        auth_api.client.get(f"/tasks/{task['task_id']}", headers=bob.headers)
    denied = [entry for entry in logs if entry["event"] == "auth.denied"]
    assert [(d["status"], d["user_id"], d["key_id"]) for d in denied] == [(404, "bob", bob.key_id)]


def test_a_user_lists_only_their_own_tasks(
    auth_api: ApiUnderTest, alice: Keyholder, bob: Keyholder
) -> None:
    mine = {create(auth_api, alice)["task_id"] for _ in range(2)}
    create(auth_api, bob)
    listed = auth_api.client.get("/tasks", headers=alice.headers).json()["items"]
    assert {task["task_id"] for task in listed} == mine


def test_a_user_may_name_their_own_user_id_in_a_listing(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    task = create(auth_api, alice)
    response = auth_api.client.get("/tasks", params={"user_id": "alice"}, headers=alice.headers)
    assert [t["task_id"] for t in response.json()["items"]] == [task["task_id"]]


def test_a_user_asking_for_another_users_tasks_gets_403_and_it_is_logged(
    auth_api: ApiUnderTest, alice: Keyholder, bob: Keyholder
) -> None:
    create(auth_api, bob)
    with capture_logs() as logs:
        response = auth_api.client.get("/tasks", params={"user_id": "bob"}, headers=alice.headers)
    assert response.status_code == 403
    assert any(e["event"] == "auth.denied" and e["status"] == 403 for e in logs)


def test_an_operator_sees_every_task_and_can_narrow_to_one_user(
    auth_api: ApiUnderTest, alice: Keyholder, bob: Keyholder, ops: Keyholder
) -> None:
    alices = create(auth_api, alice)["task_id"]
    bobs = create(auth_api, bob)["task_id"]
    everyone = auth_api.client.get("/tasks", headers=ops.headers).json()["items"]
    only_bob = auth_api.client.get("/tasks", params={"user_id": "bob"}, headers=ops.headers).json()
    assert {t["task_id"] for t in everyone} == {alices, bobs}
    assert [t["task_id"] for t in only_bob["items"]] == [bobs]


def test_an_operator_can_read_and_cancel_another_users_task(
    auth_api: ApiUnderTest, alice: Keyholder, ops: Keyholder
) -> None:
    task = create(auth_api, alice)
    assert auth_api.client.get(f"/tasks/{task['task_id']}/events", headers=ops.headers).is_success
    cancelled = auth_api.client.post(f"/tasks/{task['task_id']}/cancel", headers=ops.headers)
    assert cancelled.json()["status"] == "CANCELLED"
    assert cancelled.json()["message"] == "cancelled by ops-oncall"


def test_an_operators_own_tasks_are_recorded_under_the_operator(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    assert create(auth_api, ops)["user_id"] == "ops-oncall"


def test_a_user_key_reads_the_rollout_and_the_tools(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    assert auth_api.client.get("/rollout", headers=alice.headers).status_code == 200
    assert auth_api.client.get("/tools", headers=alice.headers).status_code == 200


def test_the_openapi_schema_declares_the_bearer_scheme(auth_api: ApiUnderTest) -> None:
    schema = auth_api.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/tasks"]["get"]["security"] == [{"ApiKey": []}]
    # /health answers without a key; with an operator key it adds the detail
    assert schema["paths"]["/health"]["get"]["security"] == [{}, {"ApiKey": []}]
    assert "security" not in schema["paths"]["/health/live"]["get"]
