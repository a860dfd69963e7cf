"""``GET /health`` (JSON) and ``GET /metrics`` (Prometheus text format 0.0.4).

Both are served on the WebSocket port (plain HTTP GET, no upgrade), or, when
``metrics_port`` is set, only on a second small HTTP server on that port, bound to
``metrics_host`` (default ``127.0.0.1``). With ``metrics_token`` set, both answer
401 unless the request carries ``Authorization: Bearer <token>`` or ``?token=<token>``.
Every number comes from ``Server.stats()``: counters are exact, not sampled.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable, Mapping
from typing import Protocol, TypeVar, overload
from urllib.parse import parse_qs

import msgspec

from ._types import Record, Stats
from .config import ServerConfig
from .http_types import HTTPRequest, HTTPResponse

__all__ = ["StatsSource", "health", "render_metrics", "routes", "bind_host", "MetricsHTTPServer"]

logger = logging.getLogger("fastws.metrics")
_T = TypeVar("_T")

#: A route of the health and metrics paths: served on the WebSocket port (picows'
#: request) and by :class:`MetricsHTTPServer` (its own); ``None``: no request at hand.
Handler = Callable[[HTTPRequest | None], HTTPResponse]


class StatsSource(Protocol):
    """What health and metrics read: a server's config, whether it serves, and its stats."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def is_serving(self) -> bool: ...

    def stats(self) -> Stats: ...

    def topic_counts(self, limit: int) -> Mapping[str, tuple[int, int]]:
        """{topic: (subscribers, messages)} of the ``limit`` busiest topics (empty when not known)."""
        ...


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def health(server: StatsSource) -> Record:
    """``{"status": "ok"|"stopped", "connections": n, "uptime": seconds, ...}``."""
    s = server.stats()
    return {
        "status": "ok" if server.is_serving else "stopped",
        "connections": s["connections"],
        "max_connections": server.config.max_connections,
        "uptime": round(s["uptime"], 3),
    }


def bind_host(config: ServerConfig) -> str:
    """The host the separate ``metrics_port`` server listens on: loopback unless set."""
    return config.metrics_host if config.metrics_host is not None else "127.0.0.1"


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(server: StatsSource) -> str:
    """The Prometheus text exposition of ``server.stats()``."""
    s = server.stats()
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float = 0,
               by: tuple[str, Mapping[str, float]] | None = None) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        if by is None:
            out.append(f"{name} {_num(value)}")
        else:
            label, values = by
            for key in sorted(values):
                out.append(f'{name}{{{label}="{_label(str(key))}"}} {_num(values[key])}')

    metric("fastws_connections_open", "gauge", "WebSocket connections open now.", s["connections"])
    metric("fastws_connections_max", "gauge", "Configured max_connections.", server.config.max_connections)
    metric("fastws_connections_accepted_total", "counter",
           "WebSocket connections accepted (handshake done, registered).", s.get("connections_total", 0))
    metric("fastws_connections_rejected_total", "counter",
           "Connection attempts refused, by reason (auth at the handshake, max_connections after it).",
           by=("reason", s.get("rejected", {})))
    metric("fastws_disconnects_total", "counter", "Registered connections that ended, by reason.",
           by=("reason", s.get("disconnect_reasons", {})))
    metric("fastws_handshake_timeouts_total", "counter",
           "TCP connections dropped for not completing the upgrade within handshake_timeout.",
           s.get("handshake_timeouts", 0))
    metric("fastws_heartbeat_timeouts_total", "counter", "Clients closed for not answering a ping in time.",
           s.get("heartbeat_timeouts", 0))
    metric("fastws_broadcasts_total", "counter", "Messages broadcast (published).", s.get("messages", 0))
    metric("fastws_deliveries_total", "counter", "Messages written to a client (broadcasts x clients).",
           s.get("deliveries", 0))
    metric("fastws_sent_bytes_total", "counter", "Bytes of broadcast frames written to clients.",
           s.get("bytes_out", 0))
    metric("fastws_flushes_total", "counter", "Fan-out rounds (one write per client each).", s.get("flushes", 0))
    metric("fastws_slow_client_dropped_messages_total", "counter",
           "Messages skipped for clients over max_queued_bytes (drop policy).", s.get("dropped", 0))
    metric("fastws_slow_client_disconnects_total", "counter",
           "Clients disconnected for being over max_queued_bytes (disconnect policy).",
           s.get("slow_disconnects", 0))
    metric("fastws_slow_clients_dropping", "gauge", "Clients currently skipped by the drop policy.",
           s.get("dropping_clients", 0))
    metric("fastws_received_messages_total", "counter", "Messages received from clients.", s.get("messages_in", 0))
    metric("fastws_protocol_errors_total", "counter",
           "Clients fastws closed for a bad frame or a policy (1002/1007/1008/1009).", s.get("protocol_errors", 0))
    metric("fastws_encode_errors_total", "counter", "Broadcast items that could not be serialized.",
           s.get("encode_errors", 0))
    metric("fastws_nonfinite_numbers_total", "counter",
           "NaN and +-Infinity values in broadcast items, written as null (strict JSON).",
           s.get("nonfinite_numbers", 0))
    metric("fastws_pongs_skipped_total", "counter",
           "PINGs not answered because the client was over max_queued_bytes.", s.get("pongs_skipped", 0))
    if "worker_restarts" in s:  # with workers
        metric("fastws_worker_restarts_total", "counter", "Worker processes replaced after they exited.",
               s["worker_restarts"])
        metric("fastws_worker_frames_dropped_total", "counter",
               "Frames the parent skipped for a worker whose pipe was full.", s.get("worker_frames_dropped", 0))
    _compression_metrics(metric, s.get("compression"))
    _topic_metrics(metric, s.get("topics"), server.topic_counts,
                   int(getattr(server.config, "topic_metrics", 0)))
    metric("fastws_uptime_seconds", "gauge", "Seconds since the server started.", round(s.get("uptime", 0.0), 3))
    rss = _rss_bytes()
    if rss is not None:
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", rss)
    out.append("")
    return "\n".join(out)


class _Metric(Protocol):
    def __call__(self, name: str, kind: str, help_: str, value: float = 0,
                 by: tuple[str, Mapping[str, float]] | None = None) -> None: ...


#: ``stats()["compression"]`` (permessage-deflate) -> (metric suffix, kind, help).
_COMPRESSION = (
    ("clients", "clients", "gauge", "Clients that negotiated permessage-deflate."),
    ("inflaters", "inflaters", "gauge", "Decompressors held for clients that send compressed messages."),
    ("window_bits", "window_bits", "gauge", "Window (bits) broadcasts are compressed with now."),
    ("messages_compressed", "messages_compressed_total", "counter",
     "Broadcast messages compressed (once each, for every deflate client)."),
    ("messages_uncompressed", "messages_uncompressed_total", "counter",
     "Broadcast messages sent to deflate clients uncompressed (shorter than compression_min_size)."),
    ("bytes_in", "bytes_in_total", "counter", "Payload bytes of the messages for deflate clients, before compression."),
    ("bytes_compressed", "bytes_compressed_total", "counter", "Payload bytes of the compressed messages."),
)


def _compression_metrics(metric: _Metric, c: object) -> None:
    """``fastws_compression_*`` from ``stats()["compression"]`` (absent with ``compression: off``)."""
    if not isinstance(c, Mapping):
        return
    for key, suffix, kind, help_ in _COMPRESSION:
        value = c.get(key)
        if isinstance(value, (int, float)):
            metric(f"fastws_compression_{suffix}", kind, help_, value)


def _topic_metrics(metric: _Metric, t: object,
                   counts: Callable[[int], Mapping[str, tuple[int, int]]] | None = None,
                   limit: int = 0) -> None:
    """Topic gauges and counters from ``stats()["topics"]``; per-topic series for at most
    ``limit`` topics (``topic_metrics``), the busiest by messages."""
    if not isinstance(t, Mapping):
        return  # a server without topic support: nothing to say

    def num(key: str) -> float:
        value = t.get(key, 0)
        return value if isinstance(value, (int, float)) else 0

    metric("fastws_topics", "gauge", "Topics that have subscribers or history.", num("topics"))
    metric("fastws_topics_evicted_total", "counter",
           "Topics forgotten after topic_idle_ttl without messages, exact subscribers or history.", num("evicted"))
    metric("fastws_topic_subscriptions", "gauge", "Client subscriptions to topics (a client with 3 topics: 3).",
           num("subscriptions"))
    metric("fastws_envelope_clients", "gauge", "Clients connected with ?format=envelope.", num("envelope_clients"))
    metric("fastws_topic_history_entries", "gauge", "Messages held in topic histories (history_size).",
           num("history_entries"))
    metric("fastws_recoveries_total", "counter",
           "Reconnects with ?since=: the gap was filled (recovered) or could not be (not_recovered).",
           by=("result", {"recovered": num("recovered"), "not_recovered": num("not_recovered")}))
    metric("fastws_replayed_messages_total", "counter", "Messages sent from topic histories to recovering clients.",
           num("replayed"))
    metric("fastws_subscribe_errors_total", "counter",
           "Subscribe or unsubscribe messages answered with an error envelope.", num("subscribe_errors"))
    if limit <= 0 or counts is None:
        return
    busiest = sorted(counts(limit).items(), key=lambda kv: (-kv[1][1], -kv[1][0], kv[0]))[:limit]
    metric("fastws_topic_messages_total", "counter",
           f"Messages published per topic (the {limit} busiest topics; topic_metrics).",
           by=("topic", {name: messages for name, (_, messages) in busiest}))
    metric("fastws_topic_subscribers", "gauge",
           f"Subscribers per topic (the {limit} busiest topics; topic_metrics).",
           by=("topic", {name: subscribers for name, (subscribers, _) in busiest}))


def _num(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def health_route(server: StatsSource) -> Handler:
    def route(request: HTTPRequest | None) -> HTTPResponse:
        body = msgspec.json.encode(health(server))
        return 200, {"Content-Type": "application/json", "Cache-Control": "no-store"}, body

    return route


def metrics_route(server: StatsSource) -> Handler:
    def route(request: HTTPRequest | None) -> HTTPResponse:
        return 200, {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}, render_metrics(server).encode()

    return route


_UNAUTHORIZED: HTTPResponse = (
    401, {"WWW-Authenticate": 'Bearer realm="fastws metrics"', "Cache-Control": "no-store"},
    b"401 metrics_token required",
)


def _has_token(request: HTTPRequest | None, token: bytes) -> bool:
    """``Authorization: Bearer <token>`` or ``?token=<token>``, compared in constant time."""
    if request is None:
        return False
    given: str | None = None
    value = request.headers.get("Authorization")
    if value:
        scheme, _, rest = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            given = rest.strip()
    if given is None:
        _, sep, query = request.path.partition(b"?")
        if sep:
            values = parse_qs(query.decode("latin-1")).get("token")
            given = values[0] if values else None
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token)


def guarded(route: Handler, token: str | None) -> Handler:
    """``route`` answering 401 unless the request carries ``token`` (``None``: no check)."""
    if token is None:
        return route
    expected = token.encode("utf-8", "surrogateescape")

    def checked(request: HTTPRequest | None) -> HTTPResponse:
        return route(request) if _has_token(request, expected) else _UNAUTHORIZED

    return checked


def routes(server: StatsSource) -> dict[str, Handler]:
    """The health and metrics routes (paths that are not null), behind ``metrics_token``."""
    c = server.config
    found: dict[str, Handler] = {}
    if c.health_path is not None:
        found[c.health_path] = guarded(health_route(server), c.metrics_token)
    if c.metrics_path is not None:
        found[c.metrics_path] = guarded(metrics_route(server), c.metrics_token)
    return found


class _Headers(dict[str, str]):
    """Header names lower-cased; ``get`` is case-insensitive."""

    @overload
    def get(self, key: str, default: None = None) -> str | None: ...
    @overload
    def get(self, key: str, default: str) -> str: ...
    @overload
    def get(self, key: str, default: _T) -> str | _T: ...

    def get(self, key: str, default: object = None) -> object:
        return super().get(key.lower(), default)


class _Request:
    """What a route sees of a request to the ``metrics_port`` server."""

    __slots__ = ("path", "headers")

    def __init__(self, path: bytes, headers: _Headers) -> None:
        self.path = path
        self.headers = headers


class MetricsHTTPServer:
    """A tiny HTTP/1.1 server for ``metrics_port``: GET/HEAD of the health and metrics paths.

    One request per connection (``Connection: close``); the request head must arrive
    within ``handshake_timeout`` and fit in 8 KiB.
    """

    MAX_HEAD = 8192

    def __init__(self, server: StatsSource) -> None:
        self.server = server
        self.routes = routes(server)
        self._srv: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Listen on ``host:port`` (default: :func:`bind_host` and ``metrics_port``)."""
        config = self.server.config
        host = bind_host(config) if host is None else host
        port = config.metrics_port if port is None else port
        self._srv = await asyncio.start_server(self._handle, host, port or 0, limit=self.MAX_HEAD)
        logger.info("health and metrics on http://%s:%d%s", host, self.port or 0,
                    " (metrics_token required)" if config.metrics_token is not None else "")

    @property
    def port(self) -> int | None:
        if self._srv is None or not self._srv.sockets:
            return None
        return int(self._srv.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._srv is None:
            return
        srv, self._srv = self._srv, None
        srv.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await srv.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            status, headers, body, head_only = await self._respond(reader)
            self.requests += 1
            reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
                      408: "Request Timeout", 431: "Request Header Fields Too Large"}.get(status, "Error")
            lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), self.server.config.close_timeout or 1.0)
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass
        except Exception:  # pragma: no cover - a bug here must not take the server down
            logger.exception("metrics request failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.server.config.handshake_timeout)
        except TimeoutError:
            return 408, {}, b"408 Request Timeout", False
        except asyncio.LimitOverrunError:
            return 431, {}, b"431 Request Header Fields Too Large", False
        except asyncio.IncompleteReadError:
            return 400, {}, b"400 Bad Request", False
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return 400, {}, b"400 Bad Request", False
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return 405, {"Allow": "GET, HEAD"}, b"405 Method Not Allowed", False
        route = self.routes.get(target.split(b"?", 1)[0].decode("latin-1"))
        if route is None:
            return 404, {}, b"404 Not Found", method == b"HEAD"
        fields = _Headers()
        for line in head.split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if sep:
                fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        status, headers, body = route(_Request(target, fields))
        return status, headers, body, method == b"HEAD"
