"""Windows of time as operators type them: `90s`, `15m`, `1h`, `2d`, or plain seconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import typer

from api.cli.console import fail

_WINDOW = re.compile(r"(\d+)([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_window(text: str | None) -> int | None:
    """`90`, `90s`, `15m`, `1h` or `2d` as seconds."""
    if text is None:
        return None
    found = _WINDOW.fullmatch(text.strip().lower())
    if found is None or int(found[1]) == 0:
        raise typer.BadParameter(f"{text!r} is not a window like 3600, 90s, 15m, 1h or 2d")
    return int(found[1]) * _UNIT_SECONDS[found[2]]


def window_start(text: str, *, option: str, now: datetime | None = None) -> datetime:
    """The moment the window `text` (given as `option`) before `now` (default: now, UTC);
    a bad window exits with one line naming the option."""
    try:
        seconds = parse_window(text) or 0
    except typer.BadParameter as exc:
        fail(f"{option}: {exc.message}")
    return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
