"""Credentials never reach a log line, a banner or an error message."""

from __future__ import annotations

import pytest

from execution.redaction import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://switchyard:hunter2@127.0.0.1:5432/sy",
            "postgresql://switchyard:***@127.0.0.1:5432/sy",
        ),
        (
            "postgresql+psycopg://switchyard:hunter2@localhost/sy?sslmode=disable",
            "postgresql+psycopg://switchyard:***@localhost/sy?sslmode=disable",
        ),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://hunter2@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("redis://user:hunter2@[::1]:6379/0", "redis://user:***@[::1]:6379/0"),
    ],
)
def test_redact_url_masks_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url", ["sqlite:///./switchyard.db", "redis://127.0.0.1:6379/0", "postgresql://db/sy"]
)
def test_redact_url_leaves_a_url_without_credentials_alone(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_survives_a_port_that_is_not_a_number() -> None:
    shown = redact_url("postgresql://switchyard:hunter2@db:fivefourthreetwo/sy")

    assert "hunter2" not in shown
    assert "db:fivefourthreetwo" in shown


def test_redact_text_masks_every_url_in_a_message() -> None:
    message = (
        "connection to postgresql://switchyard:hunter2@127.0.0.1:5432/sy failed; "
        "broker redis://:s3cret@127.0.0.1:6379/0 is down"
    )

    shown = redact_text(message)

    assert "hunter2" not in shown
    assert "s3cret" not in shown
    assert "postgresql://switchyard:***@127.0.0.1:5432/sy failed" in shown
    assert "redis://:***@127.0.0.1:6379/0 is down" in shown


def test_redact_text_leaves_plain_text_alone() -> None:
    assert redact_text("no such tool: profile-csv") == "no such tool: profile-csv"
