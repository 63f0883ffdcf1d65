"""`profile-csv`: a realistic data job that streams a CSV and profiles each column."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Self, TextIO

from pydantic import BaseModel, ConfigDict, Field, model_validator

from execution.tools.data_paths import DataPathError, resolve_data_path
from execution.tools.registry import ToolContext, tool

NULL_MARKERS = frozenset({"", "na", "n/a", "null", "none", "nan"})
TRUE_WORDS = frozenset({"true", "yes"})
FALSE_WORDS = frozenset({"false", "no"})
# Wider types win: a column with one float and many ints is a float column.
TYPE_ORDER = ("boolean", "integer", "float", "date", "string")


class ProfileCsvPayload(BaseModel):
    """Either inline `csv` text or a `path` under the data directory."""

    model_config = ConfigDict(extra="forbid")

    csv: str | None = Field(default=None, max_length=5_000_000)
    path: str | None = Field(default=None, max_length=1024)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    chunk_rows: int = Field(default=5_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if (self.csv is None) == (self.path is None):
            raise ValueError("give exactly one of `csv` (inline text) or `path`")
        return self


class CsvInputError(ValueError):
    """The CSV cannot be read: missing file, path outside the data directory, no header."""


@dataclass
class ColumnProfile:
    """Running statistics of one column."""

    name: str
    nulls: int = 0
    values: int = 0
    kinds: set[str] = field(default_factory=set)
    low: float | str | None = None
    high: float | str | None = None

    def add(self, raw: str) -> None:
        """Account for one cell."""
        text = raw.strip()
        if text.lower() in NULL_MARKERS:
            self.nulls += 1
            return
        self.values += 1
        kind, value = _classify(text)
        self.kinds.add(kind)
        if kind in ("integer", "float", "date"):
            comparable: float | str = value if isinstance(value, float) else str(value)
            if self.low is None or _lt(comparable, self.low):
                self.low = comparable
            if self.high is None or _lt(self.high, comparable):
                self.high = comparable

    def summary(self) -> dict[str, Any]:
        """The column's profile as JSON."""
        inferred = _widest(self.kinds)
        numeric = inferred in ("integer", "float", "date")
        low, high = (self.low, self.high) if numeric else (None, None)
        if inferred == "integer":
            low, high = (int(v) if isinstance(v, float) else v for v in (low, high))
        return {
            "name": self.name,
            "type": inferred,
            "nulls": self.nulls,
            "non_null": self.values,
            "min": low,
            "max": high,
        }


def _lt(a: float | str, b: float | str) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a < b
    return str(a) < str(b)


def _classify(text: str) -> tuple[str, float | str]:
    lowered = text.lower()
    if lowered in TRUE_WORDS or lowered in FALSE_WORDS:
        return "boolean", lowered
    try:
        return "integer", float(int(text))
    except ValueError:
        pass
    try:
        number = float(text)
        if math.isfinite(number):
            return "float", number
    except ValueError:
        pass
    try:
        return "date", date.fromisoformat(text).isoformat()
    except ValueError:
        return "string", text


def _widest(kinds: set[str]) -> str:
    if not kinds:
        return "empty"
    if kinds <= {"integer", "float"}:
        return "float" if "float" in kinds else "integer"
    if len(kinds) == 1:
        return next(iter(kinds))
    return "string"


def _open_source(payload: dict[str, Any], data_dir: Path) -> tuple[TextIO, int]:
    if payload.get("csv") is not None:
        text = str(payload["csv"])
        return io.StringIO(text), max(len(text), 1)
    try:
        target = resolve_data_path(data_dir, str(payload["path"]))
    except DataPathError as exc:
        raise CsvInputError(str(exc)) from None
    if not target.is_file():
        raise CsvInputError(f"no CSV file at {payload['path']!r} in the data directory")
    return target.open(newline="", encoding="utf-8"), max(target.stat().st_size, 1)


@tool("profile-csv", payload_model=ProfileCsvPayload, queue="default")
def profile_csv(ctx: ToolContext) -> dict[str, Any]:
    """Profile a CSV: rows, columns, inferred types, nulls, min/max; progress per chunk."""
    source, total_size = _open_source(ctx.payload, ctx.data_dir)
    chunk_rows = int(ctx.payload["chunk_rows"])
    consumed = 0

    def counted_lines() -> Iterator[str]:
        nonlocal consumed
        for line in source:
            consumed += len(line)
            yield line

    with source:
        reader = csv.reader(counted_lines(), delimiter=str(ctx.payload["delimiter"]))
        header = next(reader, None)
        if not header:
            raise CsvInputError("the CSV is empty: no header row")
        columns = [
            ColumnProfile(name=name.strip() or f"column_{i + 1}") for i, name in enumerate(header)
        ]
        rows = 0
        ragged = 0
        for record in reader:
            rows += 1
            if len(record) != len(columns):
                ragged += 1
            for column, cell in zip(columns, record, strict=False):
                column.add(cell)
            for column in columns[len(record) :]:
                column.nulls += 1
            if rows % chunk_rows == 0:
                ctx.progress(min(99.0, 100 * consumed / total_size), f"profiled {rows} rows")
    return {
        "rows": rows,
        "columns": len(columns),
        "ragged_rows": ragged,
        "profile": [column.summary() for column in columns],
    }
