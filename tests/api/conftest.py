"""Fixtures for the API's auth and limits tests: a fresh app on its own SQLite file, and keys."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from api.runtime import Runtime
from api.settings import Settings
from backends.base import TaskBackend
from backends.testing import RecordingBackend
from execution.tools.registry import load_registry


@dataclass(frozen=True)
class Keyholder:
    """Someone holding an API key, as a test sends it."""

    user_id: str
    key_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header carrying the key."""
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class ApiUnderTest:
    """A running app, its runtime, and a client talking to it in-process."""

    runtime: Runtime
    client: TestClient
    backend: TaskBackend

    def issue(self, user_id: str, role: Role = Role.USER) -> Keyholder:
        """A new key for `user_id`."""
        issued = self.runtime.keys.create(user_id=user_id, role=role)
        return Keyholder(user_id=user_id, key_id=issued.key.key_id, token=issued.token)


BuildApi = Callable[..., ApiUnderTest]


def api_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for one test: its own database and key file, no `.env`, no Celery."""
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'switchyard.db'}",
        "operator_key_file": tmp_path / "keys" / "operator.key",
        "switchyard_data_dir": tmp_path / "data",
        "use_celery": False,
        "cors_origins": "",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def build_api(tmp_path: Path) -> Iterator[BuildApi]:
    """Build an app with some settings changed; the thread backend only records tasks."""
    clients: list[TestClient] = []

    def build(
        *,
        backend: TaskBackend | None = None,
        routers: tuple[APIRouter, ...] = (),
        raise_server_exceptions: bool = True,
        **overrides: Any,
    ) -> ApiUnderTest:
        directory = tmp_path / f"app{len(clients)}"
        directory.mkdir()
        settings = api_settings(directory, **overrides)
        backend = backend or RecordingBackend(name="thread")
        runtime = Runtime.build(
            settings,
            backends={"thread": backend},
            registry=load_registry(["execution.tools.builtin"]),
        )
        runtime.prepare_database()
        app = create_app(runtime)
        for router in routers:
            app.include_router(router)
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.__enter__()
        clients.append(client)
        return ApiUnderTest(runtime=runtime, client=client, backend=backend)

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def auth_api(build_api: BuildApi) -> ApiUnderTest:
    """The app with default settings."""
    return build_api()


@pytest.fixture
def alice(auth_api: ApiUnderTest) -> Keyholder:
    """A user."""
    return auth_api.issue("alice")


@pytest.fixture
def bob(auth_api: ApiUnderTest) -> Keyholder:
    """Another user."""
    return auth_api.issue("bob")


@pytest.fixture
def ops(auth_api: ApiUnderTest) -> Keyholder:
    """An operator."""
    return auth_api.issue("ops-oncall", Role.OPERATOR)
