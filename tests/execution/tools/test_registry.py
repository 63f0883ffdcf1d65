"""The tool registry: ids are unique, lookups name the alternatives, loading fails clearly."""

from __future__ import annotations

from typing import Any

import pytest

from execution.tools import builtin
from execution.tools.registry import (
    Tool,
    ToolContext,
    ToolLoadError,
    ToolRegistry,
    UnknownTool,
    load_registry,
    tool,
    tools_in,
)


def _handler(ctx: ToolContext) -> dict[str, Any]:
    return {}


def test_the_builtin_module_registers_the_six_builtin_tools() -> None:
    assert list(load_registry(["execution.tools.builtin"])) == [
        "fail",
        "find-duplicates",
        "noop",
        "probe",
        "profile-csv",
        "sleep",
    ]


def test_tools_from_several_modules_share_one_registry() -> None:
    registry = load_registry(["execution.tools.builtin", "tests.tools"])

    assert {"noop", "profile-csv", "echo", "chatty"} <= set(registry)
    assert registry["echo"].description == "Return what the tool was given."
    assert registry["urgent"].priority == 7


def test_a_duplicate_tool_id_is_rejected() -> None:
    with pytest.raises(ToolLoadError, match="'noop' is registered twice"):
        ToolRegistry([*tools_in(builtin), Tool(tool_id="noop", handler=_handler)])


def test_an_unknown_tool_names_the_known_ones() -> None:
    registry = ToolRegistry(tools_in(builtin))

    with pytest.raises(UnknownTool) as raised:
        registry["profile_csv"]

    known = ["fail", "find-duplicates", "noop", "probe", "profile-csv", "sleep"]
    assert raised.value.known == known
    assert str(raised.value) == f"unknown tool 'profile_csv'; known tools: {', '.join(known)}"


def test_a_module_that_cannot_be_imported_is_a_clear_load_error() -> None:
    with pytest.raises(ToolLoadError, match=r"SWITCHYARD_TOOLS: cannot import 'no_such\.tools'"):
        load_registry(["execution.tools.builtin", "no_such.tools"])


def test_modules_without_tools_are_a_clear_load_error() -> None:
    with pytest.raises(ToolLoadError, match="register no tools"):
        load_registry(["json"])


def test_a_tool_priority_outside_0_to_9_is_refused() -> None:
    with pytest.raises(ValueError, match="priority must be 0-9"):
        tool("too-urgent", priority=10)
