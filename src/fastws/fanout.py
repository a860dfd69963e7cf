"""The one interface every broadcast travels through, and the relay to other nodes.

``Server.start()`` chooses one *fan-out target* and keeps it until ``stop()``:

* :class:`fastws.node.LocalNode`: this process accepts the connections (a :class:`Hub`);
* :class:`fastws.workers.WorkerPool`: worker processes accept them, the parent frames once;
* :class:`Relay` in front of either, when ``backplane`` is set: each frame also goes to
  the other nodes, and the frames they publish come in through it.

Everything that publishes (``Server.broadcast``, the stream component, stdin, the
backplane) ends in ``target.publish`` or ``target.publish_frame``. The target alone
decides when its queue is written: the first publish of a loop turn schedules one
flush, so everything published in that turn reaches each client in one write.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ._types import Item, Stats
from .history import relay_topic_frame

if TYPE_CHECKING:  # pragma: no cover
    from .backplane import Backplane

__all__ = ["FanOut", "Publisher", "Relay"]


class Publisher(Protocol):
    """What ``FanOut.publisher()`` returns: ``publish(item, topic=None) -> clients``."""

    def __call__(self, item: Item, topic: str | None = None, /) -> int: ...


class FanOut(Protocol):
    """A place broadcasts go: publish (an item or a ready frame), flush, count, stats."""

    def publish(self, item: Item, topic: str | None = None) -> int:
        """Encode ``item`` once and queue it (for ``topic``'s clients); the number of clients it is queued to."""
        ...

    def publish_frame(self, frame: bytes, topic: str | None = None, offset: int = 0, epoch: str | None = None) -> int:
        """Queue a complete frame made by :func:`fastws.encode_frame` (``offset``/``epoch``: numbered by a
        shared history)."""
        ...

    def publisher(self) -> Publisher:
        """The fastest callable that does :meth:`publish` (the Hub's own method, when local)."""
        ...

    def flush(self) -> int:
        """Write what is queued now (only ``stop()`` needs this; the target flushes each turn)."""
        ...

    def subscribers(self, topic: str) -> int:
        """The clients a broadcast on ``topic`` would be queued to now."""
        ...

    @property
    def port(self) -> int: ...

    @property
    def connection_count(self) -> int: ...

    @property
    def disconnect_count(self) -> int:
        """Clients that have left since start, for every reason (monotonic)."""
        ...

    def stats(self) -> Stats: ...

    async def stop(self, code: int, reason: str) -> None: ...


class Relay:
    """A fan-out target in front of another: every frame also goes to the other nodes.

    Frames the other nodes publish arrive through :meth:`deliver` and reach only the
    local clients (they are not published again).
    """

    def __init__(self, inner: FanOut, backplane: Backplane, encode: Callable[[Item], bytes]) -> None:
        self.inner = inner
        self.backplane = backplane
        self._encode = encode
        self._stopping = False

    async def start(self) -> None:
        await self.backplane.start(self.deliver, on_topic_frame=self.deliver_topic, local_stats=self.inner.stats)

    def deliver(self, frame: bytes) -> int:
        """A frame from another node: to this node's clients only (none once stopping)."""
        if self._stopping:
            return 0
        return self.inner.publish_frame(frame)

    def deliver_topic(self, frame: bytes, topic: str, offset: int, epoch: str | None) -> int:
        """A topic frame from the broker (numbered by the shared history when ``offset`` > 0)."""
        if self._stopping:
            return 0
        return self.inner.publish_frame(frame, topic, offset, epoch)

    def publish(self, item: Item, topic: str | None = None) -> int:
        return self.publish_frame(self._encode(item), topic)

    def publisher(self) -> Publisher:
        return self.publish

    def publish_frame(self, frame: bytes, topic: str | None = None, offset: int = 0, epoch: str | None = None) -> int:
        if topic is None:
            self.backplane.publish(frame)
            return self.inner.publish_frame(frame)
        return relay_topic_frame(self.inner, self.backplane, frame, topic, self.inner.subscribers)

    def subscribers(self, topic: str) -> int:
        return self.inner.subscribers(topic)

    def flush(self) -> int:
        return self.inner.flush()

    @property
    def port(self) -> int:
        return self.inner.port

    @property
    def connection_count(self) -> int:
        return self.inner.connection_count

    @property
    def disconnect_count(self) -> int:
        return self.inner.disconnect_count

    def stats(self) -> Stats:
        s = self.inner.stats()
        s["backplane"] = self.backplane.stats()
        s["cluster"] = self.backplane.cluster_stats()
        return s

    async def stop(self, code: int, reason: str) -> None:
        # the clients first (CLOSE ``code`` at once), then the broker connection
        self._stopping = True
        try:
            await self.inner.stop(code, reason)
        finally:
            await self.backplane.stop()
