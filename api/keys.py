"""API keys: issued once, stored only as a hash, looked up by their public id."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    Column,
    Engine,
    RowMapping,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from api.limits import check_storable_json
from execution.models import Base, utcnow


class ApiKeyRow(Base):
    """One API key: whose it is, what it may do, and only a hash of its secret."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


_KEYS = cast(Table, ApiKeyRow.__table__)
_KEY_BY_ID = select(_KEYS).where(_KEYS.c.key_id == bindparam("key_id"))
"""Built once: `verify` runs on every request that carries a key."""

KEY_PREFIX = "sy"
_TOKEN = re.compile(rf"{KEY_PREFIX}_(?P<key_id>[0-9a-f]{{16}})_(?P<secret>[A-Za-z0-9_-]{{43}})")
USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$"
_USER_ID = re.compile(USER_ID_PATTERN)
# Lets a listing say when a key was last used without a write on every request.
TOUCH_INTERVAL = timedelta(minutes=1)


class Role(StrEnum):
    """What a key may do."""

    USER = "user"
    """Creates tasks and sees and acts on its own tasks only."""
    OPERATOR = "operator"
    """Sees every task and may change the rollout."""


class InvalidKeyRequest(ValueError):
    """A key cannot be issued as asked; the message says which value is wrong."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: everything but its secret and hash."""

    key_id: str
    user_id: str
    role: Role
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def active(self) -> bool:
        """False once revoked."""
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A new key and its secret token: the only time the token exists outside its holder."""

    key: ApiKey
    token: str


def hash_token(token: str) -> str:
    """SHA-256 of the whole token.

    A fast hash is the right one here: tokens carry 256 random bits, so there is nothing for
    a slow password hash (bcrypt, argon2) to protect against, and it would cost every request.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def key_id_of(token: str) -> str | None:
    """The public id inside a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return match["key_id"] if match else None


class KeyStore:
    """Issues, verifies, lists and revokes API keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, *, user_id: str, role: Role | str, name: str | None = None) -> IssuedKey:
        """A new active key for `user_id`; its token is returned here and never stored."""
        if not _USER_ID.fullmatch(user_id):
            raise InvalidKeyRequest(
                f"user id {user_id!r} must be 1-128 letters, digits, '.', '_', '@' or '-'"
            )
        try:
            role = Role(role)
        except ValueError:
            raise InvalidKeyRequest(f"role {role!r} must be 'user' or 'operator'") from None
        if name is not None and len(name) > 128:
            raise InvalidKeyRequest("key name must be at most 128 characters")
        if name is not None:
            try:
                check_storable_json(name, where="key name")
            except ValueError as exc:
                raise InvalidKeyRequest(str(exc)) from None
        key_id = secrets.token_hex(8)
        token = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        with self.engine.begin() as conn:
            row = conn.execute(
                insert(_KEYS)
                .values(
                    key_id=key_id,
                    user_id=user_id,
                    role=role,
                    name=name,
                    key_hash=hash_token(token),
                    created_at=now,
                )
                .returning(*_listed_columns())
            ).one()
        return IssuedKey(key=_key_from(row._mapping), token=token)

    def verify(self, token: str) -> ApiKey | None:
        """The active key this token belongs to, or None; comparison takes constant time."""
        key_id = key_id_of(token)
        if key_id is None:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(_KEY_BY_ID, {"key_id": key_id}).one_or_none()
        # The key id is public (listings show it); only the hash comparison guards the secret.
        if row is None or not hmac.compare_digest(row.key_hash, hash_token(token)):
            return None
        key = _key_from(row._mapping)
        if not key.active:
            return None
        self._touch(key)
        return key

    def get(self, key_id: str) -> ApiKey | None:
        """The key, active or revoked, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(*_listed_columns()).where(_KEYS.c.key_id == key_id)
            ).one_or_none()
        return _key_from(row._mapping) if row is not None else None

    def list(self, *, include_revoked: bool = False) -> list[ApiKey]:
        """Keys, oldest first."""
        query = select(*_listed_columns()).order_by(_KEYS.c.created_at, _KEYS.c.key_id)
        if not include_revoked:
            query = query.where(_KEYS.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [_key_from(row._mapping) for row in conn.execute(query)]

    def count(self) -> int:
        """How many keys exist, revoked ones included."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(_KEYS)).scalar_one())

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke the key at once (idempotent); None if there is no such key."""
        with self.engine.begin() as conn:
            conn.execute(
                update(_KEYS)
                .where(_KEYS.c.key_id == key_id, _KEYS.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        return self.get(key_id)

    def _touch(self, key: ApiKey) -> None:
        now = utcnow()
        if key.last_used_at is not None and now - key.last_used_at < TOUCH_INTERVAL:
            return
        with self.engine.begin() as conn:
            conn.execute(update(_KEYS).where(_KEYS.c.key_id == key.key_id).values(last_used_at=now))


def _listed_columns() -> list[Column[Any]]:
    return [c for c in _KEYS.c if c.name != "key_hash"]


def _key_from(row: RowMapping) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        user_id=row["user_id"],
        role=Role(row["role"]),
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
    )
