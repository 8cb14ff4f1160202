"""The gateway's return codes, per interface, as a hierarchy of named errors."""

from __future__ import annotations

from typing import Literal

Interface = Literal["SendSMS", "SendTimeSMS", "CheckSMS"]


class GatewayError(Exception):
    """Base of everything that can go wrong talking to MboxII. `raw` is the gateway's
    answer as received (empty when none came); the account password never appears."""

    def __init__(self, message: str, *, interface: Interface, raw: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.interface = interface
        self.raw = raw


class GatewayUnavailable(GatewayError):
    """The gateway could not be reached, or answered with an HTTP error status."""


class GatewayTimeout(GatewayUnavailable):
    """The gateway did not answer in time; a send may or may not have happened."""


class UnreadableAnswer(GatewayError):
    """The gateway answered text this client cannot read."""


class GatewayRefused(GatewayError):
    """The gateway answered with one of its return codes: `code`, and its `meaning` for
    this `interface` (the same number means different things in different interfaces)."""

    #: True when the code concerns the account or the gateway as a whole, not one request:
    #: whoever polls should pause everything, not just this one send.
    account_wide = False

    def __init__(self, code: str, meaning: str, *, interface: Interface, raw: str = "") -> None:
        super().__init__(f"{interface} answered {code}: {meaning}", interface=interface, raw=raw)
        self.code = code
        self.meaning = meaning


class SendFailed(GatewayRefused):
    """01: the send failed."""


class AuthenticationFailed(GatewayRefused):
    """20: wrong account or password."""

    account_wide = True


class NoScheduleTime(GatewayRefused):
    """21 (SendTimeSMS): no schedule time T was given."""


class RecordNotFound(GatewayRefused):
    """21/23 (CheckSMS), 25 (SendTimeSMS): the gateway knows no such send."""


class InvalidLanguage(GatewayRefused):
    """22 (SendSMS, SendTimeSMS): bad language L."""


class InvalidQueryType(GatewayRefused):
    """22 (CheckSMS): bad query type T."""


class InvalidNumbers(GatewayRefused):
    """23 (SendSMS, SendTimeSMS): bad mobile numbers N."""


class InvalidText(GatewayRefused):
    """24 (SendSMS, SendTimeSMS): bad text M (too long or empty)."""


class NotSentYet(GatewayRefused):
    """24 (CheckSMS), 35 (SendTimeSMS): the scheduled send has not gone out yet."""


class InvalidTimeLength(GatewayRefused):
    """26 (SendTimeSMS): T is not 12 digits long."""


class InvalidTime(GatewayRefused):
    """27 (SendTimeSMS): T is not a valid schedule time."""


class NoCredit(GatewayRefused):
    """30: the account has no messages left."""

    account_wide = True


class TooManyNumbers(GatewayRefused):
    """31: more than 80 numbers in one send."""


class InvalidNumberFormat(GatewayRefused):
    """32: a mobile number is not written 0920222111."""


class InsufficientCredit(GatewayRefused):
    """33: the account has too few messages left for this send."""


class SiteSuspended(GatewayRefused):
    """40: the site is suspended."""

    account_wide = True


class ApiNotEnabled(GatewayRefused):
    """41: the site does not have the API enabled."""

    account_wide = True


class AddressNotAccepted(GatewayRefused):
    """42: the caller's IP address is not accepted."""

    account_wide = True


class QueryNotAccepted(GatewayRefused):
    """43: the query is not accepted."""

    account_wide = True


class GatewaySystemError(GatewayRefused):
    """99: the gateway's own system error (contact MboxII support)."""

    account_wide = True


class UnknownCode(GatewayRefused):
    """A code the seed does not list for this interface."""


_SEND: dict[str, tuple[type[GatewayRefused], str]] = {
    "01": (SendFailed, "send failed"),
    "20": (AuthenticationFailed, "wrong account or password"),
    "22": (InvalidLanguage, "bad language setting (L)"),
    "23": (InvalidNumbers, "bad mobile numbers (N)"),
    "24": (InvalidText, "bad message text (M): too long or empty"),
    "30": (NoCredit, "the account has no messages left to send"),
    "31": (TooManyNumbers, "more than 80 numbers in one send"),
    "32": (InvalidNumberFormat, "bad mobile number format"),
    "33": (InsufficientCredit, "the account has too few messages left for this send"),
    "40": (SiteSuspended, "the site is suspended"),
    "41": (ApiNotEnabled, "the site does not support the API"),
    "42": (AddressNotAccepted, "the caller's IP address is not accepted"),
    "43": (QueryNotAccepted, "query not accepted"),
    "99": (GatewaySystemError, "system error; contact MboxII support"),
}

#: Every return code of the seed, per interface, with its class and meaning. `00` is
#: success everywhere it exists and is not listed.
CODES: dict[Interface, dict[str, tuple[type[GatewayRefused], str]]] = {
    "SendSMS": dict(_SEND),
    "SendTimeSMS": {
        **{code: entry for code, entry in _SEND.items() if code != "43"},
        "21": (NoScheduleTime, "no schedule time (T) was given"),
        "25": (RecordNotFound, "no scheduled send with that ID to delete"),
        "26": (InvalidTimeLength, "the schedule time (T) is not 12 digits long"),
        "27": (InvalidTime, "the schedule time (T) has a bad format"),
        "35": (NotSentYet, "the scheduled message has not been sent yet"),
    },
    "CheckSMS": {
        "20": (AuthenticationFailed, "wrong account or password"),
        "21": (RecordNotFound, "no record of that ID"),
        "22": (InvalidQueryType, "bad query type (T)"),
        "23": (RecordNotFound, "no scheduled send with that ID"),
        "24": (NotSentYet, "the scheduled send has not gone out yet"),
        "40": (SiteSuspended, "the site is suspended"),
        "41": (ApiNotEnabled, "the site does not support the API"),
        "42": (AddressNotAccepted, "the caller's IP address is not accepted"),
        "43": (QueryNotAccepted, "query not accepted"),
        "99": (GatewaySystemError, "system error; contact MboxII support"),
    },
}


def refusal(interface: Interface, code: str, raw: str = "") -> GatewayRefused:
    """The named error of `code` in `interface` (UnknownCode for one the seed lacks)."""
    cls, meaning = CODES[interface].get(
        code, (UnknownCode, "a return code the gateway's documentation does not list")
    )
    return cls(code, meaning, interface=interface, raw=raw)
