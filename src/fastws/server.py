"""The standalone server: picows on uvloop, the connection registry, the heartbeat."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

from . import auth as _auth
from . import metrics as _metrics
from ._core import Client, Hub, encode_frame
from .config import ServerConfig
from .exceptions import ConfigError, ServerError

__all__ = ["Server", "HTTPResponse", "Refusal"]

#: What a route handler returns: (status, headers, body).
HTTPResponse = tuple[int, dict[str, str], bytes]
#: What a refusing handshake check returns: (HTTP status, reason counted in stats).
Refusal = tuple[int, str]

logger = logging.getLogger("fastws.server")
# picows logs every connection at INFO and every malformed frame at ERROR, twice;
# any peer can trigger those, so they go to a logger of their own.
_picows_logger = logging.LoggerAdapter(logging.getLogger("fastws.picows"), {})


class _PicowsLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows' logger for one server; counts handshake timeouts, which picows only logs."""

    def __init__(self, server: Server) -> None:
        super().__init__(_picows_logger.logger, {})
        self._server = server

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if level == logging.INFO and isinstance(msg, str):
            if msg.startswith("Handshake timeout"):
                self._server.handshake_timeouts += 1
            elif msg.startswith("Disconnect because HTTP request violated max_size"):  # over 16 KiB
                rejected = self._server.rejected
                rejected["request_too_large"] = rejected.get("request_too_large", 0) + 1
        super().log(level, msg, *args, **kwargs)


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
        config: ServerConfig | dict[str, Any] | None = None,
        *,
        on_message: Callable[[Client, str | bytes], Any] | None = None,
        on_connect: Callable[[Client], Any] | None = None,
        on_disconnect: Callable[[Client], Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        auth_check: Callable[[WSUpgradeRequest], Refusal | None] | None = None,
        **settings: Any,
    ) -> None:
        if settings:
            base = {} if config is None else (msgspec_to_dict(config) if isinstance(config, ServerConfig) else dict(config))
            base.update(settings)
            config = base
        self.config: ServerConfig = ServerConfig.from_dict(config) if not isinstance(config, ServerConfig) else config
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.hub: Hub | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._reap_handles: list[asyncio.TimerHandle] = []
        self._empty: asyncio.Event | None = None
        self.started_at: float | None = None
        self.connections_total = 0
        self.rejected = {"max_connections": 0}
        self._max_conn_logged_at = -1e9
        self.heartbeat_timeouts = 0
        self._routes: dict[str, Callable[[WSUpgradeRequest], HTTPResponse]] = {}
        self._checks: list[Callable[[WSUpgradeRequest], Refusal | None]] = []
        # hardening: TLS, auth checks, health/metrics routes (docs/reference.md)
        self._ssl_context = ssl_context
        self.handshake_timeouts = 0
        self._picows_log = _PicowsLog(self)
        self._metrics_server: _metrics.MetricsHTTPServer | None = None
        _metrics.install(self)
        _auth.install(self, auth_check)
        # scaling (docs/reference.md): worker processes, a backplane to other nodes
        self.workers: Any = None  # fastws.workers.WorkerPool in the parent of workers
        self.backplane: Any = None  # fastws.backplane.Backplane when ``backplane`` is set
        self._slots: Any = None  # fastws.workers.ConnectionSlots in a worker process

    # -- lifecycle -------------------------------------------------------------------

    @property
    def is_serving(self) -> bool:
        return self._server is not None or self.workers is not None

    async def start(self) -> None:
        """Listen on ``host:port``. Raises :class:`ServerError` if that is not possible."""
        if self._server is not None or self.workers is not None:
            return
        c = self.config
        if self._slots is None and c.workers != 1:
            from .workers import resolve_workers

            if resolve_workers(c.workers) > 1:
                return await self._start_workers()
        tls: dict[str, Any] = {}
        if self._ssl_context is not None or c.ssl is not None:
            from .tls import server_context

            tls = {"ssl": self._ssl_context or server_context(c.ssl), "ssl_handshake_timeout": c.handshake_timeout}
        self._loop = asyncio.get_running_loop()
        self._empty = asyncio.Event()
        self._empty.set()
        self.hub = Hub(
            self._loop,
            max_queued_bytes=c.max_queued_bytes,
            slow_client_policy=c.slow_client_policy,
            max_message_size=c.max_message_size,
            on_message=self._on_message,
            on_connect=self._client_connected,
            on_disconnect=self._client_disconnected,
            fragment_timeout=c.fragment_timeout,
        )
        try:
            self._server = await ws_create_server(
                self._listener_factory,
                c.host,
                c.port,
                backlog=c.backlog,
                reuse_port=c.reuse_port or None,
                read_buffer_init_size=2048,
                max_frame_size=max(c.max_message_size, 125),
                websocket_handshake_timeout=c.handshake_timeout,
                enable_auto_pong=False,
                enable_auto_ping=False,
                logger_name=self._picows_log,
                **tls,
            )
        except OSError as exc:
            self.hub = None
            raise ServerError(exc.errno, f"cannot listen on {c.host}:{c.port}: {exc.strerror or exc}") from None
        if c.max_messages_per_second is not None:
            self.hub.msg_rate = c.max_messages_per_second
            self.hub.msg_burst = c.burst if c.burst is not None else max(1.0, c.max_messages_per_second)
        if c.metrics_port is not None:
            self._metrics_server = _metrics.MetricsHTTPServer(self)
            try:
                await self._metrics_server.start(c.host, c.metrics_port)
            except OSError as exc:
                self._metrics_server = None
                self._server.close()
                self._server, self.hub = None, None
                raise ServerError(exc.errno, f"cannot listen on {c.host}:{c.metrics_port} (metrics_port): "
                                             f"{exc.strerror or exc}") from None
        if c.page and c.page_path not in self._routes:
            from .page import page_bytes, page_route

            page_bytes()  # read the package data now: a broken install fails at start, not per request
            self.add_route(c.page_path, page_route)
        self.started_at = time.time()
        self._schedule_ping()
        logger.info("fastws listening on %s:%d", c.host, self.port)
        await self._start_backplane()

    async def stop(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Stop listening, close every client with ``code`` and wait for them to go."""
        await self._stop_scaling()
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        if self._ping_handle is not None:
            self._ping_handle.cancel()
            self._ping_handle = None
        for h in self._reap_handles:
            h.cancel()
        self._reap_handles.clear()
        hub = self.hub
        assert hub is not None and self._empty is not None
        hub.flush()  # what was published goes out before the CLOSE frames
        if hub.close_all(code, reason):
            try:
                await asyncio.wait_for(self._empty.wait(), self.config.close_timeout)
            except TimeoutError:
                logger.warning("%d clients did not finish the closing handshake; dropping them", len(hub))
                hub.abort_all()
                try:
                    await asyncio.wait_for(self._empty.wait(), 1.0)
                except TimeoutError:
                    pass
        if self._metrics_server is not None:
            await self._metrics_server.stop()
            self._metrics_server = None
        logger.info("fastws stopped")

    async def serve_forever(self) -> None:
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

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The port listened on (the real one when ``port`` was 0)."""
        if self.workers is not None:
            return int(self.workers.port)
        if self._server is None or not self._server.sockets:
            return self.config.port
        return self._server.sockets[0].getsockname()[1]

    @property
    def metrics_port(self) -> int | None:
        """The port of the separate health/metrics server (``metrics_port``), if running."""
        return self._metrics_server.port if self._metrics_server is not None else None

    # -- broadcasting ----------------------------------------------------------------

    def broadcast(self, item: Any) -> int:
        """Queue ``item`` for every connected client; return how many it is queued to.

        Serialized once (``str`` verbatim, anything else as JSON); everything
        broadcast in this loop turn is written to each client in one write.
        Raises :class:`fastws.EncodeError` for an item that cannot be serialized.

        With ``workers`` the count is the clients connected over all workers; with a
        ``backplane`` it counts this node's clients only (docs/reference.md).
        """
        if self.backplane is None and self.workers is None:
            if self.hub is None:
                raise RuntimeError("the server is not started")
            return self.hub.publish(item)
        return self.broadcast_frame(encode_frame(item))

    def broadcast_frame(self, frame: bytes) -> int:
        """Broadcast a frame made by :func:`fastws.encode_frame`: to the backplane, then locally."""
        if self.backplane is not None:
            self.backplane.publish(frame)
        return self._deliver(frame)

    def _deliver(self, frame: bytes) -> int:
        """Queue a frame to this node's clients (in this process or in its workers)."""
        if self.workers is not None:
            return int(self.workers.publish_frame(frame))
        if self.hub is None:
            raise RuntimeError("the server is not started")
        return self.hub.publish_frame(frame)

    def flush(self) -> int:
        """Send what was broadcast in this turn now; return the clients written to."""
        if self.workers is not None:
            self.workers.flush()
            return int(self.workers.connection_count)
        return self.hub.flush() if self.hub is not None else 0

    @property
    def connection_count(self) -> int:
        if self.workers is not None:
            return int(self.workers.connection_count)
        return len(self.hub) if self.hub is not None else 0

    @property
    def clients(self) -> list[Client]:
        return self.hub.clients if self.hub is not None else []

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = self._local_stats()
        own = {
            "connections_total": self.connections_total,
            "rejected": dict(self.rejected),
            "heartbeat_timeouts": self.heartbeat_timeouts,
            "handshake_timeouts": self.handshake_timeouts,
            "disconnects": sum(s.get("disconnect_reasons", {}).values()),
        }
        if self.workers is None:
            s.update(own)
        else:  # the workers count these; their sums are in s already
            for key, value in own.items():
                s.setdefault(key, value)
        s["uptime"] = (time.time() - self.started_at) if self.started_at and self.is_serving else 0.0
        if self.backplane is not None:
            s["backplane"] = self.backplane.stats()
            s["cluster"] = self.backplane.cluster_stats()
        return s

    # -- scaling: workers, backplane (docs/reference.md) -----------------------------------

    def _local_stats(self) -> dict[str, Any]:
        if self.workers is not None:
            return dict(self.workers.stats())
        return self.hub.stats() if self.hub is not None else {"connections": 0}

    async def _start_workers(self) -> None:
        from .workers import WorkerPool, resolve_workers

        c = self.config
        if self._on_message or self._on_connect or self._on_disconnect or self._ssl_context is not None:
            raise ConfigError("workers: on_message/on_connect/on_disconnect callbacks and an ssl_context object "
                              "cannot be passed to worker processes; use workers: 1 (or ssl: in the config)")
        self._loop = asyncio.get_running_loop()
        pool = WorkerPool(c, resolve_workers(c.workers))
        await pool.start()
        self.workers = pool
        self.started_at = time.time()
        if c.metrics_port is not None:  # one /metrics for the whole server, added up over the workers
            self._metrics_server = _metrics.MetricsHTTPServer(self)
            try:
                await self._metrics_server.start(c.host, c.metrics_port)
            except OSError as exc:
                self._metrics_server = None
                await self._stop_scaling()
                raise ServerError(exc.errno, f"cannot listen on {c.host}:{c.metrics_port} (metrics_port): "
                                             f"{exc.strerror or exc}") from None
        await self._start_backplane()

    async def _start_backplane(self) -> None:
        c = self.config
        if c.backplane is None or self.backplane is not None:
            return
        from .backplane import create_backplane

        self.backplane = create_backplane(c.backplane, c.backplane_channel)
        await self.backplane.start(self._deliver, local_stats=self._local_stats)

    async def _stop_scaling(self) -> None:
        bp, self.backplane = self.backplane, None
        if bp is not None:
            await bp.stop()
        pool, self.workers = self.workers, None
        if pool is not None:
            await pool.stop()
            if self._metrics_server is not None:
                await self._metrics_server.stop()
                self._metrics_server = None
            logger.info("fastws stopped")

    # -- extension points --------------------------------------------------------------

    def add_route(self, path: str, handler: Callable[[WSUpgradeRequest], HTTPResponse]) -> None:
        """Answer plain HTTP ``GET path`` (no upgrade) with ``handler(request)``.

        ``handler`` returns ``(status, headers, body)``; the response is sent with
        ``Content-Length`` and ``Connection: close`` (picows serves one request per
        connection). Used by the health, metrics and page features.
        """
        self._routes[path] = handler

    def add_handshake_check(self, check: Callable[[WSUpgradeRequest], Refusal | None]) -> None:
        """Run ``check(request)`` on every WebSocket upgrade, in the order added.

        A check returns ``None`` to let the connection in, or ``(status, reason)``
        to refuse it with that HTTP status before the upgrade (counted in
        ``stats()["rejected"][reason]``).
        """
        self._checks.append(check)

    # -- connections -----------------------------------------------------------------

    def _http_response(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> Any:
        if 200 <= status < 300:
            response = WSUpgradeResponse.create_ok_response(body, headers or {})
            response.status = HTTPStatus(status)
        else:
            response = WSUpgradeResponse.create_error_response(HTTPStatus(status), body, headers or {})
        return WSUpgradeResponseWithListener(response, None)

    def _listener_factory(self, request: WSUpgradeRequest) -> Any:
        hub = self.hub
        if hub is None:
            return self._http_response(503, b"server is stopping")
        if "upgrade" not in request.headers.get("Connection", "").lower():
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
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                return self._http_response(status, f"{status} {reason}".encode())
        if (len(hub) >= self.config.max_connections) if self._slots is None else not self._slots.acquire():
            # As the original did: complete the handshake, then close with 1008,
            # so that browsers see the code and the reason.
            self.rejected["max_connections"] += 1
            now = time.monotonic()
            if now - self._max_conn_logged_at >= 1.0:  # a flood of refusals logs once a second
                self._max_conn_logged_at = now
                logger.warning("Max connections reached (%d): closing new connections with 1008 (%d so far)",
                               self.config.max_connections, self.rejected["max_connections"])
            return hub.new_client(True)
        client = hub.new_client()
        client.path = request.path.decode("latin-1")
        if self._slots is not None:  # a failed upgrade gives the slot back
            self._loop.call_soon(self._slots.check_connected, client)
        return client

    def _client_connected(self, client: Client) -> None:
        self.connections_total += 1
        assert self._empty is not None
        self._empty.clear()
        if self._on_connect is not None:
            self._on_connect(client)

    def _client_disconnected(self, client: Client) -> None:
        if self._slots is not None:
            self._slots.release()
        if self.hub is not None and len(self.hub) == 0 and self._empty is not None:
            self._empty.set()
        if self._on_disconnect is not None:
            self._on_disconnect(client)

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

    def _reap(self, since: float) -> None:
        self._reap_handles = [h for h in self._reap_handles if not h.cancelled() and h.when() > self._loop.time()]
        if self.hub is None:
            return
        n = self.hub.reap(since)
        if n:
            self.heartbeat_timeouts += n
            logger.warning("heartbeat: closed %d clients that did not answer a ping in %.3gs", n,
                           self.config.effective_heartbeat_timeout)


def msgspec_to_dict(config: ServerConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in config.__struct_fields__}
