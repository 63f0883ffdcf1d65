"""One Alembic history for every table; each room declares its own tables on `Base`."""

from __future__ import annotations

import importlib

from sqlalchemy import MetaData

from execution.models import Base

TABLE_OWNERS = (
    "execution.models",
    "execution.records",
    "execution.batch_records",
    "execution.job_leases",
    "dispatch.rollout.store",
    "api.keys",
)
"""The modules that declare tables; importing one registers its tables on Base.metadata."""


def schema() -> MetaData:
    """Every table the code declares, whichever modules this process has imported so far."""
    for module in TABLE_OWNERS:
        importlib.import_module(module)
    return Base.metadata
