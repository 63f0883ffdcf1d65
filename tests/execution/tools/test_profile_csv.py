"""profile-csv: the realistic data job, inline or from the data directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from execution.executor import RunOutcome, TaskExecutor
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import InvalidPayload, Tool, ToolRegistry
from tests.helpers import RecordedProgress, call_tool, queued_task

SALES = (
    "id,price,name,active,day,notes\n"
    "1,9.5,apple,true,2024-01-03,\n"
    "2,10,banana,false,2024-02-29,NA\n"
    "3,,cherry,yes,2023-12-31,null\n"
)

SALES_PROFILE = {
    "rows": 3,
    "columns": 6,
    "ragged_rows": 0,
    "profile": [
        {"name": "id", "type": "integer", "nulls": 0, "non_null": 3, "min": 1, "max": 3},
        {"name": "price", "type": "float", "nulls": 1, "non_null": 2, "min": 9.5, "max": 10.0},
        {"name": "name", "type": "string", "nulls": 0, "non_null": 3, "min": None, "max": None},
        {"name": "active", "type": "boolean", "nulls": 0, "non_null": 3, "min": None, "max": None},
        {
            "name": "day",
            "type": "date",
            "nulls": 0,
            "non_null": 3,
            "min": "2023-12-31",
            "max": "2024-02-29",
        },
        {"name": "notes", "type": "empty", "nulls": 3, "non_null": 0, "min": None, "max": None},
    ],
}


@pytest.fixture
def profile_csv(registry: ToolRegistry) -> Tool:
    """The registered profile-csv tool."""
    return registry["profile-csv"]


def _run_failing(executor: TaskExecutor, store: TaskStore, payload: dict[str, Any]) -> str:
    task_id = queued_task(store, tool_id="profile-csv", payload=payload).task_id
    assert executor.run(task_id) is RunOutcome.FAILED
    record = store.get(task_id)
    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert record.error_code == "CsvInputError"
    return record.error_message or ""


def test_inline_csv_is_profiled(profile_csv: Tool, data_dir: Path) -> None:
    assert call_tool(profile_csv, {"csv": SALES}, data_dir=data_dir) == SALES_PROFILE


def test_a_csv_in_the_data_directory_is_profiled_the_same(
    profile_csv: Tool, data_dir: Path
) -> None:
    (data_dir / "in").mkdir()
    (data_dir / "in" / "sales.csv").write_text(SALES, encoding="utf-8")

    assert call_tool(profile_csv, {"path": "in/sales.csv"}, data_dir=data_dir) == SALES_PROFILE


def test_mixed_numbers_widen_to_float_and_mixed_kinds_to_string(
    profile_csv: Tool, data_dir: Path
) -> None:
    text = "n;mixed;tab\n1;1;x\n2.5;2024-01-01;y\n-3;yes;z\n"

    result = call_tool(profile_csv, {"csv": text, "delimiter": ";"}, data_dir=data_dir)

    n, mixed, _ = result["profile"]
    assert (n["type"], n["min"], n["max"]) == ("float", -3.0, 2.5)
    assert (mixed["type"], mixed["min"], mixed["max"]) == ("string", None, None)


def test_short_rows_count_as_ragged_with_nulls(profile_csv: Tool, data_dir: Path) -> None:
    result = call_tool(profile_csv, {"csv": "a,b,c\n1,2,3\n4\n"}, data_dir=data_dir)

    assert (result["rows"], result["ragged_rows"]) == (2, 1)
    assert [column["nulls"] for column in result["profile"]] == [0, 1, 1]


def test_progress_is_reported_once_per_chunk(profile_csv: Tool, data_dir: Path) -> None:
    text = "id,value\n" + "".join(f"{i},{i * 1.5}\n" for i in range(100))
    progress = RecordedProgress()

    result = call_tool(
        profile_csv, {"csv": text, "chunk_rows": 10}, data_dir=data_dir, progress=progress
    )

    assert result["rows"] == 100
    assert [message for _, message in progress.calls] == [
        f"profiled {rows} rows" for rows in range(10, 101, 10)
    ]
    percents = [percent for percent, _ in progress.calls]
    assert percents == sorted(percents)
    assert percents[0] > 0
    assert percents[-1] <= 99


def test_a_path_outside_the_data_directory_is_refused(
    executor: TaskExecutor, store: TaskStore, data_dir: Path
) -> None:
    (data_dir.parent / "secret.csv").write_text("password\nhunter2\n")
    (data_dir / "link.csv").symlink_to(data_dir.parent / "secret.csv")

    for path in ("../secret.csv", str(data_dir.parent / "secret.csv"), "link.csv"):
        message = _run_failing(executor, store, {"path": path})
        assert "outside the data directory" in message
        assert "hunter2" not in message


def test_a_missing_file_is_a_clear_failure(executor: TaskExecutor, store: TaskStore) -> None:
    message = _run_failing(executor, store, {"path": "nowhere.csv"})

    assert message == "no CSV file at 'nowhere.csv' in the data directory"


def test_an_empty_csv_is_a_clear_failure(executor: TaskExecutor, store: TaskStore) -> None:
    assert "no header row" in _run_failing(executor, store, {"csv": ""})


@pytest.mark.parametrize("payload", [{}, {"csv": "a\n1\n", "path": "a.csv"}])
def test_exactly_one_source_is_required(profile_csv: Tool, payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload, match="exactly one"):
        profile_csv.validate_payload(payload)
