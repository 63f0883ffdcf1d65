"""NUL (\\u0000) on a real PostgreSQL, which refuses it in text and jsonb: 422 at the edge, no 500.

The same requests pass on SQLite, which stores NUL happily; only PostgreSQL shows whether a
refused write would have left a rollback unapplied or a task half-created.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from api.runtime import Runtime
from backends.testing import RecordingBackend
from execution import database
from execution.tools.registry import load_registry
from tests.api.conftest import ApiUnderTest, Keyholder, api_settings
from tests.integration.servers import PostgresServer

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_api(postgres_server: PostgresServer, tmp_path: Path) -> Iterator[ApiUnderTest]:
    """The app on a fresh PostgreSQL database; the thread backend only records tasks."""
    url = postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    backend = RecordingBackend(name="thread")
    runtime = Runtime.build(
        api_settings(tmp_path, database_url=url),
        backends={"thread": backend},
        registry=load_registry(["execution.tools.builtin"]),
    )
    database.upgrade(runtime.engine)  # a server database is migrated on purpose, never on start
    # A 500 must show as a 500 here, not as an exception inside the test.
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        yield ApiUnderTest(runtime=runtime, client=client, backend=backend)
    runtime.engine.dispose()


def test_a_nul_in_a_rollback_reason_is_422_and_the_next_rollback_is_applied(
    pg_api: ApiUnderTest,
) -> None:
    ops = _operator(pg_api)
    before = pg_api.client.get("/rollout", headers=ops.headers).json()["version"]

    refused = pg_api.client.post(
        "/rollout/rollback", json={"reason": "bad\x00deploy"}, headers=ops.headers
    )
    applied = pg_api.client.post(
        "/rollout/rollback", json={"reason": "bad deploy"}, headers=ops.headers
    )

    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"] == ["body", "reason"]
    assert "NUL" in refused.json()["detail"]
    assert applied.status_code == 200
    assert applied.json()["percentage"] == 0
    assert applied.json()["version"] == before + 1
    history = pg_api.client.get("/rollout/history", headers=ops.headers).json()
    assert [event["reason"] for event in history if event["action"] == "rollback"] == ["bad deploy"]


@pytest.mark.parametrize(
    "payload",
    [{"text": "a\x00b"}, {"a\x00b": 1}, {"deep": [{"er": ["ok", "not\x00ok"]}]}],
)
def test_a_nul_in_a_task_payload_is_422_and_creates_nothing(
    pg_api: ApiUnderTest, payload: dict[str, object]
) -> None:
    ops = _operator(pg_api)

    response = pg_api.client.post(
        "/tasks", json={"tool_id": "noop", "payload": payload}, headers=ops.headers
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "payload"]
    assert "NUL" in response.json()["detail"]
    assert pg_api.client.get("/tasks", headers=ops.headers).json()["items"] == []
    assert isinstance(pg_api.backend, RecordingBackend)
    assert pg_api.backend.submitted == []


def _operator(api: ApiUnderTest) -> Keyholder:
    issued = api.runtime.keys.create(user_id="ops-oncall", role=Role.OPERATOR)
    return Keyholder(user_id="ops-oncall", key_id=issued.key.key_id, token=issued.token)
