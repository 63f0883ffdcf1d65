"""No secrets in answers or logs: broker and database passwords and API keys are masked."""

from __future__ import annotations

import pytest
import structlog

from backends.base import BackendUnavailable, TaskBackend
from execution.logs import configure_logging
from execution.records import TaskRecord
from tests.api.conftest import BuildApi

BROKER = "redis://:broker-s3cret@redis.internal:6379/0"


class ExplodingBackend(TaskBackend):
    """A backend that fails the way a misconfigured client library does: URL in the message."""

    name = "thread"

    def enqueue(self, task: TaskRecord) -> None:
        raise ConnectionError(f"Error 111 connecting to {BROKER}. Connection refused.")


class RefusingBackend(TaskBackend):
    """A backend that says it is unavailable, naming its broker."""

    name = "thread"

    def enqueue(self, task: TaskRecord) -> None:
        raise BackendUnavailable(f"cannot reach the broker at {BROKER}")


def test_an_unexpected_error_answers_500_without_the_secret_and_logs_it_masked(
    build_api: BuildApi, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(level="INFO", json_output=False)
    auth_api = build_api(backend=ExplodingBackend(), raise_server_exceptions=False)
    user = auth_api.issue("alice")
    response = auth_api.client.post("/tasks", json={"tool_id": "noop"}, headers=user.headers)
    logged = capsys.readouterr().err
    assert response.status_code == 500
    assert "s3cret" not in response.text
    assert "api.unhandled" in logged
    assert "redis://:***@redis.internal:6379/0" in logged
    assert "s3cret" not in logged
    assert user.token.split("_", 2)[2] not in logged


def test_json_logs_mask_the_secret_in_tracebacks_too(
    build_api: BuildApi, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(level="INFO", json_output=True)
    auth_api = build_api(backend=ExplodingBackend(), raise_server_exceptions=False)
    user = auth_api.issue("alice")
    auth_api.client.post("/tasks", json={"tool_id": "noop"}, headers=user.headers)
    logged = capsys.readouterr().err
    assert "redis://:***@redis.internal" in logged
    assert "s3cret" not in logged


def test_a_backend_refusal_names_the_broker_without_its_password(build_api: BuildApi) -> None:
    auth_api = build_api(backend=RefusingBackend())
    user = auth_api.issue("alice")
    response = auth_api.client.post("/tasks", json={"tool_id": "noop"}, headers=user.headers)
    assert response.status_code == 503
    assert (
        response.json()["detail"] == "cannot reach the broker at redis://:***@redis.internal:6379/0"
    )


def test_the_rollout_never_shows_broker_or_database_credentials(build_api: BuildApi) -> None:
    auth_api = build_api(
        redis_url=BROKER, celery_broker_url="amqp://guest:amqp-s3cret@mq.internal:5672//"
    )
    user = auth_api.issue("alice")
    response = auth_api.client.get("/rollout", headers=user.headers)
    assert response.status_code == 200
    assert "s3cret" not in response.text


def test_a_key_in_a_log_line_keeps_only_its_id(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(level="INFO", json_output=False)
    structlog.get_logger("test").warning(
        "auth.header_seen", header="Bearer sy_0123456789abcdef_" + "Q" * 43
    )
    logged = capsys.readouterr().err
    assert "sy_0123456789abcdef_***" in logged
    assert "Q" * 43 not in logged
