"""Log output: JSON lines or console text, with the request id and mobile numbers masked."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import re
from contextvars import ContextVar
from typing import Any

from app.core.redact import redact

# Set by the request middleware for the time of one request; log lines written meanwhile
# (in the same task) carry it.
REQUEST_ID: ContextVar[str | None] = ContextVar("mboxii_dlr_request_id", default=None)

# A Taiwan mobile number in any spelling the callback accepts (0912345678, +886912345678,
# 886912345678, 912345678, +886 0912-345-678), standing alone, not inside a longer word.
_MOBILE_RE = re.compile(
    r"(?<![0-9A-Za-z_])(?:\+?886[ .-]?0?|0)?9[0-9]{2}[ .-]?[0-9]{3}[ .-]?[0-9]{3}(?![0-9A-Za-z_])"
)

# What every LogRecord has (and uvicorn's ANSI-coloured copy of its message); anything
# else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",
}


def _mask(match: re.Match[str]) -> str:
    national = "0" + re.sub(r"[^0-9]", "", match.group())[-9:]
    return f"{national[:4]}***{national[-3:]}"


def mask_numbers(text: str) -> str:
    """Replace every mobile number in `text` by its masked form, `0912***678`."""
    return _MOBILE_RE.sub(_mask, text)


def _request_id(record: logging.LogRecord) -> str | None:
    given = getattr(record, "request_id", None)
    return given if isinstance(given, str) else REQUEST_ID.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id(record)
        if request_id is not None:
            line["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:  # already formatted (and redacted: app.core.redact)
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # Masking the finished line covers the message, the extras and the traceback alike;
        # JSON leaves digits, '+', ' ', '.' and '-' unescaped, so the pattern sees them.
        # Secrets are removed from each value first, before JSON could escape them.
        line = {k: redact(v) if isinstance(v, str) else v for k, v in line.items()}
        return mask_numbers(redact(json.dumps(line, default=str, ensure_ascii=False)))


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines for local use: time, level, logger, [request id], message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # Set for this format only: another handler may format the same record after us.
        given = "request_id" in record.__dict__
        if not given:
            record.request_id = REQUEST_ID.get() or "-"
        try:
            return mask_numbers(redact(super().format(record)))
        finally:
            if not given:
                del record.__dict__["request_id"]


def logging_config(level: str = "info", fmt: str = "console") -> dict[str, Any]:
    """A dictConfig for our loggers and uvicorn's, given to uvicorn so every worker uses it."""
    level = level.upper()
    formatter = JsonFormatter if fmt == "json" else ConsoleFormatter
    return {
        "version": 1,
        # Loggers created at import time (ours, uvicorn's) must keep working.
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            # uvicorn's lines go through our handler (and format) via the root logger.
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            # uvicorn's access log prints raw paths, which carry the callback token; the
            # request middleware writes our own access log (mboxii_dlr.access) instead.
            "uvicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Install our handler and format on the root logger (replacing what was there)."""
    logging.config.dictConfig(logging_config(level, fmt))
