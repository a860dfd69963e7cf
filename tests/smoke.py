"""Smoke test of an installed fastws (a wheel in a fresh venv; cibuildwheel's test-command).

A server on 127.0.0.1 port 0, a websockets client, one broadcast received, a clean stop
(close code 1001). Prints one line and exits 0, or exits 1 saying what failed. Uses only
the installed package: run it from outside the source tree.
"""

from __future__ import annotations

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fastws

TIMEOUT = 10.0


async def main() -> int:
    async with asyncio.timeout(TIMEOUT):
        server = fastws.Server(host="127.0.0.1", port=0)
        await server.start()
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                while server.connection_count < 1:  # registered once the handshake is done
                    await asyncio.sleep(0.01)
                sent = server.broadcast({"smoke": "ok", "n": 1})
                received = json.loads(await ws.recv())
                await server.stop()
                try:
                    await ws.recv()
                    code = None
                except ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd else None
        finally:
            await server.stop()
    if received != {"smoke": "ok", "n": 1} or sent != 1 or code != 1001:
        print(f"smoke test FAILED: sent to {sent}, received {received!r}, close code {code}", file=sys.stderr)
        return 1
    print(f"fastws {getattr(fastws, '__version__', '?')} from {fastws.__file__}: broadcast received, close 1001")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
