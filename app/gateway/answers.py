"""Tolerant reading of the gateway's answers, whose exact layout the seed does not show."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from app.gateway.errors import Interface, UnreadableAnswer, refusal

# Blocks whose text is not the answer (an HTML page's title would otherwise be read as one).
_HIDDEN_RE = re.compile(r"<(head|title|script|style)\b[^>]*>.*?</\1\s*>", re.I | re.S)
_TAG_RE = re.compile(r"<[^>]*>")
_TOKEN_SEP_RE = re.compile(r"[\s,=:;|&]+")
_CODE_RE = re.compile(r"\d{2}")
# Words a gateway might put before the code or the ID ("code=00", "ID:12345").
_LABELS = frozenset({"code", "result", "return", "retcode", "ret", "rtn", "status", "state"})
_ID_LABELS = frozenset({"id", "msgid", "batch", "batchid", "sid"})

_KEY_SEP = r"\s*[=:,]?\s*"
_STATUS_RE = re.compile(
    r"\bSTATUS\b" + _KEY_SEP + r"(?P<mobile>[^,\r\n]+?)\s*,\s*(?P<msgid>[^,\s]*)\s*,"
    r"\s*(?P<time>[^,\r\n]*?)\s*,\s*(?P<state>[+-]?\d*)\s*,\s*(?P<text>[A-Za-z0-9_]*)",
    re.I,
)
_MSGID_RE = re.compile(r"\bMSGID\b" + _KEY_SEP + r"(?P<value>[^\s,&<>\"']+)", re.I)
_COUNT_RE = re.compile(r"\b(?P<key>OK|FAIL|WAIT)\b" + _KEY_SEP + r"(?P<value>\d+)", re.I)


def clean_text(raw: str) -> str:
    """The answer without HTML markup, entities, a byte-order mark or outer whitespace."""
    text = _HIDDEN_RE.sub("\n", raw)
    # A tag becomes a line break: `<br>` separates the lines of an HTML answer.
    text = _TAG_RE.sub("\n", text)
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


def parse_check_answer(raw: str) -> CheckResult:
    """Read a CheckSMS answer; raise the named error for a return code."""
    text = clean_text(raw)
    lines = list(_STATUS_RE.finditer(text))
    msgid = _MSGID_RE.search(text)
    counts: dict[str, int] = {}
    for m in _COUNT_RE.finditer(text):
        counts.setdefault(m["key"].upper(), int(m["value"]))
    # A bare MSGID after a leading code is the error text naming it, not a success.
    if not (lines or counts) and (msgid is None or re.match(r"\d{2}(?!\d)", text)):
        code, _ = read_code("CheckSMS", raw)
        raise refusal("CheckSMS", code, raw)
    statuses = []
    for m in lines:
        state = m["state"]
        statuses.append(
            CheckStatus(
                mobile=m["mobile"].strip(),
                msgid=m["msgid"],
                time=m["time"].strip(),
                state=int(state) if state.lstrip("+-") else None,
                text=m["text"].upper(),
            )
        )
    return CheckResult(
        batch_id=msgid["value"] if msgid else None,
        statuses=tuple(statuses),
        ok=counts.get("OK"),
        fail=counts.get("FAIL"),
        wait=counts.get("WAIT"),
        raw=raw,
    )
