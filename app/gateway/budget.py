"""Each key's budget of messages handed to the gateway per minute (DLR_SEND_RATE)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0
# Keys remembered at most: they are configured, so this only bounds the open case.
MAX_KEYS = 1000


class SendBudget:
    """A sliding window per key: the messages (one per number) sent in the last minute may
    not exceed `rate`. Kept in the process (each worker counts for itself)."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._sent: dict[str, deque[tuple[float, int]]] = {}

    def _used(self, key: str, now: float) -> deque[tuple[float, int]]:
        sent = self._sent.setdefault(key, deque())
        while sent and sent[0][0] <= now - WINDOW_SECONDS:
            sent.popleft()
        return sent

    def take(self, key: str, count: int) -> int | None:
        """Spend `count` messages of `key`'s budget and return None, or spend nothing and
        return the seconds until they fit. `count` must not exceed `rate`."""
        now = self.clock()
        sent = self._used(key, now)
        used = sum(n for _, n in sent)
        if used + count <= self.rate:
            sent.append((now, count))
            while len(self._sent) > MAX_KEYS:
                del self._sent[next(iter(self._sent))]
            return None
        # The oldest sends leave the window first: wait until enough of them have.
        freed = 0
        for at, n in sent:
            freed += n
            if used - freed + count <= self.rate:
                return max(1, math.ceil(at + WINDOW_SECONDS - now))
        return math.ceil(WINDOW_SECONDS)
