"""Tolerant reading of the gateway's answers, whose exact layout the seed does not show."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from app.gateway.errors import Interface, UnreadableAnswer, refusal

# Every pattern here runs in linear time on any input: answers come from the network, and a
# backtracking pattern on a few hundred KiB once held the event loop for most of a minute.
# Blocks whose text is not the answer (an HTML page's title would otherwise be read as one).
_HIDDEN_OPEN_RE = re.compile(r"<(head|title|script|style)\b", re.I)
_TOKEN_SEP_RE = re.compile(r"[\s,=:;|&]+")
_CODE_RE = re.compile(r"\d{2}")
# Words a gateway might put before the code or the ID ("code=00", "ID:12345").
_LABELS = frozenset({"code", "result", "return", "retcode", "ret", "rtn", "status", "state"})
_ID_LABELS = frozenset({"id", "msgid", "batch", "batchid", "sid"})

# A key and its value: `KEY=v`, `KEY: v`, `KEY,v`, `KEY v` (one optional separator, so the
# two runs of spaces around it cannot be traded against each other).
_KEY_SEP = r"\s*(?:[=:,]\s*)?"
_STATUS_KEY_RE = re.compile(r"\bSTATUS\b" + _KEY_SEP, re.I)
# One STATUS entry after its key, matched only within its own segment of the answer: five
# comma-separated parts (mobile, msgid, time, state, text), no part holding a comma.
_STATUS_FIELDS_RE = re.compile(
    r"(?P<mobile>[^,]*),(?P<msgid>[^,]*),(?P<time>[^,]*),(?P<state>[^,]*),\s*"
    r"(?P<text>[A-Za-z0-9_]*)"
)
_STATE_RE = re.compile(r"[+-]?\d*")
_MSGID_RE = re.compile(r"\bMSGID\b" + _KEY_SEP + r"(?P<value>[^\s,&<>\"']+)", re.I)
_COUNT_RE = re.compile(r"\b(?P<key>OK|FAIL|WAIT)\b" + _KEY_SEP + r"(?P<value>\d+)", re.I)


def _without_hidden_blocks(raw: str) -> str:
    """`raw` with each head, title, script and style element replaced by a line break."""
    lower = raw.lower()
    parts: list[str] = []
    kept = 0
    unclosed: set[str] = set()  # names with no closing tag after some point: never look again
    for opening in _HIDDEN_OPEN_RE.finditer(raw):
        name = opening[1].lower()
        if opening.start() < kept or name in unclosed:
            continue
        start_end = raw.find(">", opening.end())
        if start_end < 0:
            break  # no tag can end after this point
        close = lower.find("</" + name, start_end)
        close_end = raw.find(">", close) if close >= 0 else -1
        if close_end < 0 or raw[close + 2 + len(name) : close_end].strip():
            unclosed.add(name)
            continue
        parts += [raw[kept : opening.start()], "\n"]
        kept = close_end + 1
    parts.append(raw[kept:])
    return "".join(parts)


def _without_tags(text: str) -> str:
    """`text` with every `<...>` replaced by a line break (a `<` never closed stays)."""
    parts: list[str] = []
    kept = 0
    while True:
        opening = text.find("<", kept)
        if opening < 0:
            break
        closing = text.find(">", opening)
        if closing < 0:
            break  # no tag can end after this point
        parts += [text[kept:opening], "\n"]
        kept = closing + 1
    parts.append(text[kept:])
    return "".join(parts)


def clean_text(raw: str) -> str:
    """The answer without HTML markup, entities, a byte-order mark or outer whitespace."""
    # A tag becomes a line break: `<br>` separates the lines of an HTML answer.
    text = _without_tags(_without_hidden_blocks(raw))
    return html.unescape(text).replace("\ufeff", "").strip()


def _tokens(text: str) -> list[str]:
    return [t.strip("\"'") for t in _TOKEN_SEP_RE.split(text) if t.strip("\"'")]


def _identifier(value: str) -> bool:
    return 0 < len(value) <= 64 and value.isprintable() and " " not in value


def read_code(interface: Interface, raw: str) -> tuple[str, list[str]]:
    """The return code at the start of an answer and the tokens after it.

    Accepts `00,12345`, `00 12345`, `00\\n12345`, `00=12345`, `00:12345`, `code=00&ID=12345`,
    HTML-wrapped text, and `0012345` (the ID glued to the code)."""
    tokens = _tokens(clean_text(raw))
    while tokens and tokens[0].lower() in _LABELS:
        tokens.pop(0)
    if not tokens:
        raise UnreadableAnswer(f"{interface} gave an empty answer", interface=interface, raw=raw)
    first, rest = tokens[0], tokens[1:]
    if _CODE_RE.fullmatch(first):
        return first, rest
    if first.isdigit() and first.startswith("00"):
        return "00", [first[2:], *rest]
    raise UnreadableAnswer(
        f"{interface} answered without a return code", interface=interface, raw=raw
    )


def parse_send_answer(interface: Interface, raw: str) -> str:
    """The send's ID from a SendSMS or SendTimeSMS answer; raise the named error otherwise."""
    code, rest = read_code(interface, raw)
    if code != "00":
        raise refusal(interface, code, raw)
    for token in rest:
        if token.lower() in _ID_LABELS:
            continue
        if _identifier(token):
            return token
        break
    raise UnreadableAnswer(
        f"{interface} answered 00 without a usable ID", interface=interface, raw=raw
    )


def parse_plain_answer(interface: Interface, raw: str) -> None:
    """Accept a bare `00` (cancel, check of a scheduled send); raise the named error else."""
    code, _ = read_code(interface, raw)
    if code != "00":
        raise refusal(interface, code, raw)


@dataclass(frozen=True, slots=True)
class CheckStatus:
    """One STATUS line of CheckSMS, as written by the gateway."""

    mobile: str
    msgid: str
    time: str
    #: second-stage state: 0 ok, -1 failed (the opposite of the callback's statuscode);
    #: None while the number still waits for it
    state: int | None
    text: str

    @property
    def statuscode(self) -> int | None:
        """The state in the callback's convention: 1 success, 0 failure."""
        return {0: 1, -1: 0}.get(self.state) if self.state is not None else None


@dataclass(frozen=True, slots=True)
class CheckResult:
    """A CheckSMS success answer: the ID it names, its STATUS lines and its counts."""

    batch_id: str | None
    statuses: tuple[CheckStatus, ...]
    ok: int | None
    fail: int | None
    wait: int | None
    raw: str


def _status_entries(text: str) -> list[CheckStatus]:
    """Every well-formed STATUS entry, each read only up to the next STATUS key."""
    keys = list(_STATUS_KEY_RE.finditer(text))
    entries = []
    ends = [key.start() for key in keys[1:]] + [len(text)]
    for key, end in zip(keys, ends[: len(keys)], strict=True):
        segment = text[key.end() : end]
        m = _STATUS_FIELDS_RE.match(segment)
        if m is None:
            continue
        mobile, msgid, time, state = (
            m[name].strip() for name in ("mobile", "msgid", "time", "state")
        )
        if (
            not mobile
            or any(c in mobile + time for c in "\r\n")
            or any(c.isspace() for c in msgid)
            or not _STATE_RE.fullmatch(state)
        ):
            continue
        entries.append(
            CheckStatus(
                mobile=mobile,
                msgid=msgid,
                time=time,
                state=int(state) if state.lstrip("+-") else None,
                text=m["text"].upper(),
            )
        )
    return entries


def parse_check_answer(raw: str) -> CheckResult:
    """Read a CheckSMS answer; raise the named error for a return code."""
    text = clean_text(raw)
    lines = _status_entries(text)
    msgid = _MSGID_RE.search(text)
    counts: dict[str, int] = {}
    for m in _COUNT_RE.finditer(text):
        counts.setdefault(m["key"].upper(), int(m["value"]))
    # A bare MSGID after a leading code is the error text naming it, not a success.
    if not (lines or counts) and (msgid is None or re.match(r"\d{2}(?!\d)", text)):
        code, _ = read_code("CheckSMS", raw)
        raise refusal("CheckSMS", code, raw)
    return CheckResult(
        batch_id=msgid["value"] if msgid else None,
        statuses=tuple(lines),
        ok=counts.get("OK"),
        fail=counts.get("FAIL"),
        wait=counts.get("WAIT"),
        raw=raw,
    )
