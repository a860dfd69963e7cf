"""The standalone server: picows on uvloop, the connection registry, the heartbeat."""

from __future__ import annotations

import asyncio
import logging
import time
from http import HTTPStatus
from collections.abc import Callable
from typing import Any

from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server

from ._core import Client, Hub
from .config import ServerConfig
from .exceptions import ServerError

__all__ = ["Server", "HTTPResponse", "Refusal"]

#: What a route handler returns: (status, headers, body).
HTTPResponse = tuple[int, dict[str, str], bytes]
#: What a refusing handshake check returns: (HTTP status, reason counted in stats).
Refusal = tuple[int, str]

logger = logging.getLogger("fastws.server")
# picows logs every connection at INFO and every malformed frame at ERROR, twice;
# any peer can trigger those, so they go to a logger of their own.
_picows_logger = logging.LoggerAdapter(logging.getLogger("fastws.picows"), {})


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
        self.heartbeat_timeouts = 0
        self.disconnects = 0
        self._routes: dict[str, Callable[[WSUpgradeRequest], HTTPResponse]] = {}
        self._checks: list[Callable[[WSUpgradeRequest], Refusal | None]] = []

    # -- lifecycle -------------------------------------------------------------------

    @property
    def is_serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen on ``host:port``. Raises :class:`ServerError` if that is not possible."""
        if self._server is not None:
            return
        c = self.config
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
        )
        try:
            self._server = await ws_create_server(
                self._listener_factory,
                c.host,
                c.port,
                backlog=c.backlog,
                read_buffer_init_size=2048,
                max_frame_size=max(c.max_message_size, 125),
                websocket_handshake_timeout=c.handshake_timeout,
                enable_auto_pong=False,
                enable_auto_ping=False,
                logger_name=_picows_logger,
            )
        except OSError as exc:
            self.hub = None
            raise ServerError(exc.errno, f"cannot listen on {c.host}:{c.port}: {exc.strerror or exc}") from None
        self.started_at = time.time()
        self._schedule_ping()
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
        if self._server is None or not self._server.sockets:
            return self.config.port
        return self._server.sockets[0].getsockname()[1]

    # -- broadcasting ----------------------------------------------------------------

    def broadcast(self, item: Any) -> int:
        """Queue ``item`` for every connected client; return how many it is queued to.

        Serialized once (``str`` verbatim, anything else as JSON); everything
        broadcast in this loop turn is written to each client in one write.
        Raises :class:`fastws.EncodeError` for an item that cannot be serialized.
        """
        if self.hub is None:
            raise RuntimeError("the server is not started")
        return self.hub.publish(item)

    def flush(self) -> int:
        """Send what was broadcast in this turn now; return the clients written to."""
        return self.hub.flush() if self.hub is not None else 0

    @property
    def connection_count(self) -> int:
        return len(self.hub) if self.hub is not None else 0

    @property
    def clients(self) -> list[Client]:
        return self.hub.clients if self.hub is not None else []

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = self.hub.stats() if self.hub is not None else {"connections": 0}
        s.update(
            connections_total=self.connections_total,
            rejected=dict(self.rejected),
            heartbeat_timeouts=self.heartbeat_timeouts,
            disconnects=self.disconnects,
            uptime=(time.time() - self.started_at) if self.started_at and self.is_serving else 0.0,
        )
        return s

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
        if len(hub) >= self.config.max_connections:
            # As the original did: complete the handshake, then close with 1008,
            # so that browsers see the code and the reason.
            self.rejected["max_connections"] += 1
            logger.warning(
                "Max connections reached (%d): closing a new connection with 1008", self.config.max_connections
            )
            return hub.new_client(True)
        client = hub.new_client()
        client.path = request.path.decode("latin-1")
        return client

    def _client_connected(self, client: Client) -> None:
        self.connections_total += 1
        assert self._empty is not None
        self._empty.clear()
        if self._on_connect is not None:
            self._on_connect(client)

    def _client_disconnected(self, client: Client) -> None:
        self.disconnects += 1
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
