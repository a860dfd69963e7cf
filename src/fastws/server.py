"""The standalone server: one object users start, broadcast through, and stop.

``Server`` chooses one fan-out target in :meth:`Server.start` (see ``fastws.fanout``):
a :class:`~fastws.node.LocalNode` that accepts the connections in this process, or a
:class:`~fastws.workers.WorkerPool` of processes that do, with a
:class:`~fastws.fanout.Relay` in front when a ``backplane`` links several nodes.
Every broadcast goes through :meth:`Server.broadcast` / :meth:`Server.broadcast_many`
to that one target.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import msgspec

from . import auth as _auth
from . import metrics as _metrics
from ._core import Client, Hub, encode_frame
from ._types import ConfigDict, ConfigValue, Item, Stats
from .config import ServerConfig
from .encoding import count_nonfinite, fallback_encode
from .exceptions import ConfigError, EncodeError, ServerError
from .fanout import FanOut, Publisher, Relay
from .http_types import HandshakeCheck, HTTPResponse, Refusal, Route
from .node import ConnectionLimit, LocalNode
from .topics import REFUSAL_REASONS, check_topic
from .workers import ConnectionSlots, LogSetup, WorkerPool, resolve_workers, worker_main

if TYPE_CHECKING:  # pragma: no cover
    from .backplane import Backplane

__all__ = ["Server", "HTTPResponse", "Refusal"]

logger = logging.getLogger("fastws.server")


class FrameEncoder:
    """Frames items where no Hub of this process does: the parent of workers, the relay.

    Encodes exactly as the Hub does (msgspec, the json.dumps-compatible fallback,
    ``str`` verbatim, items larger than ``max_queued_bytes`` refused) and counts
    what it refuses and the non-finite numbers it writes as ``null``.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.encode_errors = 0
        self.nonfinite_numbers = 0

    def _count_nonfinite(self, item: Item) -> int:
        n = count_nonfinite(item)
        self.nonfinite_numbers += n
        return n

    def __call__(self, item: Item) -> bytes:
        try:
            return encode_frame(item, fallback_encode, self._count_nonfinite, self.max_size)
        except EncodeError:
            self.encode_errors += 1
            raise

    def add_stats(self, s: Stats) -> None:
        s["encode_errors"] = int(s.get("encode_errors", 0)) + self.encode_errors
        s["nonfinite_numbers"] = int(s.get("nonfinite_numbers", 0)) + self.nonfinite_numbers


class Server:
    """A WebSocket broadcast server.

    >>> server = Server(ServerConfig(port=0))
    >>> await server.start()
    >>> server.broadcast({"price": 1.5})    # -> number of clients it is queued to
    >>> await server.stop()                  # clients get CLOSE 1001

    Items broadcast in the same loop turn reach each client in one write.
    """

    def __init__(
        self,
        config: ServerConfig | ConfigDict | None = None,
        *,
        on_message: Callable[[Client, str | bytes], object] | None = None,
        on_connect: Callable[[Client], object] | None = None,
        on_disconnect: Callable[[Client], object] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        auth_check: HandshakeCheck | None = None,
        connection_limit: ConnectionLimit | None = None,
        **settings: ConfigValue,
    ) -> None:
        if settings:
            base: ConfigDict = {} if config is None else (
                msgspec.structs.asdict(config) if isinstance(config, ServerConfig) else dict(config))
            base.update(settings)
            config = base
        self.config: ServerConfig = config if isinstance(config, ServerConfig) else ServerConfig.from_dict(config)
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self._ssl_context = ssl_context
        self._limit = connection_limit  # max_connections kept by a worker pool (fastws.workers)
        self._target: FanOut | None = None
        self._publish: Publisher = _not_started
        self._node: LocalNode | None = None
        self._pool: WorkerPool | None = None
        self._relay: Relay | None = None
        self._metrics_server: _metrics.MetricsHTTPServer | None = None
        self._encoder = FrameEncoder(self.config.max_queued_bytes)
        self.started_at: float | None = None
        self._routes: dict[str, Route] = {}
        self._checks: list[HandshakeCheck] = []
        self.rejected: dict[str, int] = {"max_connections": 0}
        c = self.config
        if c.metrics_port is None:  # health and metrics on the WebSocket port
            self._routes.update(_metrics.routes(self))
        checks, reasons = _auth.handshake_checks(c.auth, auth_check)
        self._checks.extend(checks)
        self._grants = _auth.topic_grants(checks)  # what a token may subscribe to (issue 15)
        for reason in (*reasons, *REFUSAL_REASONS):
            self.rejected.setdefault(reason, 0)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def is_serving(self) -> bool:
        return self._target is not None

    async def start(self) -> None:
        """Listen on ``host:port``. Raises :class:`ServerError` if that is not possible."""
        if self._target is not None:
            return
        c = self.config
        if c.page and c.page_path not in self._routes:
            from .page import page_bytes, page_route

            page_bytes()  # read the package data now: a broken install fails at start, not per request
            self.add_route(c.page_path, page_route)
        target: FanOut
        if self._limit is None and c.workers != 1 and resolve_workers(c.workers) > 1:
            if self.on_message or self.on_connect or self.on_disconnect or self._ssl_context is not None:
                raise ConfigError("workers: on_message/on_connect/on_disconnect callbacks and an ssl_context "
                                  "object cannot be passed to worker processes; use workers: 1 "
                                  "(or ssl: in the config)")
            pool = WorkerPool(c, resolve_workers(c.workers), target=_worker_process, encode=self._encoder)
            await pool.start()
            self._pool = target = pool
        else:
            node = LocalNode(c, routes=self._routes, checks=self._checks, callbacks=self,
                             rejected=self.rejected, ssl_context=self._ssl_context, limit=self._limit,
                             grants=self._grants)
            if c.backplane is not None and c.history_size > 0:
                from .backplane import create_backplane

                backplane = create_backplane(c.backplane, c.backplane_channel, history_size=c.history_size,
                                             history_ttl=c.history_ttl)
                if backplane.shared_history:  # from the first client on: recovery reads Redis (issue 15)
                    node.use_shared_history(backplane)
            await node.start()
            self._node = target = node
        self._target = target
        self.started_at = time.time()
        try:
            if c.metrics_port is not None:
                self._metrics_server = _metrics.MetricsHTTPServer(self)
                try:
                    await self._metrics_server.start()  # metrics_host (loopback by default)
                except OSError as exc:
                    self._metrics_server = None
                    raise ServerError(exc.errno, f"cannot listen on {_metrics.bind_host(c)}:{c.metrics_port} "
                                                 f"(metrics_port): "
                                                 f"{exc.strerror or exc}") from None
            if c.backplane is not None:
                from .backplane import create_backplane

                shared = self._node.history_backplane if self._node is not None else None
                relay = Relay(target, shared or create_backplane(c.backplane, c.backplane_channel,
                                                                 history_size=c.history_size,
                                                                 history_ttl=c.history_ttl), self._encoder)
                await relay.start()
                self._relay = relay
                self._target = relay
            self._publish = self._target.publisher()
        except BaseException:
            await self.stop()
            raise

    async def stop(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop listening, close every client with ``code`` and wait for them to go."""
        target, self._target = self._target, None
        self._publish = _not_started
        if target is None:
            return
        try:
            await target.stop(code, reason)
        finally:
            if self._metrics_server is not None:
                await self._metrics_server.stop()
                self._metrics_server = None

    async def serve_forever(self) -> None:
        import asyncio

        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- broadcasting: the one way anything publishes ------------------------------------

    def _started(self) -> FanOut:
        if self._target is None:
            raise RuntimeError("the server is not started")
        return self._target

    def broadcast(self, item: Item, topic: str | None = None) -> int:
        """Queue ``item`` for every connected client; return how many it is queued to.

        With ``topic``, only the clients that get that topic (docs/topics.md): its
        subscribers, and the clients that chose no topic while ``firehose`` is on.

        Serialized once (``str`` verbatim, anything else as JSON); everything
        broadcast in this loop turn is written to each client in one write.
        Raises :class:`fastws.EncodeError` (and counts it) for an item that cannot
        be serialized, ``ValueError`` for a topic that is not a valid name
        (``check_topic``: no client could subscribe to it).

        With ``workers`` the count is the clients connected over all workers; with a
        ``backplane`` it counts this node's clients only (docs/reference.md).
        """
        if topic is None:
            return self._publish(item)
        self._check_topic(topic)
        return self._publish(item, topic)

    def _check_topic(self, topic: object) -> None:
        """A topic no client could subscribe to is refused (it would reach firehose clients only)."""
        if type(topic) is not str:
            raise TypeError(f"topic must be a str, not {type(topic).__name__}")
        why = check_topic(topic, self.config.max_topic_length)
        if why is not None:
            raise ValueError(why)

    def broadcast_many(self, items: Iterable[Item], topic: str | None = None, *,
                       topics: Iterable[str | None] | None = None) -> list[int | EncodeError]:
        """:meth:`broadcast` each item; a bad item gives its :class:`EncodeError` in its slot.

        ``topic`` is the topic of every item; ``topics`` gives one (or None) per item instead.
        The others are queued, in order, and reach each client in one write.
        """
        publish = self._publish
        out: list[int | EncodeError] = []
        if topics is None and topic is None:
            for item in items:
                try:
                    out.append(publish(item))
                except EncodeError as exc:
                    out.append(exc)
            return out
        if topics is not None and topic is not None:
            raise TypeError("give topic (one for all items) or topics (one per item), not both")
        if topics is not None:
            items, topics = list(items), list(topics)
            if len(topics) != len(items):  # a short list would send the rest to every client
                raise ValueError(f"broadcast_many: {len(items)} items but {len(topics)} topics")
        per_item = iter(topics) if topics is not None else None
        if topic is not None:
            self._check_topic(topic)
        for item in items:
            t = next(per_item) if per_item is not None else topic
            if per_item is not None and t is not None:
                self._check_topic(t)
            try:
                out.append(publish(item, t))
            except EncodeError as exc:
                out.append(exc)
        return out

    def broadcast_frame(self, frame: bytes, topic: str | None = None, offset: int = 0,
                        epoch: str | None = None) -> int:
        """Broadcast a frame made by :func:`fastws.encode_frame` (to the backplane too, if any).

        ``offset``/``epoch``: the frame was numbered by a shared history (worker processes)."""
        return self._started().publish_frame(frame, topic, offset, epoch)

    def flush(self) -> int:
        """Write what was broadcast in this turn now (the server does so by itself each turn)."""
        return self._target.flush() if self._target is not None else 0

    # -- introspection -----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port listened on (the real one when ``port`` was 0)."""
        return self._target.port if self._target is not None else self.config.port

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return self._node.sockets if self._node is not None and self._target is not None else ()

    @property
    def metrics_port(self) -> int | None:
        """The port of the separate health/metrics server (``metrics_port``), if running."""
        return self._metrics_server.port if self._metrics_server is not None else None

    @property
    def connection_count(self) -> int:
        return self._target.connection_count if self._target is not None else 0

    @property
    def disconnect_count(self) -> int:
        """Clients that have left since start, for every reason (monotonic)."""
        return self._target.disconnect_count if self._target is not None else 0

    @property
    def hub(self) -> Hub | None:
        """The Hub of a server that accepts connections in this process (None with workers)."""
        return self._node.hub if self._node is not None and self._target is not None else None

    @property
    def workers(self) -> WorkerPool | None:
        """The worker pool while the server runs with ``workers`` > 1."""
        return self._pool if self._target is not None else None

    @property
    def backplane(self) -> Backplane | None:
        """The backplane connection while ``backplane`` is set and the server runs."""
        return self._relay.backplane if self._relay is not None and self._target is not None else None

    @property
    def clients(self) -> list[Client]:
        return self._node.clients if self._node is not None and self._target is not None else []

    def topic_counts(self, limit: int = 100) -> dict[str, tuple[int, int]]:
        """{topic: (subscribers, messages)} of the ``limit`` busiest topics of this process's
        clients (empty with workers: each worker knows its own)."""
        hub = self.hub
        return hub.topic_counts(limit) if hub is not None else {}

    def stats(self) -> Stats:
        s: Stats = self._target.stats() if self._target is not None else {"connections": 0}
        self._encoder.add_stats(s)
        s.setdefault("rejected", dict(self.rejected))
        for key in ("connections_total", "heartbeat_timeouts", "handshake_timeouts", "disconnects"):
            s.setdefault(key, 0)
        s["uptime"] = (time.time() - self.started_at) if self.started_at and self.is_serving else 0.0
        return s

    # -- extension points --------------------------------------------------------------

    def add_route(self, path: str, handler: Route) -> None:
        """Answer plain HTTP ``GET path`` (no upgrade) with ``handler(request)``.

        ``handler`` returns ``(status, headers, body)``; the response is sent with
        ``Content-Length`` and ``Connection: close`` (picows serves one request per
        connection). Used by the health, metrics and page features.
        """
        self._routes[path] = handler

    def add_handshake_check(self, check: HandshakeCheck) -> None:
        """Run ``check(request)`` on every WebSocket upgrade, in the order added.

        A check returns ``None`` to let the connection in, or ``(status, reason)``
        to refuse it with that HTTP status before the upgrade (counted in
        ``stats()["rejected"][reason]``).
        """
        self._checks.append(check)


def _not_started(item: Item, topic: str | None = None, /) -> int:
    raise RuntimeError("the server is not started")


def _make_worker_server(config: ServerConfig, slots: ConnectionSlots) -> Server:
    return Server(config, connection_limit=slots)


def _worker_process(config: ServerConfig, index: int, sock: socket.socket, slots: ConnectionSlots,
                    log_level: LogSetup | None) -> None:
    """The entry point of a worker process (``multiprocessing`` spawns it by this name)."""
    worker_main(_make_worker_server, config, index, sock, slots, log_level)
