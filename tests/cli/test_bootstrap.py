"""The first operator key: made by the first `serve` only, kept in a file only its owner reads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import Engine

from api.cli.bootstrap import KeyFileError, ensure_operator_key, read_key_file
from api.keys import KeyStore, Role


def test_the_first_start_writes_an_operator_key_only_its_owner_can_read(
    engine: Engine, tmp_path: Path
) -> None:
    keys = KeyStore(engine)
    path = tmp_path / "state" / "operator.key"
    issued = ensure_operator_key(keys, path)
    assert issued is not None
    assert issued.key.role is Role.OPERATOR
    assert read_key_file(path) == issued.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert keys.verify(issued.token) is not None


def test_no_operator_key_is_made_while_any_key_exists_even_a_revoked_one(
    engine: Engine, tmp_path: Path
) -> None:
    keys = KeyStore(engine)
    old = keys.create(user_id="alice", role=Role.USER)
    keys.revoke(old.key.key_id)
    path = tmp_path / "operator.key"
    assert ensure_operator_key(keys, path) is None
    assert not path.exists()


def test_a_key_file_that_cannot_be_written_leaves_no_key_behind(
    engine: Engine, tmp_path: Path
) -> None:
    keys = KeyStore(engine)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(KeyFileError, match="OPERATOR_KEY_FILE"):
        ensure_operator_key(keys, blocker / "operator.key")
    assert keys.count() == 0


def test_reading_a_missing_key_file_gives_none(tmp_path: Path) -> None:
    assert read_key_file(tmp_path / "absent.key") is None
