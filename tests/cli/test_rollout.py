"""`switchyard rollout`: a percentage out of range is refused before any request, naming why."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from api.cli.app import app

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a request would fail differently


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["set", "150", "--reason", "typo"], "150 is outside 0-100"),
        (["set", "nan", "--reason", "typo"], "nan is not a number"),
        (["preview", "--", "-1"], "-1 is outside 0-100"),
        (["set", "5", "--tool", "noop=101", "--reason", "x"], "'noop=101' is not TOOL=PERCENT"),
        (["set", "5", "--tool", "noop", "--reason", "x"], "'noop' is not TOOL=PERCENT"),
    ],
)
def test_a_percentage_outside_0_to_100_is_refused_with_the_reason(
    args: list[str], reason: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["rollout", *args, "--url", UNREACHABLE, "--api-key", "sy_key"],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 2
    assert reason in result.output
    assert "cannot reach the API" not in result.output
