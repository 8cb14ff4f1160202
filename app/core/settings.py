"""Configuration: every DLR_* environment variable, validated once at start. The kinds of
value are in app.core.setting_types, the checks of secrets in app.core.secret_checks."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.secret_checks import (
    GENERATE_HINT,
    MIN_SECRET_LENGTH,
    covers_everything,
    database_password,
    hide_password,
    is_placeholder,
)
from app.core.setting_types import (
    AccountName,
    CommaList,
    DatabaseUrl,
    Duration,
    EmptyIsNone,
    HttpUrlText,
    NetworkList,
    OneLine,
    RetrySchedule,
    SecretList,
    TokenList,
    WebhookSecret,
    ZoneName,
)

DEFAULT_DATABASE_URL = "sqlite:///./data/mboxii-dlr.db"
DEFAULT_MBOXII_BASE_URL = "http://op.mboxii.com/api/"
# The contract's retry schedule of an outbound event: the waits after each failed attempt.
DEFAULT_RETRY_SCHEDULE = tuple(
    dt.timedelta(seconds=s) for s in (5, 300, 1800, 7200, 18000, 36000, 36000)
)


class Settings(BaseSettings):
    """All settings of the service; see the README for what each one does."""

    model_config = SettingsConfigDict(
        env_prefix="DLR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"
    database_url: DatabaseUrl = DEFAULT_DATABASE_URL

    callback_tokens: TokenList = Field(default_factory=list)
    callback_ack: OneLine = "OK"
    callback_networks: NetworkList = Field(default_factory=list)
    trusted_proxies: NetworkList = Field(default_factory=list)
    gateway_timezone: ZoneName = "Asia/Taipei"
    max_body_bytes: int = Field(default=16384, ge=64, le=10 * 1024 * 1024)

    api_keys: SecretList = Field(default_factory=list)
    # Keys that may also send and cancel SMS (POST/DELETE /v1/messages); they read too.
    send_api_keys: SecretList = Field(default_factory=list)
    # Messages (one per number) each key may hand to the gateway per minute.
    send_rate: int = Field(default=60, ge=1, le=100_000)
    # /metrics without a key; unset: open in development, behind the API keys in production.
    metrics_public: Annotated[bool | None, EmptyIsNone] = None
    cors_origins: CommaList = Field(default_factory=list)
    cursor_secret: SecretStr = SecretStr("")

    ingest_batch_size: int = Field(default=500, ge=1, le=10000)
    ingest_batch_delay_ms: float = Field(default=0.5, ge=0, le=1000)
    ingest_queue_size: int = Field(default=10000, ge=1, le=1_000_000)
    ingest_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    # Off behind PgBouncer before 1.21 in transaction pooling, which cannot keep a session's
    # named prepared statements (deploy/README.md, "Scaling out").
    db_prepared_statements: bool = True

    # The gateway account: set it to send through MboxII (/v1/messages) and reconcile.
    mboxii_cid: AccountName = ""
    mboxii_cpw: SecretStr = SecretStr("")
    mboxii_base_url: HttpUrlText = DEFAULT_MBOXII_BASE_URL
    mboxii_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    public_url: HttpUrlText = ""
    reconcile_after: Duration = dt.timedelta(minutes=30)
    reconcile_interval: Duration = dt.timedelta(seconds=60)
    reconcile_give_up_after: Duration = dt.timedelta(days=3)
    reconcile_backoff_max: Duration = dt.timedelta(hours=1)
    reconcile_rate: float = Field(default=2.0, gt=0, le=1000)
    reconcile_concurrency: int = Field(default=2, ge=1, le=64)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "console"
    access_log: bool = True
    access_log_callbacks: bool = False

    # Loopback for `make run`; the container image sets DLR_HOST=0.0.0.0.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    limit_concurrency: int = Field(default=2000, ge=10)
    shutdown_timeout_seconds: int = Field(default=30, ge=1, le=600)
    # A connection must deliver its request line and headers, and each piece of its body,
    # within this time, or it is closed (uvicorn alone would wait for ever).
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    migrate_on_start: bool = False

    retention_days: Annotated[int | None, EmptyIsNone] = Field(default=None, ge=1, le=36500)
    retention_interval_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)

    # Suppress a number once this many of its final deliveries in a row failed (empty: never).
    suppress_after_failures: Annotated[int | None, EmptyIsNone] = Field(
        default=None, ge=1, le=1_000_000
    )

    # Outbound events (webhooks): see app.events.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_allow_private: bool = False
    webhook_retry_schedule: RetrySchedule = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE)
    )
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    # false: this replica records events but leaves sending them to the others.
    webhook_dispatch: bool = True
    status_callback_secret: WebhookSecret = SecretStr("")

    @model_validator(mode="after")
    def _check_production(self) -> Settings:
        if self.env != "production":
            return self
        missing = [
            name
            for name, value in (
                ("DLR_CALLBACK_TOKENS", self.callback_tokens),
                ("DLR_API_KEYS", self.read_keys),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                "DLR_ENV=production refuses to start without "
                + " and ".join(missing)
                + f": set them to long random secrets (for example {GENERATE_HINT})"
            )
        problems = [
            f"{name} holds {problem}" for name, problem in self.weak_secrets(MIN_SECRET_LENGTH)
        ]
        password = database_password(self.database_url)
        if password is not None and is_placeholder(password):
            problems.append("DLR_DATABASE_URL holds a placeholder password")
        if problems:
            raise ValueError(
                "DLR_ENV=production refuses weak secrets: "
                + "; ".join(problems)
                + f". Generate each one with {GENERATE_HINT}"
            )
        everyone = [str(net) for net in self.trusted_proxies if covers_everything(net)]
        if everyone:
            raise ValueError(
                f"DLR_ENV=production refuses DLR_TRUSTED_PROXIES={','.join(everyone)}: a "
                "network holding every address lets any client write its own address in "
                "X-Forwarded-For (and so pass DLR_CALLBACK_NETWORKS and every login "
                "throttle); list only your proxies' networks"
            )
        return self

    @model_validator(mode="after")
    def _check_account(self) -> Settings:
        has_cid = bool(self.mboxii_cid)
        has_cpw = bool(self.mboxii_cpw.get_secret_value())
        if has_cid != has_cpw:
            raise ValueError(
                "the MboxII account needs both DLR_MBOXII_CID and DLR_MBOXII_CPW "
                "(or neither, to only receive reports)"
            )
        if not has_cid:
            return self
        if not self.send_api_keys:
            raise ValueError(
                "a configured MboxII account (DLR_MBOXII_CID) refuses to start without "
                "DLR_SEND_API_KEYS, the keys allowed to send SMS on your account through "
                "POST /v1/messages. Set it to a long random secret (for example "
                f"{GENERATE_HINT})"
            )
        if not self.public_url:
            raise ValueError(
                "a configured MboxII account needs DLR_PUBLIC_URL, the base URL at which the "
                "gateway reaches this service (e.g. https://dlr.example.com): it becomes the "
                "callback URL (Value) of every send"
            )
        return self

    @property
    def mboxii_configured(self) -> bool:
        """True when a gateway account is set: sending and reconciliation are on."""
        return bool(self.mboxii_cid)

    @property
    def callback_url(self) -> str:
        """The `Value` URL given to the gateway: our public URL, the callback path and the
        first token (the bare path when no token is set)."""
        base = self.public_url.rstrip("/") + "/callbacks/mboxii"
        if not self.callback_tokens:
            return base
        return f"{base}/{self.callback_tokens[0].get_secret_value()}"

    @property
    def read_keys(self) -> list[SecretStr]:
        """Every key that may read /v1 (and log in to the dashboard): read and send keys.
        When there is none, /v1 is open."""
        return [*self.api_keys, *self.send_api_keys]

    @property
    def metrics_open(self) -> bool:
        """Whether /metrics answers without a key (DLR_METRICS_PUBLIC, else development only)."""
        if self.metrics_public is not None:
            return self.metrics_public
        return self.env != "production"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.gateway_timezone)

    def secret_settings(self) -> list[tuple[str, list[str]]]:
        """Every secret setting by variable name, with its values in clear."""
        return [
            ("DLR_CALLBACK_TOKENS", [t.get_secret_value() for t in self.callback_tokens]),
            ("DLR_API_KEYS", [k.get_secret_value() for k in self.api_keys]),
            ("DLR_SEND_API_KEYS", [k.get_secret_value() for k in self.send_api_keys]),
            ("DLR_CURSOR_SECRET", [self.cursor_secret.get_secret_value()]),
            ("DLR_MBOXII_CPW", [self.mboxii_cpw.get_secret_value()]),
            ("DLR_STATUS_CALLBACK_SECRET", [self.status_callback_secret.get_secret_value()]),
        ]

    def weak_secrets(self, min_length: int = MIN_SECRET_LENGTH) -> list[tuple[str, str]]:
        """(variable, what is wrong) for each secret setting holding a value shorter than
        `min_length` or a placeholder; never the value itself. Unset secrets are not weak.

        The gateway password is chosen by MboxII, not by us: only placeholders count."""
        found = []
        for name, values in self.secret_settings():
            values = [v for v in values if v]
            if any(is_placeholder(v) for v in values):
                found.append((name, "a placeholder value"))
            elif name != "DLR_MBOXII_CPW" and any(len(v) < min_length for v in values):
                found.append((name, f"a value shorter than {min_length} characters"))
        return found

    @property
    def secret_values(self) -> list[str]:
        """Every secret of the configuration, which no log line may show."""
        values = [v for _, group in self.secret_settings() for v in group if v]
        password = database_password(self.database_url)
        return [*values, password] if password else values

    def __repr_args__(self) -> Any:
        # The database URL is shown (it says where the data is), its password is not.
        for name, value in super().__repr_args__():
            if name == "database_url" and isinstance(value, str):
                value = hide_password(value)
            yield name, value


class SettingsError(Exception):
    """A setting has a bad value; the message names the variable and the problem."""


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        name = "DLR_" + loc[0].upper() if loc else "settings"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"].startswith("ip_"):  # an address is no secret: say which one
            message += f" (got {err['input']!r}; a CIDR such as 10.0.0.0/8 with no host bits)"
        lines.append(f"{name}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build Settings from the environment, raising SettingsError with a readable message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
