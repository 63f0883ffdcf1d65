"""`switchyard keys`: issue, list and revoke API keys, straight in the database."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from api.cli.console import err, fail, out, print_table, settings_or_exit
from api.keys import InvalidKeyRequest, KeyStore, Role
from execution.database import SchemaNotCurrent
from execution.logs import configure_logging

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    user: Annotated[str, typer.Option("--user", help="The user id the key acts as.")],
    role: Annotated[Role, typer.Option("--role", help="user: own tasks only; operator: all.")],
    name: Annotated[str | None, typer.Option(help="A label to recognise the key by.")] = None,
) -> None:
    """Issue a key and print it once (stdout); only its hash is stored."""
    try:
        issued = _key_store().create(user_id=user, role=role, name=name)
    except InvalidKeyRequest as exc:
        fail(str(exc))
    err.print(
        f"key {issued.key.key_id} for {issued.key.user_id} ({issued.key.role}); "
        "store it now, it cannot be shown again:",
        highlight=False,
    )
    out.print(issued.token, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys (never their secrets)."""
    times = ("created", "last used", "revoked") if include_revoked else ("created", "last used")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    # On a narrow terminal the id stays whole and a time breaks only between date and hour.
    table.add_column("key_id", no_wrap=True, min_width=16)  # what `keys revoke` needs
    table.add_column("user", overflow="fold", min_width=5)
    table.add_column("role", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=6)
    for column in times:
        table.add_column(column, min_width=10)
    for key in _key_store().list(include_revoked=include_revoked):
        at = (key.created_at, key.last_used_at, key.revoked_at)[: len(times)]
        table.add_row(key.key_id, key.user_id, key.role, key.name or "", *map(_when, at))
    print_table(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id from `keys list`.")],
) -> None:
    """Revoke a key: requests carrying it get 401 from now on."""
    key = _key_store().revoke(key_id)
    if key is None:
        fail(f"no key {key_id}", code=1)
    out.print(f"key {key.key_id} of {key.user_id} revoked at {_when(key.revoked_at)}")


def _key_store() -> KeyStore:
    from execution import database

    settings = settings_or_exit()
    configure_logging(level=settings.log_level, json_output=settings.log_json)
    engine = database.make_engine(settings.database_url)
    try:
        database.prepare(engine, migrate=settings.is_embedded_database)
    except SchemaNotCurrent as exc:
        fail(str(exc))
    except Exception as exc:
        fail(f"cannot open the database: {type(exc).__name__}: {exc}")
    return KeyStore(engine)


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%MZ") if at else "-"
