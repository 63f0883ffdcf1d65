"""Alembic environment: runs on the engine Switchyard hands it (see execution.database).

The schema's tables are declared by the rooms that own them; importing them here gives
autogenerate the whole schema to compare against.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

import api.keys
import dispatch.rollout.store
import execution.records  # noqa: F401  (the tables above register on Base.metadata)
from execution.models import Base

config = context.config
engine = config.attributes.get("engine")
if not isinstance(engine, Engine):  # plain `alembic` CLI use
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
