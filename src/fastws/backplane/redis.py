"""Redis pub/sub backplane (``redis://host:port/db``), on ``redis.asyncio``.

Two connections per node: one publishes (``PUBLISH channel batch``, awaited, so
batches go out in order and the next batch collects what was broadcast meanwhile),
one subscribes. Redis pub/sub keeps nothing: a node that is not subscribed when a
message is published does not get it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backplane, BackplaneOptions

if TYPE_CHECKING:  # pragma: no cover
    from typing import Unpack

    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

__all__ = ["RedisBackplane"]


class RedisBackplane(Backplane):
    def __init__(self, url: str, channel: str = "fastws", **options: Unpack[BackplaneOptions]) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            from ..exceptions import ConfigError
            from ..optional import missing_extra

            raise ConfigError(missing_extra(url) or f"backplane: {url} needs {exc}") from None
        super().__init__(url, channel, **options)
        self._pub: Redis | None = None
        self._sub: Redis | None = None
        self._ps: PubSub | None = None

    async def _connect(self) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: a PUBLISH retried after a lost reply could be
        # delivered twice. The backplane's own loop reconnects.
        retry = Retry(NoBackoff(), 0)
        self._pub = Redis.from_url(self.url, socket_timeout=5.0, socket_connect_timeout=2.0, retry=retry,
                                   client_name="fastws")
        self._sub = Redis.from_url(self.url, socket_timeout=None, socket_connect_timeout=2.0, retry=retry,
                                   client_name="fastws")
        await self._pub.ping()
        self._ps = self._sub.pubsub()
        await self._ps.subscribe(self.channel)
        # wait for the confirmation: from here on, nothing published is missed
        while True:
            msg = await self._ps.get_message(timeout=2.0)
            if msg is None:
                raise ConnectionError("no subscription confirmation from Redis")
            if msg["type"] == "subscribe":
                return
            if msg["type"] == "message":
                self._on_message(msg["data"])

    async def _send(self, data: bytes) -> None:
        pub = self._pub
        assert pub is not None  # _send runs only while connected
        await pub.publish(self.channel, data)

    async def _receive_forever(self) -> None:
        ps = self._ps
        assert ps is not None  # called once connected
        on_message = self._on_message
        while True:
            msg = await ps.get_message(timeout=None)
            if msg is not None and msg["type"] == "message":
                on_message(msg["data"])

    async def _close(self) -> None:
        ps, sub, pub = self._ps, self._sub, self._pub
        self._ps = self._sub = self._pub = None
        if ps is not None:
            await ps.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated
        if sub is not None:
            await sub.aclose()
        if pub is not None:
            await pub.aclose()
