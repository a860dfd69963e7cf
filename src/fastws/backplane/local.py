"""In-process backplane (``memory://name``): servers in one process share a channel.

For tests and for several ``Server`` objects in one program; it behaves as the
broker backplanes do (node ids, own messages dropped, counters, stats messages).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .base import Backplane, BackplaneOptions

if TYPE_CHECKING:  # pragma: no cover
    from typing import Unpack

__all__ = ["LocalBackplane"]

_channels: dict[tuple[str, str], set[LocalBackplane]] = {}


class LocalBackplane(Backplane):
    def __init__(self, url: str, channel: str = "fastws", **options: Unpack[BackplaneOptions]) -> None:
        super().__init__(url, channel, **options)
        self._key = (url, channel)
        self._gone: asyncio.Event | None = None

    async def _connect(self) -> None:
        self._gone = asyncio.Event()
        _channels.setdefault(self._key, set()).add(self)

    async def _send(self, data: bytes) -> None:
        for node in list(_channels.get(self._key, ())):
            node._on_message(data)
        await asyncio.sleep(0)

    async def _receive_forever(self) -> None:
        assert self._gone is not None
        await self._gone.wait()
        raise ConnectionError("disconnected")

    async def _close(self) -> None:
        nodes = _channels.get(self._key)
        if nodes is not None:
            nodes.discard(self)
            if not nodes:
                del _channels[self._key]

    def disconnect(self) -> None:
        """Simulate a broker outage for this node (tests)."""
        if self._gone is not None:
            self._gone.set()
