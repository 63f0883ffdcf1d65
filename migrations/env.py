"""Alembic environment: runs on the engine Switchyard hands it (see execution.database)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

from migrations import schema

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):  # plain `alembic` CLI use
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=schema(),
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
