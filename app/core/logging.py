"""Log output: JSON lines or console text, with the request id and mobile numbers masked."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import re
from contextvars import ContextVar
from typing import Any

from app.core.mobiles import mask_numbers
from app.core.redact import redact

# Set by the request middleware for the time of one request; log lines written meanwhile
# (in the same task) carry it.
REQUEST_ID: ContextVar[str | None] = ContextVar("mboxii_dlr_request_id", default=None)

# What every LogRecord has (and uvicorn's ANSI-coloured copy of its message); anything
# else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "taskName",
    "color_message",
}


# Control characters (C0, DEL, C1, which also start ANSI escape sequences) and the Unicode
# line separators: written as escapes, so no logged value can start a line of its own, move
# the cursor or colour a terminal.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The same characters as JSON escapes: json.dumps leaves DEL, C1 and the separators raw.
_JSON_RAW_RE = re.compile("[\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) <= 0xFF else f"\\u{ord(char):04x}"
    )


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`)."""
    return _CONTROL_RE.sub(_escape, text)


def _indent_block(text: str) -> str:
    # A traceback keeps its lines, each indented: no line of it (nor of an exception message
    # inside it) can pass for a record of its own.
    return "\n".join("  " + escape_controls(line) for line in text.split("\n"))


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
        # Secrets are removed from each value first, before JSON could escape them. JSON
        # escapes C0 controls itself; DEL, C1 and the line separators are escaped here.
        line = {k: redact(v) if isinstance(v, str) else v for k, v in line.items()}
        text = mask_numbers(redact(json.dumps(line, default=str, ensure_ascii=False)))
        return _JSON_RAW_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines for local use: time, level, logger, [request id], message.

    Every value is written with its control characters escaped, so a request for
    `/x%0A2026-11-30 12:00:00,000 INFO ...` cannot write a line that looks like a record;
    a traceback follows on lines of its own, indented."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = record.__dict__.get("request_id") or REQUEST_ID.get() or "-"
        fields = (record.levelname, record.name, str(request_id), record.getMessage())
        level, name, request_id, message = (_clean(value) for value in fields)
        text = f"{self.formatTime(record)} {level:<7} {name} [{request_id}] {message}"
        blocks = []
        if record.exc_info:
            blocks.append(self.formatException(record.exc_info))
        elif record.exc_text:  # already formatted (and redacted: app.core.redact)
            blocks.append(record.exc_text)
        if record.stack_info:
            blocks.append(self.formatStack(record.stack_info))
        for block in blocks:
            text += "\n" + _indent_block(_clean(block, escape=False))
        return text


def _clean(value: str, escape: bool = True) -> str:
    # Masked before escaping: an escape such as \t in front of a number must not hide it.
    value = mask_numbers(redact(value))
    return escape_controls(value) if escape else value


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
