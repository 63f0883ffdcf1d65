"""`python -m benchmarks` refuses what it cannot run before starting anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from benchmarks.__main__ import app


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--store", "mysql"], "unknown store mysql; known: sqlite, postgresql"),
        (["--only", "speed"], "unknown comparison speed"),
        (["--quick", "--full"], "--quick and --full exclude each other"),
    ],
)
def test_a_bad_option_is_refused_with_what_is_known(arguments: list[str], named: str) -> None:
    done = CliRunner().invoke(app, arguments)

    assert done.exit_code == 2
    assert named in " ".join(done.output.split())
    assert "Traceback" not in done.output
