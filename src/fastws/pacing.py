"""``broadcast_rate_limit``: slow an input stream down to a rate, by waiting, never dropping."""

from __future__ import annotations

import anyio

__all__ = ["Pacer"]


class Pacer:
    """Let at most ``rate`` items per second through on average, by waiting.

    ``await pacer.wait(n)`` before sending ``n`` items: it returns at once while the
    schedule allows it, and sleeps otherwise. Nothing is dropped: whoever feeds the
    items is slowed down instead (a bounded stream then pushes back on its producer).
    Idle time is not saved up: after a pause the schedule starts again from now, so
    the largest burst is one group of ``max_batch`` items (about 50 ms worth).
    """

    def __init__(self, rate: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = rate
        self.interval = 1.0 / rate
        #: the largest group of items sent together: about 50 ms worth, at least 1
        self.max_batch = max(1, int(rate * 0.05))
        self._next: float | None = None
        self.waited = 0.0  # seconds spent waiting, in total

    async def wait(self, n: int = 1) -> None:
        now = anyio.current_time()
        due = now if self._next is None or self._next < now else self._next
        if due > now:
            self.waited += due - now
            await anyio.sleep(due - now)
        self._next = due + n * self.interval
