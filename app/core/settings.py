"""Configuration: every DLR_* environment variable, validated once at start."""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CommaList = Annotated[list[str], NoDecode]
SecretList = Annotated[list[SecretStr], NoDecode]
NetworkList = Annotated[list[IPvAnyNetwork], NoDecode]

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]+")
# Keys, tokens and secrets shorter than this can be guessed: production refuses them, a
# development setup is warned about them at start.
MIN_SECRET_LENGTH = 24
# The stand-ins of the deployment examples (deploy/example.env,
# deploy/kubernetes/secret.example.yaml) and the usual ones people type: production refuses a
# secret that is one of them, whatever its length. tests/test_security.py checks that every
# example value is caught.
PLACEHOLDER_PREFIXES = ("replace-me", "replace-with", "changeme", "change-me", "your-")
PLACEHOLDERS = frozenset(
    {"secret", "password", "changeit", "example", "demo", "demo-key", "test", "token", "key"}
)
GENERATE_HINT = "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
DEFAULT_DATABASE_URL = "sqlite:///./data/mboxii-dlr.db"
DEFAULT_MBOXII_BASE_URL = "http://op.mboxii.com/api/"
# The contract's retry schedule of an outbound event: the waits after each failed attempt.
DEFAULT_RETRY_SCHEDULE = tuple(
    dt.timedelta(seconds=s) for s in (5, 300, 1800, 7200, 18000, 36000, 36000)
)
WEBHOOK_SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
_NUM = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile(rf"(?:{_NUM}d)?(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?")


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_duration(value: object) -> object:
    """Seconds (`90`, `1.5`) or a duration such as `30m`, `1h30m`, `2d`, `500ms`; other
    values (a timedelta, ISO 8601 `PT30M`) are left to pydantic."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    if not isinstance(value, str):
        return value
    text = value.strip().lower().replace(" ", "")
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return dt.timedelta(seconds=seconds) if math.isfinite(seconds) else value
    if text.endswith("ms") and text[:-2].replace(".", "", 1).isdigit():
        return dt.timedelta(milliseconds=float(text[:-2]))
    match = _DURATION_RE.fullmatch(text)
    if text and match:
        days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
        return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if text.lstrip("-").startswith("p"):
        return value.strip().upper()  # ISO 8601, for pydantic to read
    raise ValueError("must be seconds or a duration such as 90s, 30m, 1h30m or 2d")


class Settings(BaseSettings):
    """All settings of the service; see the README for what each one does."""

    model_config = SettingsConfigDict(
        env_prefix="DLR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL

    callback_tokens: SecretList = Field(default_factory=list)
    callback_ack: str = "OK"
    callback_networks: NetworkList = Field(default_factory=list)
    trusted_proxies: NetworkList = Field(default_factory=list)
    gateway_timezone: str = "Asia/Taipei"
    max_body_bytes: int = Field(default=16384, ge=64, le=10 * 1024 * 1024)

    api_keys: SecretList = Field(default_factory=list)
    # Keys that may also send and cancel SMS (POST/DELETE /v1/messages); they read too.
    send_api_keys: SecretList = Field(default_factory=list)
    # Messages (one per number) each key may hand to the gateway per minute.
    send_rate: int = Field(default=60, ge=1, le=100_000)
    # /metrics without a key; unset: open in development, behind the API keys in production.
    metrics_public: bool | None = None
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
    mboxii_cid: str = ""
    mboxii_cpw: SecretStr = SecretStr("")
    mboxii_base_url: str = DEFAULT_MBOXII_BASE_URL
    mboxii_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    public_url: str = ""
    reconcile_after: dt.timedelta = dt.timedelta(minutes=30)
    reconcile_interval: dt.timedelta = dt.timedelta(seconds=60)
    reconcile_give_up_after: dt.timedelta = dt.timedelta(days=3)
    reconcile_backoff_max: dt.timedelta = dt.timedelta(hours=1)
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

    retention_days: int | None = Field(default=None, ge=1, le=36500)
    retention_interval_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)

    # Suppress a number once this many of its final deliveries in a row failed (empty: never).
    suppress_after_failures: int | None = Field(default=None, ge=1, le=1_000_000)

    # Outbound events (webhooks): see app.events.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    webhook_allow_private: bool = False
    webhook_retry_schedule: Annotated[list[dt.timedelta], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_SCHEDULE)
    )
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    # false: this replica records events but leaves sending them to the others.
    webhook_dispatch: bool = True
    status_callback_secret: SecretStr = SecretStr("")

    @field_validator("retention_days", "suppress_after_failures", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("metrics_public", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("callback_tokens", "api_keys", "send_api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("callback_networks", "trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator(
        "reconcile_after",
        "reconcile_interval",
        "reconcile_give_up_after",
        "reconcile_backoff_max",
        mode="before",
    )
    @classmethod
    def _parse_duration(cls, value: object) -> object:
        return parse_duration(value)

    @field_validator(
        "reconcile_after", "reconcile_interval", "reconcile_give_up_after", "reconcile_backoff_max"
    )
    @classmethod
    def _check_duration(cls, value: dt.timedelta) -> dt.timedelta:
        if value <= dt.timedelta(0):
            raise ValueError("must be a positive duration, e.g. 90 (seconds), 30m, 1h30m or 2d")
        return value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [parse_duration(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: list[dt.timedelta]) -> list[dt.timedelta]:
        if not value or len(value) > 50:
            raise ValueError("give 1 to 50 waits, comma separated (e.g. 5s,5m,30m)")
        if any(wait <= dt.timedelta(0) for wait in value):
            raise ValueError("every wait must be a positive duration")
        return value

    @field_validator("status_callback_secret")
    @classmethod
    def _check_status_secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value().strip()
        if secret and webhook_key(secret) is None:
            raise ValueError(
                "must be a Standard Webhooks secret: whsec_ followed by base64 of 24 to 64 "
                "random bytes (python -c 'import base64, secrets; "
                'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\')'
            )
        return SecretStr(secret)

    @field_validator("mboxii_base_url", "public_url")
    @classmethod
    def _check_http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        value = value.strip()
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query string or fragment")
        return value

    @field_validator("mboxii_cid")
    @classmethod
    def _check_cid(cls, value: str) -> str:
        value = value.strip()
        if value and not value.isprintable():
            raise ValueError("the account name must be printable text")
        return value

    @field_validator("callback_tokens")
    @classmethod
    def _check_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        for token in value:
            if not _TOKEN_RE.fullmatch(token.get_secret_value()):
                raise ValueError("callback tokens may use only letters, digits, '-', '_', '.', '~'")
        return value

    @field_validator("callback_ack")
    @classmethod
    def _check_ack(cls, value: str) -> str:
        if not value or any(c in value for c in "\r\n"):
            raise ValueError("the acknowledgement body must be one non-empty line")
        return value

    @field_validator("gateway_timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL (postgresql://... or sqlite:///...)") from None
        if url.get_backend_name() not in ("postgresql", "sqlite"):
            raise ValueError("only postgresql:// and sqlite:/// URLs are supported")
        return value

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
        password = _database_password(self.database_url)
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
        password = _database_password(self.database_url)
        return [*values, password] if password else values

    def __repr_args__(self) -> Any:
        # The database URL is shown (it says where the data is), its password is not.
        for name, value in super().__repr_args__():
            if name == "database_url" and isinstance(value, str):
                value = _hide_password(value)
            yield name, value


def webhook_key(secret: str) -> bytes | None:
    """The signing key of a `whsec_` secret (24 to 64 bytes), or None if it is not one."""
    import base64
    import binascii

    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        return None
    try:
        key = base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if 24 <= len(key) <= 64 else None


def is_placeholder(value: str) -> bool:
    """True for the stand-in values of the examples (`replace-me...`, `changeme`, ...)."""
    lowered = value.strip().lower()
    return lowered in PLACEHOLDERS or lowered.startswith(PLACEHOLDER_PREFIXES)


_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def covers_everything(network: IPNetwork) -> bool:
    """True for a network holding every address of its family (0.0.0.0/0, ::/0), or, for
    IPv6, every global unicast address (2000::/3): every client on the internet."""
    if network.prefixlen == 0:
        return True
    return isinstance(network, ipaddress.IPv6Network) and network.supernet_of(_GLOBAL_UNICAST)


def _database_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:  # the validator has refused such a URL already
        return None


def _hide_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "***"


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
