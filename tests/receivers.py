"""Webhook receivers for the events tests: bench/receiver.py in a process of its own on
127.0.0.1, told how to answer, asked what it got."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.conftest import ROOT, free_port


class ReceiverProcess:
    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/hook"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", "--port", str(self.port)], cwd=ROOT
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx.get(self.base + "/_count", timeout=1)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def answer(self, status: int = 204, **extra: Any) -> None:
        """How to answer from now on: status, delay (s), location, retry_after, body."""
        httpx.post(self.base + "/_control", json={"status": status, **extra}, timeout=5)

    def log(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.base + "/_log", timeout=5).json())

    def events(self) -> list[dict[str, Any]]:
        """What was received: each with its headers and its body parsed."""
        return [{**r, "json": json.loads(r["body"])} for r in self.log()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@contextmanager
def receivers(n: int = 1) -> Iterator[list[ReceiverProcess]]:
    started = [ReceiverProcess() for _ in range(n)]
    try:
        yield started
    finally:
        for r in started:
            r.stop()
