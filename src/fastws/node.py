"""One process serving WebSocket clients: picows on the loop, the Hub, the heartbeat.

:class:`LocalNode` is the fan-out target of a server that accepts connections itself
(a single process, or one worker of a pool). It owns the listening socket, the
upgrade handler (plain-HTTP routes, handshake checks, ``max_connections``), the
:class:`~fastws._core.Hub` that registers the clients and fans frames out, and the
one heartbeat timer for every connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol, TypedDict

from picows import (
    WSListener,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from ._cliutil import plural
from ._core import Client, Hub
from ._types import Item, Stats
from .config import ServerConfig
from .deflate import negotiate
from .encoding import count_nonfinite, fallback_encode
from .exceptions import ServerError
from .fanout import Publisher
from .fdlimit import check_fd_limit, listening_socket
from .handshake import accept_upgrade
from .history import start_recovery
from .http_types import HandshakeCheck, Route
from .topics import (
    ClientRequest,
    Grants,
    Subscription,
    matches,
    parse_client_message,
    subscription_parser,
)

if TYPE_CHECKING:  # pragma: no cover
    from logging import _ExcInfoType

    from .backplane import Backplane  # typeshed's name for what exc_info= takes

__all__ = ["LocalNode", "ConnectionLimit", "ClientCallbacks"]

logger = logging.getLogger("fastws.server")
# picows logs every connection at INFO and every malformed frame at ERROR, twice;
# any peer can trigger those, so they go to a logger of their own.
_picows_logger = logging.getLogger("fastws.picows")


class ConnectionLimit(Protocol):
    """``max_connections`` kept elsewhere (over all the workers of a pool)."""

    def acquire(self) -> bool: ...

    def release(self) -> None: ...

    def check_connected(self, client: Client) -> None: ...


class ClientCallbacks(Protocol):
    """The user's callbacks (``Server(on_message=..., on_connect=..., on_disconnect=...)``)."""

    on_message: Callable[[Client, str | bytes], object] | None
    on_connect: Callable[[Client], object] | None
    on_disconnect: Callable[[Client], object] | None


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows' logger for one node; counts handshake timeouts, which picows only logs."""

    def __init__(self, node: LocalNode) -> None:
        super().__init__(_picows_logger, {})
        self._node = node

    def log(self, level: int, msg: object, *args: object, exc_info: _ExcInfoType = None, stack_info: bool = False,
            stacklevel: int = 1, extra: Mapping[str, object] | None = None, **kwargs: object) -> None:
        if level == logging.INFO and isinstance(msg, str):
            if msg.startswith("Handshake timeout"):
                self._node.handshake_timeouts += 1
            elif msg.startswith("Disconnect because HTTP request violated max_size"):  # over 16 KiB
                self._node.count_rejected("request_too_large")
        super().log(level, msg, *args, exc_info=exc_info, stack_info=stack_info, stacklevel=stacklevel,
                    extra=extra, **kwargs)


class _ListenOn(TypedDict, total=False):
    """Where ``ws_create_server`` listens: a bound socket, or host and port."""

    sock: socket.socket
    host: str
    port: int


class _TLSOptions(TypedDict, total=False):
    ssl: ssl.SSLContext
    ssl_handshake_timeout: float


def use_aiofastnet(transport: str, tls: bool) -> bool:
    """Whether picows runs on aiofastnet's transports (``transport`` config key).

    ``loop`` (the event loop's own transports, uvloop's when uvloop runs) holds about 4 KiB
    less per connection: aiofastnet's transport object carries a 4 KiB ``iovec`` array
    (bench/README.md, "Memory budget"). TLS always runs on aiofastnet, whose server fastws'
    TLS handshake deadline (``fastws.tls``) watches.
    """
    return tls or transport == "aiofastnet"


class LocalNode:
    """Accept WebSocket clients on ``config.host:config.port`` and fan frames out to them."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        routes: Mapping[str, Route],
        checks: Sequence[HandshakeCheck],
        callbacks: ClientCallbacks,
        rejected: dict[str, int],
        ssl_context: ssl.SSLContext | None = None,
        limit: ConnectionLimit | None = None,
        grants: Grants | None = None,
    ) -> None:
        self.config = config
        self._routes = routes
        self._checks = checks
        self._callbacks = callbacks
        self._ssl_context = ssl_context
        self._limit = limit
        self.rejected = rejected
        self.hub: Hub | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None  # idle topic eviction (topic_idle_ttl)
        self._reap_handles: list[asyncio.TimerHandle] = []
        self._empty = asyncio.Event()
        self._empty.set()
        self._max_conn_logged_at = -1e9
        self._fd_probe: asyncio.TimerHandle | None = None
        self._fd_logged_at = -1e9
        self.fd_limit_reached = 0  # seconds in which the open-file limit was found exhausted
        self.connections_total = 0
        self.disconnect_count = 0
        self.heartbeat_timeouts = 0
        self.handshake_timeouts = 0
        self._picows_log = _PicowsLog(self)
        self._subscription = subscription_parser(config, grants)  # ?topics=, format, since (issue 15)
        self.history_backplane: Backplane | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        tls: _TLSOptions = {}
        context = self._ssl_context
        if context is None and c.ssl is not None:
            from .tls import server_context

            context = server_context(c.ssl)
        if context is not None:  # fastws.tls.watch_handshakes counts TLS handshake timeouts; aiofastnet's is a backstop
            from .tls import backstop_timeout

            tls = {"ssl": context, "ssl_handshake_timeout": backstop_timeout(c.handshake_timeout)}
        loop = self._loop = asyncio.get_running_loop()
        hub = Hub(
            loop,
            max_queued_bytes=c.max_queued_bytes,
            slow_client_policy=c.slow_client_policy,
            max_message_size=c.max_message_size,
            fragment_timeout=c.fragment_timeout,
            encode_fallback=fallback_encode,
            count_nonfinite=count_nonfinite,
            on_message=self._client_message,
            on_connect=self._client_connected,
            on_disconnect=self._client_disconnected,
        )
        shared = self.history_backplane is not None  # the history is in Redis: keep only the latest here
        hub.configure_topics(c.firehose, 0 if shared else c.history_size, c.history_ttl, c.deliver_latest or shared,
                             c.topic_idle_ttl)
        if c.compression == "deflate":  # permessage-deflate
            hub.enable_deflate(c.compression_level, c.compression_min_size)
        if c.max_messages_per_second is not None:
            hub.msg_rate = c.max_messages_per_second
            hub.msg_burst = c.burst if c.burst is not None else max(1.0, c.max_messages_per_second)
        check_fd_limit(c.max_connections, warn=self._limit is None)  # a worker pool warns once, in the parent
        sock = None
        try:
            # bound here so that running out of fds does not spin in aiofastnet's accept loop (fastws.fdlimit)
            sock = listening_socket(c.host, c.port, reuse_port=c.reuse_port)
            where: _ListenOn = {"sock": sock} if sock is not None else {"host": c.host, "port": c.port}
            self._server = await ws_create_server(
                self._listener_factory,
                **where,
                backlog=c.backlog,
                reuse_port=(c.reuse_port or None) if sock is None else None,
                read_buffer_init_size=2048,
                max_frame_size=max(c.max_message_size, 125),
                websocket_handshake_timeout=c.handshake_timeout,
                enable_auto_pong=False,
                enable_auto_ping=False,
                logger_name=self._picows_log,
                use_aiofastnet=use_aiofastnet(c.transport, context is not None),
                **tls,
            )
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise ServerError(exc.errno, f"cannot listen on {c.host}:{c.port}: {exc.strerror or exc}") from None
        if context is not None:
            from .tls import watch_handshakes

            def tls_timeout() -> None:
                self.handshake_timeouts += 1

            watch_handshakes(self._server, c.handshake_timeout, tls_timeout)
        hub.shared_history = self.history_backplane is not None
        self.hub = hub
        self._schedule_ping()
        self._schedule_sweep()
        if not use_aiofastnet(c.transport, context is not None):
            self._fd_probe = loop.call_later(1.0, self._probe_fds)
        logger.info("fastws listening on %s:%d", c.host, self.port)

    async def stop(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop listening, close every client with ``code`` and wait for them to go."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        if self._fd_probe is not None:
            self._fd_probe.cancel()
            self._fd_probe = None
        for h in self._reap_handles:
            h.cancel()
        self._reap_handles.clear()
        hub = self.hub
        assert hub is not None
        hub.flush()  # what was published goes out before the CLOSE frames
        if hub.close_all(code, reason):
            try:
                await asyncio.wait_for(self._empty.wait(), self.config.close_timeout)
            except TimeoutError:
                logger.warning("%s did not finish the closing handshake; dropping them", plural(len(hub), "client"))
                hub.abort_all()
                try:
                    await asyncio.wait_for(self._empty.wait(), 1.0)
                except TimeoutError:
                    pass
        logger.info("fastws stopped")

    @property
    def is_serving(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self.config.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    # -- the fan-out target (fastws.fanout.FanOut) -----------------------------------

    def _hub(self) -> Hub:
        if self.hub is None:
            raise RuntimeError("the server is not started")
        return self.hub

    def publish(self, item: Item, topic: str | None = None) -> int:
        return self._hub().publish(item, topic)

    def publish_frame(self, frame: bytes, topic: str | None = None, offset: int = 0, epoch: str | None = None) -> int:
        return self._hub().publish_frame(frame, topic, offset, epoch)

    def publisher(self) -> Publisher:
        return self._hub().publish

    def flush(self) -> int:
        return self.hub.flush() if self.hub is not None else 0

    def subscribers(self, topic: str) -> int:
        return self.hub.receivers(topic) if self.hub is not None else 0

    def use_shared_history(self, backplane: Backplane) -> None:
        """Recover clients from ``backplane``'s history (Redis) instead of this node's (issue 15)."""
        self.history_backplane = backplane
        if self.hub is not None:
            self.hub.shared_history = True

    @property
    def connection_count(self) -> int:
        return len(self.hub) if self.hub is not None else 0

    @property
    def clients(self) -> list[Client]:
        return self.hub.clients if self.hub is not None else []

    def stats(self) -> Stats:
        s: Stats = self.hub.stats() if self.hub is not None else {"connections": 0}
        s.update(
            connections_total=self.connections_total,
            rejected=dict(self.rejected),
            heartbeat_timeouts=self.heartbeat_timeouts,
            handshake_timeouts=self.handshake_timeouts,
            fd_limit_reached=self.fd_limit_reached,
            disconnects=self.disconnect_count,
        )
        if self.hub is not None and self.hub.deflater is not None:
            s["compression"] = self.hub.deflater.stats()  # permessage-deflate
        return s

    # -- connections -----------------------------------------------------------------

    def count_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def _http_response(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> WSUpgradeResponseWithListener:
        if 200 <= status < 300:
            response = WSUpgradeResponse.create_ok_response(body, headers or {})
            response.status = HTTPStatus(status)
        else:
            response = WSUpgradeResponse.create_error_response(HTTPStatus(status), body, headers or {})
        return WSUpgradeResponseWithListener(response, None)

    def _listener_factory(self, request: WSUpgradeRequest) -> WSListener | WSUpgradeResponseWithListener:
        hub = self.hub
        if hub is None or self._server is None:
            return self._http_response(503, b"server is stopping")
        if not accept_upgrade(request.headers):  # Connection: keep-alive, Upgrade too (fastws.handshake)
            path = request.path.split(b"?", 1)[0].decode("latin-1")
            route = self._routes.get(path)
            if route is None:
                return self._http_response(426 if path == "/" else 404,
                                           b"426 Upgrade Required" if path == "/" else b"404 Not Found",
                                           {"Upgrade": "websocket"} if path == "/" else None)
            status, headers, body = route(request)
            return self._http_response(status, body, headers)
        for check in self._checks:
            refusal = check(request)
            if refusal is not None:
                status, reason = refusal
                self.count_rejected(reason)
                return self._http_response(status, f"{status} {reason}".encode())
        subscription = self._subscription(request)
        if not isinstance(subscription, Subscription):  # a bad ?topics=, format, since, epoch (issue 15)
            status, reason, message = subscription
            self.count_rejected(reason)
            return self._http_response(status, f"{status} {reason}: {message}".encode())
        limit = self._limit
        if (len(hub) >= self.config.max_connections) if limit is None else not limit.acquire():
            # As the original did: complete the handshake, then close with 1008,
            # so that browsers see the code and the reason.
            self.count_rejected("max_connections")
            now = time.monotonic()
            if now - self._max_conn_logged_at >= 1.0:  # a flood of refusals logs once a second
                self._max_conn_logged_at = now
                logger.warning("Max connections reached (%d): closing new connections with 1008 (%d so far)",
                               self.config.max_connections, self.rejected["max_connections"])
            return hub.new_client(True)
        client = hub.new_client()
        client.path = request.path.decode("latin-1")
        if subscription.topics is not None or subscription.patterns is not None or subscription.envelope:
            client.set_subscription(subscription.topics, subscription.patterns, subscription.envelope)
        if subscription.since:
            client.want_recovery(subscription.since, subscription.epochs)
        if limit is not None:  # a failed upgrade gives the slot back
            assert self._loop is not None
            self._loop.call_soon(limit.check_connected, client)
        if hub.deflater is not None:  # permessage-deflate (RFC 7692): accept an offer, or none
            agreed = negotiate(request.headers.getall("Sec-WebSocket-Extensions", ()))
            if agreed is not None:
                client.use_deflate(agreed.window_bits, agreed.client_no_context_takeover)
                response = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Extensions": agreed.header})
                return WSUpgradeResponseWithListener(response, client)
        return client

    def _client_message(self, client: Client, data: str | bytes) -> None:
        """A message from a client: a subscription request (issue 15), else the user's callback."""
        if isinstance(data, str):
            request = parse_client_message(data, self.config.max_topic_length)
            if request is not None:
                self._subscription_request(client, request)
                return
        cb = self._callbacks.on_message
        if cb is not None:
            cb(client, data)

    def _subscription_request(self, client: Client, request: ClientRequest | str) -> None:
        hub = self.hub
        assert hub is not None
        c = self.config
        error: tuple[str, str]
        if not c.client_subscriptions:  # first: a malformed request would not be taken either
            error = ("client_subscriptions_off", "this server takes topics only in the URL (?topics=...)")
        elif isinstance(request, str):
            error = ("subscription_invalid", request)
        elif request.action == "subscribe":
            if client.patterns is not None and not matches(client.patterns, request.topic):
                error = ("topic_forbidden", f"this connection may not subscribe to {request.topic!r}")
            elif client.topics is not None and request.topic not in client.topics \
                    and len(client.topics) >= c.max_topics_per_client:
                error = ("too_many_topics", f"at most {c.max_topics_per_client} topics per connection "
                                            "(max_topics_per_client)")
            elif request.since is not None and self.history_backplane is not None:
                # recover from the shared (Redis) history, as ?since= does at connect
                if client.pending_recovery is not None:
                    error = ("recovery_in_progress", "wait for the answer of the previous subscribe with since")
                else:
                    hub.subscribe(client, request.topic, answer_now=False)
                    since: dict[str, int | None] = {request.topic: request.since}
                    epochs = {request.topic: request.epoch} if request.epoch is not None else {}
                    client.want_recovery(since, epochs)
                    start_recovery(hub, client, self.history_backplane, since, epochs)
                    return
            else:
                hub.subscribe(client, request.topic, request.since, request.epoch)
                return
        elif hub.unsubscribe(client, request.topic):
            return
        else:
            error = ("not_subscribed", f"not subscribed to {request.topic!r}")
        hub.subscribe_errors += 1
        hub.send_control(client, {"type": "error", "error": error[0], "detail": error[1]})

    def _client_connected(self, client: Client) -> None:
        self.connections_total += 1
        self._empty.clear()
        if self.history_backplane is not None and self.hub is not None:
            pending = client.pending_recovery  # held by the Hub until the shared history is read
            if pending is not None:
                start_recovery(self.hub, client, self.history_backplane, *pending)
        cb = self._callbacks.on_connect
        if cb is not None:
            cb(client)

    def _probe_fds(self) -> None:
        """Once a second, on the loop's own transports: are file descriptors exhausted?

        Past the open-file limit, libuv's listener accepts each new connection and closes it
        at once (its EMFILE trick): nothing reaches fastws. A ``dup`` that fails with EMFILE
        says so; it is logged (once in 10 s) and counted in ``stats()["fd_limit_reached"]``.
        (aiofastnet's listener is watched by ``fastws.fdlimit.ListeningSocket`` instead.)
        """
        assert self._loop is not None
        if self._server is None:
            return
        self._fd_probe = self._loop.call_later(1.0, self._probe_fds)
        try:
            os.close(os.dup(self._server.sockets[0].fileno()))
        except (OSError, IndexError) as exc:
            if not isinstance(exc, OSError):
                return
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                return
            self.fd_limit_reached += 1
            now = time.monotonic()
            if now - self._fd_logged_at >= 10.0:
                self._fd_logged_at = now
                logger.warning("out of file descriptors (%d clients connected): new connections are closed as they "
                               "arrive until some close. Raise the open-file limit (ulimit -n, systemd "
                               "LimitNOFILE=, docker --ulimit nofile=)", len(self.hub or ()))

    def _client_disconnected(self, client: Client) -> None:
        self.disconnect_count += 1
        if self._limit is not None:
            self._limit.release()
        if self.hub is not None and len(self.hub) == 0:
            self._empty.set()
        cb = self._callbacks.on_disconnect
        if cb is not None:
            cb(client)

    # -- heartbeat: one timer for all connections ---------------------------------------

    def _schedule_ping(self) -> None:
        assert self._loop is not None
        self._ping_handle = self._loop.call_later(self.config.heartbeat_interval, self._ping_round)

    def _ping_round(self) -> None:
        hub = self.hub
        if hub is None or self._server is None:
            return
        self._schedule_ping()
        since = hub.ping_all()
        assert self._loop is not None
        handle = self._loop.call_later(self.config.effective_heartbeat_timeout, self._reap, since)
        self._reap_handles.append(handle)

    # -- idle topics: one timer sweeps them all (topic_idle_ttl) ----------------------------

    def _schedule_sweep(self) -> None:
        ttl = self.config.topic_idle_ttl
        if ttl > 0:
            assert self._loop is not None
            self._sweep_handle = self._loop.call_later(self.config.topic_sweep_interval, self._sweep_topics)

    def _sweep_topics(self) -> None:
        hub = self.hub
        if hub is None or self._server is None:
            return
        self._schedule_sweep()
        n = hub.evict_idle_topics()
        if n:
            logger.debug("evicted %s idle for %gs", plural(n, "topic"), self.config.topic_idle_ttl)

    def _reap(self, since: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._reap_handles = [h for h in self._reap_handles if not h.cancelled() and h.when() > now]
        if self.hub is None:
            return
        n = self.hub.reap(since)
        if n:
            self.heartbeat_timeouts += n
            logger.warning("heartbeat: closed %s that did not answer a ping in %.3gs", plural(n, "client"),
                           self.config.effective_heartbeat_timeout)
