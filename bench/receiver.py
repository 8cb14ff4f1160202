"""A tiny webhook receiver for tests and benchmarks: asyncio + httptools, keep-alive.

Every POST is recorded (arrival time, path, headers, body) and answered as told:
`POST /_control` with a JSON object sets the answer (`status`, `delay` seconds, `location`,
`retry_after`, `body`), `GET /_log` returns what was received, `GET /_count` how many.
With `--quiet` only a count is kept, plus the arrival times of events whose body holds
`--probe` (for latency measurements), at a few microseconds per request.

    python -m bench.receiver --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, cast

import httptools


class State:
    def __init__(self, quiet: bool, probe: bytes | None) -> None:
        self.quiet = quiet
        self.probe = probe
        self.answer: dict[str, Any] = {"status": 204}
        self.log: list[dict[str, Any]] = []
        self.count = 0
        self.probes: list[tuple[float, str]] = []
        self._head = b""
        self.set_answer({"status": 204})

    def set_answer(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        status = int(answer.get("status", 204))
        body = str(answer.get("body", "")).encode()
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(body)}"]
        if answer.get("location"):
            lines.append(f"location: {answer['location']}")
        if answer.get("retry_after") is not None:
            lines.append(f"retry-after: {answer['retry_after']}")
        self._head = ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    @property
    def response(self) -> bytes:
        return self._head


def _json_response(payload: Any) -> bytes:
    body = json.dumps(payload).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


class Receiver(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.state.quiet:
            self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        state, transport = self.state, self.transport
        assert transport is not None
        method = self.parser.get_method()
        if self._url.startswith(b"/_"):
            transport.write(self._control(method, self._url))
            return
        state.count += 1
        body = b"".join(self._body)
        if state.quiet:
            if state.probe is not None and state.probe in body:
                state.probes.append((time.time(), body.decode()))
        else:
            state.log.append(
                {
                    "at": time.time(),
                    "method": method.decode(),
                    "path": self._url.decode(),
                    "headers": {k.decode().lower(): v.decode() for k, v in self._headers},
                    "body": body.decode(),
                }
            )
        delay = float(state.answer.get("delay", 0))
        if delay:
            asyncio.get_running_loop().call_later(delay, self._write, state.response)
        else:
            transport.write(state.response)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _control(self, method: bytes, url: bytes) -> bytes:
        state = self.state
        if url == b"/_control" and method == b"POST":
            state.set_answer(json.loads(b"".join(self._body) or b"{}"))
            return _json_response(state.answer)
        if url == b"/_log":
            return _json_response(state.log)
        if url == b"/_count":
            return _json_response({"count": state.count})
        if url == b"/_probes":
            return _json_response(state.probes)
        return _json_response({"error": "unknown"})


async def serve(host: str, port: int, quiet: bool, probe: str | None) -> None:
    state = State(quiet, probe.encode() if probe else None)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Receiver(state), host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--quiet", action="store_true", help="count only (benchmarks)")
    parser.add_argument("--probe", help="record arrival times of bodies holding this text")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.quiet, args.probe))
    except ImportError:
        asyncio.run(serve(args.host, args.port, args.quiet, args.probe))


if __name__ == "__main__":
    main()
