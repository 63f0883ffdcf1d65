"""Schemathesis against the app's own OpenAPI schema, in-process, as a user and as an operator.

Every operation gets generated requests, valid (positive) and invalid (negative); every
response must be a non-5xx status the schema declares, with the declared content type,
headers and body shape, and invalid requests must be refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.keys import Role
from api.routes import task_stream
from tests.api.conftest import BuildApi, Keyholder

Operation = schemathesis.APIOperation[Any, Any, Any, Any]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Derandomized so CI replays the same cases: a red build always means a real change. No
# shrinking: the failure report carries a curl line, and shrinking a 500 takes minutes.
FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def first_failure(
    operation: Operation,
    mode: GenerationMode,
    caller: Keyholder,
    path_parameters: dict[str, str] | None,
) -> str | None:
    """What Hypothesis finds wrong with `operation`, or None."""
    checks = CHECKS if mode.is_positive else [*CHECKS, negative_data_rejection]
    cases = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @FUZZ
    @given(case=cases)
    def run(case: schemathesis.Case[Operation]) -> None:
        case.call_and_validate(headers=caller.headers, checks=checks)

    try:
        run()
    except Unsatisfiable:
        return None  # an operation without inputs has no invalid request to make
    except Exception as exc:
        return f"{operation.method.upper()} {operation.path} {path_parameters or ''}: {exc}"
    return None


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("role", [Role.USER, Role.OPERATOR])
def test_every_operation_answers_within_its_schema_and_never_with_a_5xx(
    build_api: BuildApi, role: Role, mode: GenerationMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its tasks stay QUEUED (the backend only records them): their streams must end at once.
    monkeypatch.setattr(task_stream, "MAX_STREAM_SECONDS", 0.0)
    auth_api = build_api()
    caller = auth_api.issue("fuzzer", role)
    someone_else = auth_api.issue("someone-else")
    task_ids = [
        auth_api.client.post("/tasks", json={"tool_id": "noop"}, headers=holder.headers).json()[
            "task_id"
        ]
        for holder in (caller, someone_else)
    ]
    schema = schemathesis.openapi.from_asgi("/openapi.json", auth_api.client.app)
    operations = [r.ok() for r in schema.get_all_operations() if isinstance(r, Ok)]
    assert len(operations) == 27
    runs: list[tuple[Operation, dict[str, str] | None]] = [(op, None) for op in operations]
    if mode.is_positive:  # random ids almost never exist: aim at real tasks as well
        runs += [
            (op, {"task_id": task_id})
            for op in operations
            if "{task_id}" in op.path
            for task_id in task_ids
        ]
    failures = [f for op, ids in runs if (f := first_failure(op, mode, caller, ids)) is not None]
    assert failures == []
