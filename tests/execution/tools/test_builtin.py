"""The built-in tools: noop, sleep and fail do what their names say."""

from __future__ import annotations

from pathlib import Path

import pytest

from execution.tools.builtin import ToolFailure
from execution.tools.registry import InvalidPayload, ToolRegistry
from tests.helpers import RecordedProgress, call_tool


def test_noop_returns_at_once(registry: ToolRegistry, data_dir: Path) -> None:
    progress = RecordedProgress()

    assert call_tool(registry["noop"], {}, data_dir=data_dir, progress=progress) == {"ok": True}
    assert progress.calls == []


def test_sleep_reports_progress_in_steps(registry: ToolRegistry, data_dir: Path) -> None:
    progress = RecordedProgress()

    result = call_tool(
        registry["sleep"], {"seconds": 0, "steps": 4}, data_dir=data_dir, progress=progress
    )

    assert result == {"slept_seconds": 0}
    assert progress.calls == [
        (25.0, "slept step 1 of 4"),
        (50.0, "slept step 2 of 4"),
        (75.0, "slept step 3 of 4"),
        (100.0, "slept step 4 of 4"),
    ]


@pytest.mark.parametrize(
    "payload", [{"seconds": -1}, {"seconds": 3601}, {"steps": 0}, {"minutes": 1}]
)
def test_sleep_refuses_a_payload_out_of_range(registry: ToolRegistry, payload: object) -> None:
    with pytest.raises(InvalidPayload, match="sleep"):
        registry["sleep"].validate_payload(payload)


def test_fail_raises_with_its_message_after_its_progress(
    registry: ToolRegistry, data_dir: Path
) -> None:
    progress = RecordedProgress()

    with pytest.raises(ToolFailure, match=r"^as planned$"):
        call_tool(
            registry["fail"],
            {"message": "as planned", "after_percent": 60},
            data_dir=data_dir,
            progress=progress,
        )

    assert progress.calls == [(60, "about to fail")]
