"""NATS core pub/sub backplane (``nats://host:port``), on ``nats-py``.

One connection per node, ``no_echo``: the server does not send a node its own
messages back. nats-py's own reconnection is off; the backplane's loop reconnects,
with the same backoff and counters as the other brokers. Core NATS keeps nothing
(no JetStream): a node that is not subscribed when a message is published does not
get it.

Topics travel as ``T`` messages (``fastws.backplane.base``) with offset 0: every node
numbers each topic itself and keeps its own history (``history_size``), so recovery
over NATS is *per node*: a client that reconnects to the node it was on recovers; on
another node it gets ``recovered: false`` (that node's offsets and epoch are its own)
and then live messages. Why not JetStream: fastws' offsets count per topic from 1
with no gap, which is what lets a client tell "nothing missed" from "something lost".
JetStream numbers messages per *stream* (one sequence over every subject of it), so
consecutive per-topic offsets would need one stream per topic (thousands of streams
for per-symbol or per-user topics), or a per-topic counter in a KV bucket next to the
stream, which JetStream cannot increment and append atomically (two round trips and a
compare-and-swap retry per message, and a gap when a node dies between them). Redis
does the three in one script; use a Redis backplane for cross-node recovery.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .base import Backplane, BackplaneOptions

if TYPE_CHECKING:  # pragma: no cover
    from typing import Unpack

    from nats.aio.client import Client as NATSClient
    from nats.aio.msg import Msg

__all__ = ["NatsBackplane"]

logger = logging.getLogger("fastws.backplane")


class NatsBackplane(Backplane):
    def __init__(self, url: str, channel: str = "fastws", **options: Unpack[BackplaneOptions]) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            from ..exceptions import ConfigError
            from ..optional import missing_extra

            raise ConfigError(missing_extra(url) or f"backplane: {url} needs {exc}") from None
        super().__init__(url, channel, **options)
        self._nc: NATSClient | None = None
        self._closed: asyncio.Event | None = None

    async def _connect(self) -> None:
        import nats

        closed = self._closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()

        async def on_error(exc: Exception) -> None:
            logger.debug("backplane %s: nats: %r", self.safe_url, exc)

        self._nc = await nats.connect(
            self.url,
            name=f"fastws-{self.node_id.decode()}",
            allow_reconnect=False,
            connect_timeout=2,
            no_echo=True,
            closed_cb=on_closed,
            disconnected_cb=on_closed,
            error_cb=on_error,
        )
        self.max_batch_bytes = min(type(self).max_batch_bytes, self._nc.max_payload - 64)
        on_message = self._on_message

        async def on_msg(msg: Msg) -> None:
            on_message(msg.data)

        await self._nc.subscribe(self.channel, cb=on_msg)
        await self._nc.flush(timeout=2)  # the server has the subscription

    async def _send(self, data: bytes) -> None:
        nc = self._nc
        if nc is None or nc.is_closed:
            raise ConnectionError("not connected to NATS")
        await nc.publish(self.channel, data)

    async def _receive_forever(self) -> None:
        assert self._closed is not None
        await self._closed.wait()
        raise ConnectionError("connection to NATS lost")

    async def _close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await nc.close()

    def _is_connection_error(self, exc: BaseException) -> bool:
        from nats.errors import MaxPayloadError

        return not isinstance(exc, MaxPayloadError)
