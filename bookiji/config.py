"""Settings: defaults, then a TOML file, then BOOKIJI_* environment variables (highest).

The file is `--config PATH`, else $BOOKIJI_CONFIG, else ./bookiji.toml when it exists.
Nested settings use a double underscore in the environment: BOOKIJI_TTL__HOLD_MINUTES=5.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

DEFAULT_CONFIG_FILE = "bookiji.toml"
DEFAULT_DATABASE_URL = "sqlite:///bookiji.db"


class TTLSettings(BaseModel):
    """Staged deadlines, in minutes (see DESIGN.md, state machine)."""

    model_config = {"extra": "forbid"}

    hold_minutes: int = Field(default=10, ge=1, le=24 * 60)
    authorization_minutes: int = Field(default=30, ge=1, le=7 * 24 * 60)
    commit_minutes: int = Field(default=15, ge=1, le=24 * 60)


class ReconcileSettings(BaseModel):
    model_config = {"extra": "forbid"}

    batch_size: int = Field(default=500, ge=1, le=10_000)


class AvailabilitySettings(BaseModel):
    model_config = {"extra": "forbid"}

    cache_ttl_seconds: int = Field(default=300, ge=0, le=24 * 3600)
    freshness_ttl_seconds: int = Field(default=300, ge=1, le=7 * 24 * 3600)
    max_window_days: int = Field(default=93, ge=1, le=366)


class GoogleSettings(BaseModel):
    model_config = {"extra": "forbid"}

    api_base_url: str | None = None
    token_uri: str | None = None
    auth_uri: str | None = None
    client_secrets_file: str | None = None


class OutlookSettings(BaseModel):
    model_config = {"extra": "forbid"}

    authority_base: str = "https://login.microsoftonline.com"
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = Field(default=None, repr=False)
    ca_bundle: str | None = None


class CalendarSettings(BaseModel):
    model_config = {"extra": "forbid"}

    timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    google: GoogleSettings = GoogleSettings()
    outlook: OutlookSettings = OutlookSettings()


class PaymentSettings(BaseModel):
    model_config = {"extra": "forbid"}

    gateway: str = Field(default="local", pattern="^(local|stripe)$")
    stripe_api_key: str | None = Field(default=None, repr=False)
    stripe_base_url: str | None = None
    stripe_webhook_secret: str | None = Field(default=None, repr=False)
    application_fee_bps: int = Field(default=0, ge=0, le=10_000)
    commit_lease_seconds: int = Field(default=120, ge=5, le=3600)
    auto_vendor_authorization: bool = True


class NotificationSettings(BaseModel):
    model_config = {"extra": "forbid"}

    token_secret: str | None = Field(default=None, repr=False)
    answer_url: str | None = None
    webhook_secret: str | None = Field(default=None, repr=False)
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_sender: str | None = None
    smtp_username: str | None = None
    smtp_password: str | None = Field(default=None, repr=False)
    smtp_starttls: bool = True
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = Field(default=None, repr=False)
    twilio_from: str | None = None
    twilio_base_url: str | None = None


DAY_SECONDS = 86_400


class JobIntervals(BaseModel):
    """Seconds between runs of each daemon job (at most a day: `schedule` cannot take inf)."""

    model_config = {"extra": "forbid"}

    expiry: float = Field(default=5, gt=0, le=DAY_SECONDS)
    vendor_notifications: float = Field(default=10, gt=0, le=DAY_SECONDS)
    vendor_authorizations: float = Field(default=30, gt=0, le=DAY_SECONDS)
    pending_authentications: float = Field(default=30, gt=0, le=DAY_SECONDS)
    stuck_commits: float = Field(default=15, gt=0, le=DAY_SECONDS)
    stale_authorizations: float = Field(default=60, gt=0, le=DAY_SECONDS)
    compensations: float = Field(default=10, gt=0, le=DAY_SECONDS)
    money_sweep: float = Field(default=300, gt=0, le=DAY_SECONDS)
    calendar_sync: float = Field(default=300, gt=0, le=DAY_SECONDS)
    webhooks: float = Field(default=2, gt=0, le=DAY_SECONDS)


class ApiSettings(BaseModel):
    model_config = {"extra": "forbid"}

    host: str = "127.0.0.1"
    port: int = Field(default=8421, ge=0, le=65535)
    reads_per_minute: int = Field(default=300, ge=1)
    writes_per_minute: int = Field(default=60, ge=1)
    max_active_holds_per_requester: int = Field(default=5, ge=1)
    max_active_holds_per_partner: int = Field(default=1000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)


class WebhookSettings(BaseModel):
    """Partner webhook deliveries: retries with exponential backoff, then a dead letter."""

    model_config = {"extra": "forbid"}

    max_attempts: int = Field(default=30, ge=1, le=100)
    base_delay_seconds: float = Field(default=5, gt=0, le=3600)
    max_delay_seconds: float = Field(default=3600, gt=0, le=7 * 24 * 3600)
    timeout_seconds: float = Field(default=10, gt=0, le=120)
    # Partners sent to at once, each on its own thread (one partner's events one at a time).
    concurrency: int = Field(default=4, ge=1, le=8)

    @model_validator(mode="after")
    def _delays_grow(self) -> WebhookSettings:
        if self.max_delay_seconds < self.base_delay_seconds:
            raise ValueError("max_delay_seconds must be at least base_delay_seconds")
        return self


class TracingSettings(BaseModel):
    model_config = {"extra": "forbid"}

    otlp_endpoint: str | None = None
    service_name: str = Field(default="bookiji", min_length=1, max_length=100)
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class DaemonSettings(BaseModel):
    model_config = {"extra": "forbid"}

    jobs: JobIntervals = JobIntervals()
    job_lease_seconds: float = Field(default=60, gt=0, le=DAY_SECONDS)
    shutdown_grace_seconds: float = Field(default=8, gt=0, le=30)
    request_threads: int = Field(default=8, ge=1, le=200)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BOOKIJI_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    database_url: str = DEFAULT_DATABASE_URL
    # The daemon's: INFO writes a line per request and per job run, WARNING only problems.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    ttl: TTLSettings = TTLSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    availability: AvailabilitySettings = AvailabilitySettings()
    calendars: CalendarSettings = CalendarSettings()
    payments: PaymentSettings = PaymentSettings()
    notifications: NotificationSettings = NotificationSettings()
    api: ApiSettings = ApiSettings()
    daemon: DaemonSettings = DaemonSettings()
    webhooks: WebhookSettings = WebhookSettings()
    tracing: TracingSettings = TracingSettings()
    redis_url: str | None = None
    #: Fernet keys for sealed columns, newest first: comma-separated (env BOOKIJI_PII_KEYS),
    #: or a file with one per line. See bookiji/store/crypto.py.
    pii_keys: str | None = Field(default=None, repr=False)
    pii_keys_file: str | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        problem = database_url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_PATH.get("path")
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


_CONFIG_PATH: dict[str, Path | None] = {"path": None}


def database_url_problem(url: str) -> str | None:
    """What is wrong with a database URL, in words that never repeat it (it may carry a
    password), or None. Checked when settings load, so a bad URL is one line, not a driver
    traceback from the first connection."""
    usage = "a sqlite:/// or postgresql:// URL"
    if not url.startswith(("sqlite:", "postgresql", "postgres:")):
        return f"database_url must be {usage}"
    try:
        parsed = make_url(
            "postgresql" + url[len("postgres") :] if url.startswith("postgres:") else url
        )
        port = parsed.port
    except Exception:
        return (
            "database_url: not a valid URL (a port that is not a number, an open bracket?); "
            f"use {usage}"
        )
    if parsed.get_backend_name() == "sqlite":
        if parsed.get_driver_name() != "pysqlite":
            return "database_url: SQLite is reached through Python's own driver: sqlite:///path"
        return None  # in memory (`sqlite://`) is for code and tests; the CLI wants a file
    if parsed.get_backend_name() != "postgresql":
        return f"database_url must be {usage}"
    if "+" in parsed.drivername and parsed.get_driver_name() != "psycopg":
        return "database_url: Postgres is reached through psycopg 3: write postgresql://..."
    if port is not None and not 0 < port < 65536:
        return "database_url: the port must be 1-65535"
    return None


class ConfigError(Exception):
    """The configuration file or environment is unusable; the message says where."""


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit is not None:
        if not str(explicit).strip():  # not "no file given": a script's empty variable
            raise ConfigError("--config: the path is empty")
        return Path(explicit)
    env = os.environ.get("BOOKIJI_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def load_settings(
    explicit_path: str | os.PathLike[str] | None = None,
    *,
    given_as: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """`overrides` win over everything; `given_as` names where each came from (the CLI's
    `--database`), for the error that blames it."""
    path = config_path(explicit_path)
    if path is not None and not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    _CONFIG_PATH["path"] = path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid configuration: {_problems(exc, path, overrides, given_as or {})}"
        ) from None
    except SettingsError as exc:  # a table set in the environment that is not JSON
        raise ConfigError(f"invalid configuration: {_unparsed(exc, path)}") from None
    except Exception as exc:  # a TOML syntax error
        raise ConfigError(f"invalid configuration in {path}: {exc}") from None
    finally:
        _CONFIG_PATH["path"] = None


def _problems(
    exc: ValidationError,
    path: Path | None,
    overrides: Mapping[str, Any],
    given_as: Mapping[str, str],
) -> str:
    """Each bad setting, where it came from (an override, then an environment variable,
    then the file) and what is wrong with it, never the value given: a database URL or an
    API key in an error line would end up in terminals, logs and tickets."""
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        variable = _from_environment(loc)
        if loc and loc[0] in overrides:
            where = given_as.get(loc[0], ".".join(loc))
        elif variable is not None:
            where = variable
        else:
            where = f"{path}: {'.'.join(loc)}" if path else ".".join(loc) or "settings"
        problems.append(f"{where}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(problems)


def _from_environment(loc: list[str]) -> str | None:
    """The variable a setting came from: BOOKIJI_TTL__HOLD_MINUTES, or BOOKIJI_TTL holding
    the whole table as JSON (then with the setting inside it named)."""
    for n in range(len(loc), 0, -1):
        variable = _variable("BOOKIJI_" + "__".join(loc[:n]))
        if variable is not None:
            return variable if n == len(loc) else f"{variable}: {'.'.join(loc[n:])}"
    return None


def _variable(name: str) -> str | None:
    """The environment variable by that name as it is spelt there (the prefix and names
    are read case-insensitively), or None."""
    return next((key for key in os.environ if key.upper() == name.upper()), None)


def _unparsed(exc: SettingsError, path: Path | None) -> str:
    """pydantic-settings names the field and the source's class (`EnvSettingsSource`);
    say which variable (or file) instead, and what it needs."""
    found = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
    if found is None:
        return f"{path or 'settings'}: {exc}"
    field, source = found.groups()
    variable = _variable(f"BOOKIJI_{field}")
    if source == "EnvSettingsSource" and variable is not None:
        return (
            f"{variable}: a table in one variable must be a JSON object; or set each "
            f"setting alone, as BOOKIJI_{field.upper()}__<NAME>"
        )
    return f"{path or 'settings'}: {field}: cannot be read"
