"""Failed dashboard logins, counted per source address, so the open login form cannot be
used to guess API keys at speed."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

FAILURES_ALLOWED = 10
WINDOW_SECONDS = 600.0
# Addresses remembered at most (the oldest are forgotten first), so a flood of sources
# cannot grow memory without bound.
MAX_ADDRESSES = 10_000


class LoginThrottle:
    """After `allowed` failed logins from one address within `window` seconds, that address
    is refused until its oldest failure leaves the window. A success clears its record.
    Kept in the process (each worker counts for itself)."""

    def __init__(
        self,
        allowed: int = FAILURES_ALLOWED,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self.allowed = allowed
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it may try now."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.allowed:
            return None
        return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, address: str) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.allowed)
        failures.append(self.clock())
        self._failures[address] = failures  # newest last, so the oldest go first
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
