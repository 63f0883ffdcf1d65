"""Settings: defaults, one clear line per bad value, the loud warning, and the documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.settings import Settings, load_settings
from execution.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(clean_env: None) -> None:
    """Every test here reads only the variables it sets."""


def test_defaults_are_the_embedded_setup() -> None:
    settings = load_settings(env_file=None)

    assert settings.database_url == "sqlite:///./switchyard.db"
    assert settings.is_embedded_database
    assert settings.use_celery is False
    assert settings.celery_rollout_percentage == 0
    assert settings.background_workers == 8
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.celery_broker_url is None
    assert settings.celery_task_time_limit == 1800
    assert settings.celery_task_soft_time_limit == 1500
    assert settings.tool_modules == ("execution.tools.builtin",)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)


def test_broker_url_falls_back_to_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/2")
    assert load_settings(env_file=None).broker_url == "redis://127.0.0.1:6390/2"

    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6391/0")
    assert load_settings(env_file=None).broker_url == "redis://127.0.0.1:6391/0"


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_CELERY", "true")
    monkeypatch.setenv("CELERY_ROLLOUT_PERCENTAGE", "12.5")
    monkeypatch.setenv("BACKGROUND_WORKERS", "3")
    monkeypatch.setenv("SWITCHYARD_TOOLS", "execution.tools.builtin, tests.tools")

    settings = load_settings(env_file=None)

    assert settings.use_celery is True
    assert settings.celery_rollout_percentage == 12.5
    assert settings.background_workers == 3
    assert settings.tool_modules == ("execution.tools.builtin", "tests.tools")


def test_values_come_from_a_dotenv_file(tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("CELERY_ROLLOUT_PERCENTAGE=0.01\nBACKGROUND_WORKERS=4\n")

    settings = load_settings(env_file=env_file)

    assert settings.celery_rollout_percentage == 0.01
    assert settings.background_workers == 4


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("USE_CELERY", "maybe", "USE_CELERY"),
        ("USE_CELERY", "yes", "USE_CELERY"),
        ("CELERY_ROLLOUT_PERCENTAGE", "150", "CELERY_ROLLOUT_PERCENTAGE"),
        ("CELERY_ROLLOUT_PERCENTAGE", "-1", "CELERY_ROLLOUT_PERCENTAGE"),
        ("CELERY_ROLLOUT_PERCENTAGE", "nan", "CELERY_ROLLOUT_PERCENTAGE"),
        ("CELERY_TASK_SOFT_TIME_LIMIT", "1801", "CELERY_TASK_SOFT_TIME_LIMIT"),
        ("BACKGROUND_WORKERS", "0", "BACKGROUND_WORKERS"),
        ("DATABASE_URL", "mysql://127.0.0.1/switchyard", "DATABASE_URL"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as raised:
        load_settings(env_file=None)

    message = str(raised.value)
    assert named in message
    assert "\n" not in message
    assert "Traceback" not in message


def test_a_bad_value_in_a_dotenv_file_is_named_too(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("USE_CELERY=maybe\n")

    with pytest.raises(SettingsError, match="USE_CELERY"):
        load_settings(env_file=env_file)


def test_a_bad_value_never_shows_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://switchyard:hunter2@127.0.0.1/switchyard")

    with pytest.raises(SettingsError) as raised:
        load_settings(env_file=None)

    assert "DATABASE_URL" in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_redacted_settings_mask_every_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://switchyard:hunter2@127.0.0.1:5432/sy")
    monkeypatch.setenv("REDIS_URL", "redis://:redispw@127.0.0.1:6379/0")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:brokerpw@127.0.0.1:6379/1")

    shown = load_settings(env_file=None).redacted()

    assert shown["database_url"] == "postgresql://switchyard:***@127.0.0.1:5432/sy"
    assert shown["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert shown["celery_broker_url"] == "redis://:***@127.0.0.1:6379/1"


def _documented_names(text: str) -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))


def test_env_example_documents_every_setting() -> None:
    documented = _documented_names((REPO / ".env.example").read_text())

    missing = sorted(
        name.upper() for name in Settings.model_fields if name.upper() not in documented
    )
    assert missing == [], "add these settings to .env.example with their default and a comment"


def test_env_example_holds_the_defaults() -> None:
    assert load_settings(env_file=REPO / ".env.example") == load_settings(env_file=None)


def test_readme_settings_table_lists_every_setting() -> None:
    readme = (REPO / "README.md").read_text()

    missing = [name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in readme]
    assert missing == [], "add these settings to the settings table of README.md"
