"""Configuration: every DLR_* environment variable, validated once at start."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
CommaList = Annotated[list[str], NoDecode]
NetworkList = Annotated[list[IPNetwork], NoDecode]

_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]+")
DEFAULT_DATABASE_URL = "sqlite:///./data/mboxii-dlr.db"


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All settings of the service; see the README for what each one does."""

    model_config = SettingsConfigDict(
        env_prefix="DLR_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL

    callback_tokens: CommaList = Field(default_factory=list)
    callback_ack: str = "OK"
    callback_networks: NetworkList = Field(default_factory=list)
    trusted_proxies: NetworkList = Field(default_factory=list)
    gateway_timezone: str = "Asia/Taipei"
    max_body_bytes: int = Field(default=16384, ge=64, le=10 * 1024 * 1024)

    api_keys: CommaList = Field(default_factory=list)
    cors_origins: CommaList = Field(default_factory=list)
    cursor_secret: str = ""

    ingest_batch_size: int = Field(default=500, ge=1, le=10000)
    ingest_batch_delay_ms: float = Field(default=2.0, ge=0, le=1000)
    ingest_queue_size: int = Field(default=10000, ge=1, le=1_000_000)
    ingest_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    retry_after_seconds: int = Field(default=5, ge=1, le=3600)
    db_pool_size: int = Field(default=10, ge=1, le=200)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "console"

    host: str = "0.0.0.0"  # noqa: S104 - a server inside a container listens on all interfaces
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    limit_concurrency: int = Field(default=2000, ge=10)
    shutdown_timeout_seconds: int = Field(default=30, ge=1, le=600)
    migrate_on_start: bool = False

    retention_days: int | None = Field(default=None, ge=1, le=36500)
    retention_interval_seconds: float = Field(default=3600.0, ge=1, le=7 * 86400)

    @field_validator("retention_days", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("callback_tokens", "api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("callback_networks", "trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        parts = _split_commas(value)
        if isinstance(parts, list):
            try:
                return [ipaddress.ip_network(p, strict=False) for p in parts]
            except ValueError as exc:
                raise ValueError(f"not a CIDR network list: {exc}") from None
        return parts

    @field_validator("callback_tokens")
    @classmethod
    def _check_tokens(cls, value: list[str]) -> list[str]:
        for token in value:
            if not _TOKEN_RE.fullmatch(token):
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
        if self.env == "production":
            missing = [
                name
                for name, value in (
                    ("DLR_CALLBACK_TOKENS", self.callback_tokens),
                    ("DLR_API_KEYS", self.api_keys),
                )
                if not value
            ]
            if missing:
                raise ValueError(
                    "DLR_ENV=production refuses to start without "
                    + " and ".join(missing)
                    + ": set them to long random secrets (for example "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.gateway_timezone)


class SettingsError(Exception):
    """A setting has a bad value; the message names the variable and the problem."""


def describe_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        name = "DLR_" + loc[0].upper() if loc else "settings"
        message = err["msg"].removeprefix("Value error, ")
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
