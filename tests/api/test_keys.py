"""The key store: only hashes are stored, a changed or revoked token never verifies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from api.keys import InvalidKeyRequest, KeyStore, Role, hash_token, key_id_of
from execution import database
from execution.redaction import redact_text


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A migrated SQLite database of its own."""
    engine = database.make_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    database.upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def keys(engine: Engine) -> KeyStore:
    """An empty key store."""
    return KeyStore(engine)


def test_a_new_key_verifies_as_its_user_and_role(keys: KeyStore) -> None:
    issued = keys.create(user_id="alice", role=Role.USER, name="laptop")
    key = keys.verify(issued.token)
    assert key is not None
    assert (key.key_id, key.user_id, key.role, key.name) == (
        issued.key.key_id,
        "alice",
        Role.USER,
        "laptop",
    )


def test_only_a_hash_of_the_token_is_stored(keys: KeyStore, engine: Engine) -> None:
    issued = keys.create(user_id="alice", role=Role.USER)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_keys")).all()
    stored = repr(rows)
    secret = issued.token.split("_", 2)[2]
    assert secret not in stored
    assert hash_token(issued.token) in stored


def test_tokens_carry_their_public_key_id(keys: KeyStore) -> None:
    issued = keys.create(user_id="alice", role=Role.USER)
    assert key_id_of(issued.token) == issued.key.key_id


def _other_last_character(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda token: token + "x",
        lambda token: token[:-1],
        str.upper,
        lambda token: token.replace("sy_", "xy_", 1),
        _other_last_character,
        lambda token: "",
    ],
)
def test_a_token_changed_in_any_way_does_not_verify(
    keys: KeyStore, mangle: Callable[[str], str]
) -> None:
    issued = keys.create(user_id="alice", role=Role.USER)
    assert keys.verify(mangle(issued.token)) is None


def test_a_revoked_key_no_longer_verifies(keys: KeyStore) -> None:
    issued = keys.create(user_id="alice", role=Role.OPERATOR)
    revoked = keys.revoke(issued.key.key_id)
    assert revoked is not None
    assert revoked.revoked_at is not None
    assert keys.verify(issued.token) is None


def test_revoking_twice_keeps_the_first_revocation_time(keys: KeyStore) -> None:
    issued = keys.create(user_id="alice", role=Role.USER)
    first = keys.revoke(issued.key.key_id)
    second = keys.revoke(issued.key.key_id)
    assert first is not None
    assert second is not None
    assert second.revoked_at == first.revoked_at


def test_revoking_an_unknown_key_says_so(keys: KeyStore) -> None:
    assert keys.revoke("0123456789abcdef") is None


@pytest.mark.parametrize(
    ("user_id", "role", "name"),
    [
        ("", Role.USER, None),
        ("has space", Role.USER, None),
        ("alice\n", Role.USER, None),
        ("-leading-dash", Role.USER, None),
        ("a" * 129, Role.USER, None),
        ("alice", "admin", None),
        ("alice", Role.USER, "n" * 129),
    ],
)
def test_a_key_is_refused_for_a_bad_user_role_or_name(
    keys: KeyStore, user_id: str, role: str, name: str | None
) -> None:
    with pytest.raises(InvalidKeyRequest):
        keys.create(user_id=user_id, role=role, name=name)
    assert keys.count() == 0


def test_the_listing_leaves_out_revoked_keys_unless_asked(keys: KeyStore) -> None:
    kept = keys.create(user_id="alice", role=Role.USER)
    gone = keys.create(user_id="bob", role=Role.USER)
    keys.revoke(gone.key.key_id)
    assert [k.key_id for k in keys.list()] == [kept.key.key_id]
    assert {k.key_id for k in keys.list(include_revoked=True)} == {
        kept.key.key_id,
        gone.key.key_id,
    }


def test_use_is_recorded_once_and_not_rewritten_within_a_minute(keys: KeyStore) -> None:
    issued = keys.create(user_id="alice", role=Role.USER)
    assert issued.key.last_used_at is None
    keys.verify(issued.token)
    first = keys.get(issued.key.key_id)
    keys.verify(issued.token)
    again = keys.get(issued.key.key_id)
    assert first is not None
    assert again is not None
    assert first.last_used_at is not None
    assert again.last_used_at == first.last_used_at


def test_redaction_masks_a_keys_secret_and_keeps_its_id(keys: KeyStore) -> None:
    issued = keys.create(user_id="alice", role=Role.USER)
    shown = redact_text(f"rejected Authorization: Bearer {issued.token} from 10.0.0.1")
    assert issued.token.split("_", 2)[2] not in shown
    assert f"sy_{issued.key.key_id}_***" in shown
