"""Fixtures of the rollout tests: a clock the store reads."""

from __future__ import annotations

import pytest

from tests.dispatch.rollout.cohort_rows import Clock, install_clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Task rows and rollout changes stamped with a time the test moves."""
    return install_clock(monkeypatch)
