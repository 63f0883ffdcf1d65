"""The one table of a run: every figure, its baseline and ratio, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import re
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.runner import Row, Summary

TITLE = "Switchyard benchmarks"


def machine() -> dict[str, str]:
    """What the figures depend on: processor, cores, and the versions of every engine."""
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis": _redis_version(),
        "celery": version("celery"),
        "sqlalchemy": version("sqlalchemy"),
        "fastapi": version("fastapi"),
        "uvicorn": version("uvicorn"),
    }


def render(rows: list[Row], *, console: Console, rounds: int, preset: str) -> None:
    """Print the table, then the machine and the date."""
    table = Table(title=TITLE, title_justify="left", show_lines=False)
    for header, justify in (
        ("part", "left"),
        ("comparison", "left"),
        ("unit", "left"),
        ("switchyard (min-max)", "right"),
        ("baseline", "left"),
        ("baseline (min-max)", "right"),
        ("ratio (min-max)", "right"),
        ("target", "left"),
        ("met", "left"),
        ("notes", "left"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(
            row.part,
            row.what,
            row.unit,
            _summary(row.ours),
            row.baseline_label,
            _summary(row.baseline),
            _summary(row.ratio, suffix="x"),
            row.target,
            {True: "[green]met[/]", False: "[bold red]MISSED[/]", None: ""}[row.met],
            "; ".join(row.notes),
        )
    console.print(table)
    facts = machine()
    console.print(
        f"machine: {facts.pop('cpu')}, {facts.pop('cores')} cores; "
        + ", ".join(f"{name} {value}" for name, value in facts.items()),
        highlight=False,
    )
    console.print(
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; sizes: {preset}; {rounds} rounds per "
        "figure, variants alternated (order rotated each round) after one warm-up round; "
        "ratio = switchyard / baseline per round",
        highlight=False,
    )


def _summary(summary: Summary | None, *, suffix: str = "") -> str:
    if summary is None:
        return ""
    if summary.rounds == 1:
        return f"{_number(summary.median)}{suffix}"
    return f"{_number(summary.median)}{suffix} ({_number(summary.low)}-{_number(summary.high)})"


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def _redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "not installed"
    output = subprocess.run(  # noqa: S603 - the binary found on PATH, one fixed flag
        [binary, "--version"], capture_output=True, text=True, check=False
    ).stdout
    found = re.search(r"v=(\S+)", output)
    return found.group(1) if found else output.strip()
