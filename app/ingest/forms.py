"""A callback's body decoded into (name, value) pairs by its content type: pure, no I/O."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from python_multipart.multipart import MultipartParser, parse_options_header

from app.ingest.errors import CallbackRejected

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON_TYPE = "application/json"


def _malformed(message: str) -> CallbackRejected:
    return CallbackRejected("malformed_body", [{"field": "body", "message": message}])


def _unquote(part: bytes) -> str:
    if b"%" in part or b"+" in part:
        return unquote_to_bytes(part.replace(b"+", b" ")).decode("utf-8")
    return part.decode("utf-8")  # most names and values need no unquoting


def parse_urlencoded(data: bytes) -> list[tuple[str, str]]:
    """Split an urlencoded string; a segment without '=' is a name with an empty value."""
    pairs: list[tuple[str, str]] = []
    try:
        for segment in data.split(b"&"):
            if segment:
                name, _, value = segment.partition(b"=")
                pairs.append((_unquote(name), _unquote(value)))
    except UnicodeDecodeError:
        raise _malformed("urlencoded data is not UTF-8") from None
    return pairs


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _JsonObject(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, duplicates kept."""


def parse_json(body: bytes) -> list[tuple[str, Any]]:
    """Parse a JSON object body, keeping duplicate keys and numbers as their literal text."""
    try:
        text = body.decode("utf-8-sig")
        # pairs (not a dict) so a key given twice is seen; numbers stay text, so that
        # a 5,000-digit integer costs nothing and "1" and 1 read alike
        value = json.loads(
            text,
            object_pairs_hook=_JsonObject,
            parse_int=str,
            parse_float=str,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError:
        raise _malformed("the JSON body is not UTF-8") from None
    except RecursionError:
        raise _malformed("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise _malformed(f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, _JsonObject):
        raise _malformed("the JSON body must be an object")
    return list(value)


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[str, str]]:
    """Parse a multipart/form-data body into (name, value) pairs."""
    pairs: list[tuple[str, str]] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "headers": {}, "data": []}

    def on_part_begin() -> None:
        state["headers"] = {}
        state["data"] = []

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"] = b""
        state["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"].append(data[start:end])

    def on_part_end() -> None:
        disposition = state["headers"].get(b"content-disposition")
        if disposition is None:
            raise _malformed("a multipart part has no Content-Disposition")
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        if name is None:
            raise _malformed("a multipart part has no name")
        try:
            pairs.append((name.decode("utf-8"), b"".join(state["data"]).decode("utf-8")))
        except UnicodeDecodeError:
            raise _malformed("a multipart field is not UTF-8") from None

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        written = parser.write(body)
        parser.finalize()
    except CallbackRejected:
        raise
    except Exception as exc:  # python-multipart raises several error types
        raise _malformed(f"the multipart body does not parse: {exc}") from None
    # The closing boundary must have been seen, else the body was cut short.
    if written != len(body) or parser.state.name != "END":
        raise _malformed("the multipart body is incomplete")
    return pairs


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into its lower-case media type and its parameters (names
    in lower case, quoted values unquoted)."""
    try:
        mtype, options = parse_options_header(content_type)
    except UnicodeEncodeError:  # beyond latin-1: no header value, no media type we know
        return content_type.strip().lower(), {}
    params = {k.decode("latin-1").strip().lower(): v.decode("latin-1") for k, v in options.items()}
    return mtype.decode("latin-1").strip(), params


def body_pairs(content_type: str, body: bytes) -> list[tuple[str, Any]]:
    """The fields of a non-empty body, by its content type."""
    mtype, options = media_type(content_type)
    if mtype == FORM:
        return parse_urlencoded(body)
    if mtype == JSON_TYPE or (mtype.startswith("application/") and mtype.endswith("+json")):
        return parse_json(body)
    if mtype == MULTIPART:
        boundary = options.get("boundary", "")
        if not boundary or len(boundary) > 200:
            raise _malformed("multipart/form-data without a usable boundary")
        return parse_multipart(body, boundary.encode("latin-1", "replace"))
    raise CallbackRejected(
        "unsupported_media_type",
        [
            {
                "field": "content-type",
                "message": f"{content_type or 'no content type'} is not form, multipart or JSON",
            }
        ],
    )
