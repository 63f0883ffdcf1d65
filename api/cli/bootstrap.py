"""The first operator key: made by `serve` when no key exists, kept in an owner-only file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import structlog

from api.keys import IssuedKey, KeyStore, Role

log = structlog.get_logger(__name__)

BOOTSTRAP_USER = "operator"


class KeyFileError(OSError):
    """OPERATOR_KEY_FILE cannot be written or read; the message names the path."""


def ensure_operator_key(keys: KeyStore, path: Path) -> IssuedKey | None:
    """Issue an operator key and write it to `path` (mode 0600) if no key exists at all.

    A database whose keys were all revoked gets no new one: that is an operator's decision.
    """
    if keys.count() > 0:
        return None
    # The file is opened before the key is made, so a path that cannot be written leaves no
    # key behind that nobody holds.
    with _owner_only_file(path) as handle:
        issued = keys.create(user_id=BOOTSTRAP_USER, role=Role.OPERATOR, name="bootstrap")
        handle.write(issued.token + "\n")
    log.info("auth.bootstrap_key_created", key_id=issued.key.key_id, path=str(path))
    return issued


def read_key_file(path: Path) -> str | None:
    """The key stored at `path`, or None if there is no such file."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeyFileError(f"OPERATOR_KEY_FILE {str(path)!r} cannot be read: {exc}") from None
    return token or None


@contextlib.contextmanager
def _owner_only_file(path: Path) -> Iterator[TextIO]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    except OSError as exc:
        raise KeyFileError(f"OPERATOR_KEY_FILE {str(path)!r} cannot be written: {exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
