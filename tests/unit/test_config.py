"""Settings precedence: defaults < TOML file < BOOKIJI_* environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from bookiji.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BOOKIJI_CONFIG", "BOOKIJI_DATABASE_URL", "BOOKIJI_TTL__HOLD_MINUTES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_use_an_embedded_sqlite_file() -> None:
    settings = load_settings()
    assert settings.database_url == "sqlite:///bookiji.db"
    assert (settings.ttl.hold_minutes, settings.ttl.authorization_minutes) == (10, 30)
    assert settings.ttl.commit_minutes == 15


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "custom.toml"
    path.write_text('database_url = "sqlite:///x.db"\n[ttl]\nhold_minutes = 5\n')
    settings = load_settings(path)
    assert settings.database_url == "sqlite:///x.db"
    assert settings.ttl.hold_minutes == 5
    monkeypatch.setenv("BOOKIJI_TTL__HOLD_MINUTES", "7")
    monkeypatch.setenv("BOOKIJI_DATABASE_URL", "postgresql://u@h/db")
    settings = load_settings(path)
    assert settings.ttl.hold_minutes == 7
    assert settings.database_url == "postgresql://u@h/db"


def test_bookiji_config_env_and_local_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bookiji.toml").write_text("[ttl]\ncommit_minutes = 20\n")
    assert load_settings().ttl.commit_minutes == 20
    other = tmp_path / "other.toml"
    other.write_text("[ttl]\ncommit_minutes = 25\n")
    monkeypatch.setenv("BOOKIJI_CONFIG", str(other))
    assert load_settings().ttl.commit_minutes == 25


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[ttl]\nhold_minutes = 0\n", "hold_minutes"),
        ("unknown_setting = 1\n", "unknown_setting"),
        ('database_url = "mysql://x"\n', "database_url"),
        ("[ttl\n", "invalid configuration"),
    ],
)
def test_invalid_settings_name_the_file_and_field(
    tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_a_bad_setting_from_the_environment_is_named_and_its_value_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bookiji.toml"
    path.write_text("[webhooks]\nbase_delay_seconds = 60\nmax_delay_seconds = 10\n")
    monkeypatch.setenv("BOOKIJI_DATABASE_URL", "mysql://bookiji:s3cret-pw@db.internal/bookiji")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "BOOKIJI_DATABASE_URL: database_url must be a sqlite:/// or postgresql:// URL" in message
    assert f"{path}: webhooks: max_delay_seconds must be at least base_delay_seconds" in message
    assert "s3cret" not in message and "mysql" not in message


def test_the_log_level_is_checked_in_any_case(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().log_level == "INFO"  # the daemon's request and job lines
    monkeypatch.setenv("BOOKIJI_LOG_LEVEL", "warning")
    assert load_settings().log_level == "WARNING"
    monkeypatch.setenv("BOOKIJI_LOG_LEVEL", "chatty")
    with pytest.raises(ConfigError, match="BOOKIJI_LOG_LEVEL"):
        load_settings()


@pytest.mark.parametrize("value", ["inf", "1e20"])
def test_a_job_interval_too_large_for_the_scheduler_is_named(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("BOOKIJI_DAEMON__JOBS__WEBHOOKS", value)
    with pytest.raises(ConfigError, match="BOOKIJI_DAEMON__JOBS__WEBHOOKS"):
        load_settings()
