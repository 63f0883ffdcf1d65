"""`switchyard keys` and how the CLI finds its key: printed once, never listed, file fallback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli.app import app, startup_banner
from api.cli.client import api_client
from api.settings import Settings
from tests.cli.conftest import RunSwitchyard

TOKEN = re.compile(r"sy_(?P<key_id>[0-9a-f]{16})_[A-Za-z0-9_-]{43}")
WHEN = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}Z")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_NAME = "the laptop on the kitchen table at home"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None) -> CliRunner:
    """A runner in an empty directory with its own database and key file."""
    monkeypatch.chdir(tmp_path)
    for name in ("SWITCHYARD_API_KEY", "USE_CELERY", "CORS_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("OPERATOR_KEY_FILE", str(tmp_path / "operator.key"))
    return CliRunner()


def create_key(cli: CliRunner, *args: str) -> str:
    result = cli.invoke(app, ["keys", "create", *args])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


def test_keys_create_prints_only_the_key_on_stdout(cli: CliRunner) -> None:
    token = create_key(cli, "--user", "alice", "--role", "user", "--name", "laptop")
    assert TOKEN.fullmatch(token)


def test_keys_list_shows_the_key_but_never_its_secret(cli: CliRunner) -> None:
    token = create_key(cli, "--user", "alice", "--role", "operator")
    match = TOKEN.fullmatch(token)
    assert match is not None
    listing = cli.invoke(app, ["keys", "list"])
    assert listing.exit_code == 0
    assert match["key_id"] in listing.stdout
    assert "alice" in listing.stdout
    assert token.split("_", 2)[2] not in listing.output


def test_keys_revoke_removes_the_key_from_the_listing(cli: CliRunner) -> None:
    match = TOKEN.fullmatch(create_key(cli, "--user", "alice", "--role", "user"))
    assert match is not None
    revoked = cli.invoke(app, ["keys", "revoke", match["key_id"]])
    assert revoked.exit_code == 0
    assert match["key_id"] not in cli.invoke(app, ["keys", "list"]).stdout
    assert match["key_id"] in cli.invoke(app, ["keys", "list", "--all"]).stdout


def test_revoking_an_unknown_key_fails(cli: CliRunner) -> None:
    result = cli.invoke(app, ["keys", "revoke", "0123456789abcdef"])
    assert result.exit_code == 1
    assert "no key 0123456789abcdef" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "not valid", "--role", "user"], "user id"),
        (["--user", "alice", "--role", "admin"], "--role"),
    ],
)
def test_keys_create_refuses_a_bad_user_or_role(
    cli: CliRunner, args: list[str], message: str
) -> None:
    result = cli.invoke(app, ["keys", "create", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_the_cli_falls_back_to_the_operator_key_file(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "operator.key").write_text("sy_0123456789abcdef_secret\n")
    with api_client("http://127.0.0.1:9", None) as client:
        assert client.headers["Authorization"] == "Bearer sy_0123456789abcdef_secret"


def test_an_explicit_key_wins_over_the_file(cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "operator.key").write_text("from-the-file")
    with api_client("http://127.0.0.1:9", "given") as client:
        assert client.headers["Authorization"] == "Bearer given"


def test_without_any_key_the_cli_says_where_to_get_one(cli: CliRunner) -> None:
    result = cli.invoke(app, ["status", "some-task", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2
    assert "OPERATOR_KEY_FILE" in result.stderr
    assert "--api-key" in result.stderr


def test_the_startup_banner_masks_database_and_broker_passwords() -> None:
    settings = Settings(
        _env_file=None,
        database_url="postgresql://switchyard:db-s3cret@db.internal:5432/switchyard",
        use_celery=True,
        celery_rollout_percentage=5,
        celery_broker_url="redis://:broker-s3cret@redis.internal:6379/0",
    )
    banner = startup_banner(settings, ["noop"])
    assert "s3cret" not in banner
    assert "postgresql://switchyard:***@db.internal:5432/switchyard" in banner
    assert "redis://:***@redis.internal:6379/0" in banner


def test_keys_commands_print_the_key_and_the_listing_without_alembics_chatter(
    switchyard: RunSwitchyard,
) -> None:
    created = switchyard("keys", "create", "--user", "alice", "--role", "user")
    listed = switchyard("keys", "list")

    assert created.returncode == listed.returncode == 0, created.stderr + listed.stderr
    assert TOKEN.fullmatch(created.stdout.strip())
    for result in (created, listed):
        assert "Context impl" not in result.stderr
        assert "Will assume" not in result.stderr


@pytest.mark.parametrize("columns", [80, 200])
def test_piped_keys_list_keeps_each_key_on_one_line(
    switchyard: RunSwitchyard, columns: int
) -> None:
    created = switchyard(
        "keys", "create", "--user", "alice", "--role", "operator", "--name", LONG_NAME
    )
    match = TOKEN.fullmatch(created.stdout.strip())
    assert match is not None, created.stderr

    listed = switchyard("keys", "list", columns=columns)

    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if match["key_id"] in line]
    assert "alice" in row
    assert "operator" in row
    assert LONG_NAME in row
    assert WHEN.search(row)
    assert "last used" in listed.stdout


@pytest.mark.parametrize("listing", [["keys", "list"], ["keys", "list", "--all"]])
def test_keys_list_on_a_narrow_terminal_fits_it_and_keeps_ids_and_dates_whole(
    switchyard: RunSwitchyard, listing: list[str]
) -> None:
    created = switchyard("keys", "create", "--user", "alice", "--role", "user", "--name", LONG_NAME)
    match = TOKEN.fullmatch(created.stdout.strip())
    assert match is not None, created.stderr

    listed = switchyard(*listing, columns=80, TTY_COMPATIBLE="1")

    assert listed.returncode == 0, listed.stderr
    header, *lines = ANSI.sub("", listed.stdout).splitlines()
    assert all(len(line) <= 80 for line in [header, *lines])
    assert header.split()[-1] == ("revoked" if "--all" in listing else "used")
    (row,) = [line for line in lines if match["key_id"] in line]
    assert re.search(r"\d{4}-\d{2}-\d{2}", row)
