"""Helpers shared by the tests: timeouts, servers on port 0, raw clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import fastws
from fastws.frames import encode_client_frame, read_frame

#: Every wait in the tests is bounded by a multiple of this (scaled for slow machines).
TIMEOUT = 5.0 * float(os.environ.get("FASTWS_TESTS_TIMEOUT_FACTOR", "1"))


@contextlib.asynccontextmanager
async def running_server(**settings: Any) -> AsyncIterator[fastws.Server]:
    settings.setdefault("host", "127.0.0.1")
    settings.setdefault("port", 0)
    server = fastws.Server(**settings)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.port}/"


async def wait_for(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Wait until ``predicate()`` is true, checking on every loop turn (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class RawClient:
    """A WebSocket client over a plain socket that reads only when asked to.

    Nothing reads in the background, so it can misbehave on purpose: never answer
    pings, stop reading and let the server's queue fill.
    """

    def __init__(self, sock: socket.socket, buffered: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(buffered)
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def connect(cls, port: int, path: str = "/", rcvbuf: int | None = None,
                      headers: str = "") -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TIMEOUT):
            await loop.sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            await loop.sock_sendall(
                sock,
                (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                    f"{headers}\r\n"
                ).encode(),
            )
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise ConnectionError(f"closed during the handshake: {data!r}")
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            sock.close()
            raise ConnectionError(head.decode(errors="replace"))
        return cls(sock, rest)

    async def _fill(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = await self.loop.sock_recv(self.sock, 65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self.buf += chunk
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def read_frame(self) -> tuple[int, bytes]:
        async with asyncio.timeout(TIMEOUT):
            header, payload = await read_frame(self._fill)
        return header.opcode, payload

    def send_frame(self, opcode: int, payload: bytes = b"", fin: bool = True, rsv: int = 0, mask: bool = True) -> None:
        self.sock.sendall(encode_client_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask))

    async def closed(self) -> bool:
        """True once the server has closed the TCP connection (EOF or reset)."""
        async with asyncio.timeout(TIMEOUT):
            try:
                while await self.loop.sock_recv(self.sock, 65536):
                    pass
            except ConnectionResetError:
                pass
        return True

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


async def raw_http(port: int, request: bytes, ssl: Any = None) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is, read until the server closes; return (status, headers, body).

    The read ends only at EOF, so a successful return also shows that the server
    closed the connection (no upgrade). Raises ConnectionError if nothing came back.
    """
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl,
                                                       server_hostname="127.0.0.1" if ssl else None)
        try:
            writer.write(request)
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not data:
        raise ConnectionError("closed without a response")
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def upgrade_request(port: int, path: str = "/", headers: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode()


async def spawn_serve(*args: str, startup_timeout: float = TIMEOUT * 2) -> tuple[asyncio.subprocess.Process, int]:
    """Start ``python -m fastws [global args] serve ...`` and return it with the port it bound.

    ``args`` go after ``serve`` (``--host 127.0.0.1 --port 0`` are added); the port is read
    from the line the server prints when it listens.
    """
    import re
    import subprocess
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "--log-level", "WARNING", "serve", "--host", "127.0.0.1", "--port", "0", *args,
        stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with asyncio.timeout(startup_timeout):
            while True:
                line = (await proc.stderr.readline()).decode()
                assert line, f"fastws serve {' '.join(args)} exited before it listened"
                m = re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", line)
                if m:
                    return proc, int(m.group(1))
    except BaseException:
        proc.kill()
        await proc.wait()
        raise


async def until_received(write_line: Any, ws: Any, tag: str, timeout: float = TIMEOUT) -> None:
    """Write the line ``tag`` (``await write_line(tag)``) until ``ws`` receives it.

    A server cannot tell a client when it has been registered; the first broadcast that
    arrives proves it (bounded by ``timeout``).
    """
    async with asyncio.timeout(timeout):
        while True:
            await write_line(tag)
            try:
                async with asyncio.timeout(0.2):
                    while await ws.recv() != tag:
                        pass
                    return
            except TimeoutError:
                continue


async def fastws_cli(*args: str, stdin: int = subprocess.DEVNULL, cwd: str | None = None,
                     env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m fastws ARGS`` to its end (bounded): (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", *args, stdin=stdin, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=cwd, env=env,
    )
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
