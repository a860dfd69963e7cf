"""The ``fastws`` command line.

``fastws serve``     a standalone server that broadcasts each line of standard input
``fastws run F``     run a blueprint (YAML system of components)
``fastws validate F`` check a blueprint without running it
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .config import ServerConfig
from .exceptions import ConfigError, FastWSError

__all__ = ["main"]

logger = logging.getLogger("fastws.cli")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _add_server_options(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    g = p.add_argument_group("server")
    g.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host})")
    g.add_argument("--port", type=int, default=d.port, help=f"port to listen on, 0 for any free one (default {d.port})")
    g.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"clients over this are closed with 1008 (default {d.max_connections})")
    g.add_argument("--heartbeat-interval", type=_positive_float, default=d.heartbeat_interval,
                   help=f"seconds between pings to every client (default {d.heartbeat_interval:g})")
    g.add_argument("--heartbeat-timeout", type=_positive_float, default=None,
                   help="seconds a client has to answer a ping (default: the interval)")
    g.add_argument("--max-queued-bytes", type=int, default=d.max_queued_bytes,
                   help=f"unsent bytes a client may hold before the slow-client policy applies (default {d.max_queued_bytes})")
    g.add_argument("--slow-client-policy", choices=("disconnect", "drop"), default=d.slow_client_policy,
                   help="what happens to a client over --max-queued-bytes (default disconnect)")
    g.add_argument("--max-message-size", type=int, default=d.max_message_size,
                   help=f"largest message a client may send, in bytes (default {d.max_message_size})")
    _add_hardening_options(p, d)
    g.add_argument("--page", action="store_true",
                   help="serve the built-in live page on GET / (connection state, messages, charts)")
    _add_scaling_options(p, d)


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text}")
    return value


def _add_scaling_options(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """Worker processes and a backplane across machines (docs/reference.md)."""
    g = p.add_argument_group("scaling")
    g.add_argument("--workers", type=_workers, default=d.workers,
                   help="worker processes sharing the port (SO_REUSEPORT); 'auto': one per CPU core (default 1)")
    g.add_argument("--backplane", default=d.backplane, metavar="URL",
                   help="fan out across nodes through a broker: redis://host:port/db or nats://host:port (default off)")
    g.add_argument("--backplane-channel", default=d.backplane_channel, metavar="NAME",
                   help=f"Redis channel / NATS subject the nodes share (default {d.backplane_channel})")


def _server_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "host": args.host,
        "port": args.port,
        "max_connections": args.max_connections,
        "heartbeat_interval": args.heartbeat_interval,
        "heartbeat_timeout": args.heartbeat_timeout,
        "max_queued_bytes": args.max_queued_bytes,
        "slow_client_policy": args.slow_client_policy,
        "max_message_size": args.max_message_size,
        **_hardening_config(args),
        "page": args.page,
        "workers": args.workers,
        "backplane": args.backplane,
        "backplane_channel": args.backplane_channel,
    }


def _optional_path(text: str) -> str | None:
    return None if text.lower() in ("off", "none", "") else text


def _add_hardening_options(p: argparse.ArgumentParser, d: ServerConfig) -> None:
    """TLS, authentication, limits, health and metrics (docs/reference.md)."""
    g = p.add_argument_group("TLS and authentication")
    g.add_argument("--certfile", help="PEM certificate chain: serve wss:// (with --keyfile)")
    g.add_argument("--keyfile", help="PEM private key (default: the key is in --certfile)")
    g.add_argument("--auth-token", action="append", default=None, metavar="TOKEN",
                   help="accept this bearer token (repeatable; also $FASTWS_AUTH_TOKENS, comma-separated)")
    g.add_argument("--jwt-secret", default=os.environ.get("FASTWS_JWT_SECRET"),
                   help="accept HS256 JWTs signed with this secret (default $FASTWS_JWT_SECRET)")
    g.add_argument("--jwt-audience", help="required 'aud' claim of JWTs")
    g.add_argument("--allowed-origin", action="append", default=None, metavar="ORIGIN",
                   help="accept browsers only from this Origin (repeatable), e.g. https://app.example.com")
    g = p.add_argument_group("limits, health and metrics")
    g.add_argument("--handshake-timeout", type=_positive_float, default=d.handshake_timeout,
                   help=f"seconds a new connection has to complete the upgrade (default {d.handshake_timeout:g})")
    g.add_argument("--max-messages-per-second", type=_positive_float, default=None,
                   help="per-client inbound message rate; over it the client is closed with 1008 (default off)")
    g.add_argument("--burst", type=int, default=None,
                   help="messages a client may send back to back (token bucket size; default: the rate, at least 1)")
    g.add_argument("--broadcast-rate-limit", type=_positive_float, default=None,
                   help="broadcast at most this many messages per second; the input waits, nothing is dropped")
    g.add_argument("--health-path", type=_optional_path, default=d.health_path,
                   help=f"path of the JSON health check, 'off' to disable (default {d.health_path})")
    g.add_argument("--metrics-path", type=_optional_path, default=d.metrics_path,
                   help=f"path of the Prometheus metrics, 'off' to disable (default {d.metrics_path})")
    g.add_argument("--metrics-port", type=int, default=None,
                   help="serve health and metrics on this port instead of the WebSocket port")


def _hardening_config(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "handshake_timeout": args.handshake_timeout,
        "max_messages_per_second": args.max_messages_per_second,
        "burst": args.burst,
        "broadcast_rate_limit": args.broadcast_rate_limit,
        "health_path": args.health_path,
        "metrics_path": args.metrics_path,
        "metrics_port": args.metrics_port,
    }
    if args.keyfile and not args.certfile:
        raise ConfigError("options.certfile: --keyfile needs --certfile")
    if args.certfile:
        out["ssl"] = {"certfile": args.certfile, "keyfile": args.keyfile}
    tokens = list(args.auth_token or [])
    tokens += [t.strip() for t in os.environ.get("FASTWS_AUTH_TOKENS", "").split(",") if t.strip()]
    auth: dict[str, Any] = {}
    if tokens:
        auth["tokens"] = tokens
    if args.jwt_secret:
        auth["jwt_secret"] = args.jwt_secret
    if args.jwt_audience:
        auth["jwt_audience"] = args.jwt_audience
    if args.allowed_origin:
        auth["allowed_origins"] = args.allowed_origin
    if auth:
        out["auth"] = auth
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastws",
        description="fastws: a WebSocket broadcast server. Every message is serialized once and "
        "written to each client once per loop turn.",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="broadcast each line of standard input to every client",
        description="Start a WebSocket server and broadcast each line read from standard input "
        "to every connected client, as a text message (e.g. `tail -f app.log | fastws serve`). "
        "The server keeps running after standard input ends; Ctrl-C or SIGTERM stops it and "
        "clients get CLOSE 1001.",
    )
    _add_server_options(serve)
    serve.add_argument("--exit-on-eof", action="store_true", help="stop when standard input ends")
    serve.set_defaults(func=_cmd_serve)
    try:
        from .blueprint.cli import register
    except ImportError:  # pragma: no cover - blueprint support is part of the package
        pass
    else:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # picows logs every connection and disconnection at INFO: with thousands of
        # clients that is noise; --log-level DEBUG shows it
        logging.getLogger("fastws.picows").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except FastWSError as exc:
        print(f"fastws: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def run_until_signal(coro_factory: Any) -> int:
    """Run ``coro_factory(stop_event)`` on uvloop; SIGINT/SIGTERM set the event."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await coro_factory(stop)

    return runner(wrapper())


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import Server

    config = ServerConfig.from_dict(_server_config(args), path="options")

    async def serve(stop: asyncio.Event) -> int:
        server = Server(config)
        await server.start()
        print(f"fastws: serving on {'wss' if config.ssl else 'ws'}://{config.host}:{server.port}/ "
              "(broadcasting standard input)",
              file=sys.stderr, flush=True)
        if config.page:
            print(f"fastws: live page on {'https' if config.ssl else 'http'}://{config.host}:{server.port}{config.page_path}",
                  file=sys.stderr, flush=True)
        reader_task = asyncio.create_task(_pump_stdin(server, stop if args.exit_on_eof else None))
        try:
            await stop.wait()
        finally:
            reader_task.cancel()
            await asyncio.gather(reader_task, return_exceptions=True)
            await server.stop()
        return 0

    return run_until_signal(serve)


async def _pump_stdin(server: Any, stop_at_eof: asyncio.Event | None) -> None:
    from .pacing import Pacer

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=server.config.max_message_size)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        # a regular file (`fastws serve < file`) is not a pipe: read it in a thread
        reader.feed_data(await loop.run_in_executor(None, sys.stdin.buffer.read))
        reader.feed_eof()
    lines = 0
    rate = server.config.broadcast_rate_limit
    pacer = Pacer(rate) if rate is not None else None  # stdin is read more slowly, nothing dropped
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than max_message_size
            logger.error("a line longer than %d bytes was skipped", server.config.max_message_size)
            continue
        if not line:
            break
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if pacer is not None:
            await pacer.wait()
        server.broadcast(text)
        lines += 1
    logger.info("standard input ended after %d lines", lines)
    if stop_at_eof is not None:
        stop_at_eof.set()
