"""A fastws server in echo mode, for the Autobahn|Testsuite and tests/test_compliance.py.

    python compliance/echo_server.py --port 9001
    ../shared/autobahn/run_autobahn.sh 9001 fastws

Every message a client sends comes back to it, text as text and binary as binary.
The echo goes through the public API only (``on_message`` and ``Client.send``),
so the suite tests the same inbound checks as a broadcast server runs:
fastws.Client.on_ws_frame in src/fastws/_core.pyx.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import fastws

MiB = 1024 * 1024

#: Settings the suite needs. Family 9 sends messages of up to 16 MiB and expects
#: them echoed, so the message cap and the write-backlog cap are above that; the
#: heartbeat is off in effect, since an unsolicited PING would be an unexpected
#: event in every case.
ECHO_SETTINGS: dict[str, Any] = {
    "max_message_size": 32 * MiB,
    "max_queued_bytes": 128 * MiB,
    "heartbeat_interval": 3600.0,
    "max_connections": 1000,
}


def echo(client: fastws.Client, data: str | bytes) -> None:
    client.send(data)


def echo_server(host: str = "127.0.0.1", port: int = 0, **settings: Any) -> fastws.Server:
    """A :class:`fastws.Server` that echoes every message (call ``start()`` on it)."""
    return fastws.Server(host=host, port=port, on_message=echo, **{**ECHO_SETTINGS, **settings})


async def main(host: str, port: int) -> None:
    async with echo_server(host, port) as server:
        print(f"fastws echo server on ws://{host}:{server.port}/", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--debug", action="store_true", help="log every protocol error (fastws.core at DEBUG)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # picows logs each malformed frame at ERROR; the suite sends hundreds on purpose.
    logging.getLogger("fastws.picows").setLevel(logging.CRITICAL)
    if args.debug:
        logging.getLogger("fastws.core").setLevel(logging.DEBUG)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main(args.host, args.port))
    else:
        uvloop.run(main(args.host, args.port))
