"""Paths that payloads name under the data directory (SWITCHYARD_DATA_DIR), kept inside it."""

from __future__ import annotations

from pathlib import Path


class DataPathError(ValueError):
    """A payload's path leads outside the data directory (or cannot be a path at all)."""


def resolve_data_path(data_dir: Path, relative: str) -> Path:
    """`relative` resolved under `data_dir`, symlinks followed, so that no payload can make a
    tool read the rest of the machine (`..`, an absolute path, a link out). The target need
    not exist: saying whether it does is the caller's business, with its own message."""
    if "\x00" in relative:
        raise DataPathError(f"path {relative!r} contains a NUL character")
    root = data_dir.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise DataPathError(f"path {relative!r} is outside the data directory")
    return target
