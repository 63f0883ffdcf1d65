"""Periodic jobs of the deployment that one process at a time runs, whichever it is."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from execution.models import Base


class JobLeaseRow(Base):
    """Who runs a deployment-wide job now and until when; a process takes it only when it is
    free or expired, so every API and worker may try and exactly one runs the job."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    last_run_at: Mapped[datetime | None]
