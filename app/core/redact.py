"""Keep secrets and phone numbers out of log lines, whichever logger or library writes them."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from app.core.mobiles import mask_numbers
from app.core.paths import PREFIX as CALLBACK_PREFIX

MASK = "***"
# Secrets this long are unlikely to occur by accident: removed wherever they appear. Shorter
# ones (weak, but possible in a test setup) only where they stand alone, so a key "k" does
# not eat every k of a log line.
SUBSTRING_MIN = 8
_URL_SAFE = "A-Za-z0-9._~-"
# Whatever follows the callback path is a token, right or wrong (a near miss of the real one
# is as secret): masked in any text. The route template's `{token}` stays.
_CALLBACK_TOKEN_RE = re.compile(
    re.escape(CALLBACK_PREFIX) + r"/(?!\{token\}(?![^/\s?#\"'<>]))[^/\s?#\"'<>]+"
)


class Redactor:
    """Replaces the configured secrets with *** and masks phone numbers (`0912***678`)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self._secret_re: re.Pattern[str] | None = None
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another one is removed whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))
        patterns = [
            re.escape(s)
            if len(s) >= SUBSTRING_MIN
            else f"(?<![{_URL_SAFE}]){re.escape(s)}(?![{_URL_SAFE}])"
            for s in self.secrets
        ]
        self._secret_re = re.compile("|".join(patterns)) if patterns else None

    def __call__(self, text: str) -> str:
        text = _CALLBACK_TOKEN_RE.sub(CALLBACK_PREFIX + "/" + MASK, text)
        if self._secret_re is not None:
            text = self._secret_re.sub(MASK, text)
        return mask_numbers(text)


_redactor = Redactor()
# The record factory found when redaction was installed; None while it is not installed.
_plain_factory: Callable[..., logging.LogRecord] | None = None


def redact(text: str) -> str:
    """The text with the installed secrets removed and phone numbers masked."""
    return _redactor(text)


def _clean_arg(arg: Any) -> Any:
    if isinstance(arg, str):
        return _redactor(arg)
    if arg is None or isinstance(arg, int | float):
        return arg
    for text in (str(arg), repr(arg)):
        if _redactor(text) != text:
            return _redactor(str(arg))
    return arg


def clean_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a log record in place: its message, its arguments and its traceback."""
    if isinstance(record.msg, str):
        record.msg = _redactor(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {key: _clean_arg(value) for key, value in record.args.items()}
    elif record.args:
        # Argument by argument, so formatters that read them (uvicorn's access log) still can.
        record.args = tuple(_clean_arg(arg) for arg in record.args)
    try:
        message = record.getMessage()
    except Exception:  # a malformed call; logging reports it when it formats the record
        return record
    if _redactor(message) != message:  # a secret put together by the formatting itself
        record.msg, record.args = _redactor(message), ()
    if record.exc_info and record.exc_info[0] is not None:
        # Driver errors quote SQL and rows. When the traceback holds something to hide, keep
        # only its redacted text (formatters print exc_text), so no formatter prints the raw
        # exception.
        raw = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if _redactor(raw) != raw:
            record.exc_text = _redactor(raw)
            record.exc_info = None
    if record.stack_info:
        record.stack_info = _redactor(record.stack_info)
    return record


def install(secrets: Iterable[str]) -> Callable[[], None]:
    """Redact every log record this process creates, from any logger, before any handler or
    formatter sees it (a record factory, so handlers configured later are covered too).
    Returns the function that undoes this call: the secrets before it come back, and the
    factory goes if this call put it there."""
    global _plain_factory
    previous = _redactor.secrets
    _redactor.set_secrets(secrets)
    installed_here = _plain_factory is None
    if installed_here:
        make_record = logging.getLogRecordFactory()
        _plain_factory = make_record

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            return clean_record(make_record(*args, **kwargs))

        logging.setLogRecordFactory(redacting_factory)

    def undo() -> None:
        global _plain_factory
        _redactor.set_secrets(previous)
        if installed_here and _plain_factory is not None:
            logging.setLogRecordFactory(_plain_factory)
            _plain_factory = None

    return undo
