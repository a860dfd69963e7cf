"""The ``fastws`` command line.

``fastws serve``     a standalone server that broadcasts each line of standard input
``fastws run F``     run a blueprint (YAML system of components)
``fastws validate F`` check a blueprint without running it
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .config import ServerConfig
from .exceptions import FastWSError

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
    }


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
        print(f"fastws: serving on ws://{config.host}:{server.port}/ (broadcasting standard input)",
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
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=server.config.max_message_size)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (OSError, ValueError):
        # a regular file (`fastws serve < file`) is not a pipe: read it in a thread
        reader.feed_data(await loop.run_in_executor(None, sys.stdin.buffer.read))
        reader.feed_eof()
    lines = 0
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than max_message_size
            logger.error("a line longer than %d bytes was skipped", server.config.max_message_size)
            continue
        if not line:
            break
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        server.broadcast(text)
        lines += 1
    logger.info("standard input ended after %d lines", lines)
    if stop_at_eof is not None:
        stop_at_eof.set()
