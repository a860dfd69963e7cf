"""Open-file exhaustion: ``fastws serve`` under a small ``RLIMIT_NOFILE`` (as ``prlimit`` sets it).

- the soft limit is raised to the hard limit at start, and a ``max_connections`` the limit
  cannot hold is warned about;
- 1,300 plain TCP connects against a 200-descriptor limit: the server neither spins (CPU
  bounded) nor floods its log (bytes bounded), and serves again once the flood is gone.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect

from tests.utils import TIMEOUT, until_received

pytestmark = pytest.mark.adversarial

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def nofile(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


class Serve:
    """``python -m fastws serve`` with RLIMIT_NOFILE = (soft, hard); stderr collected as it comes."""

    def __init__(self, soft: int, hard: int, *args: str) -> None:
        self.limits = (soft, hard)
        self.args = args
        self.err = bytearray()

    async def __aenter__(self) -> Serve:
        command = [sys.executable, "-m", "fastws", "--log-level", "WARNING", "serve", "--host", "127.0.0.1",
                   "--port", "0", *self.args]
        options: dict = {}
        prlimit = shutil.which("prlimit")
        if prlimit is not None:  # util-linux: sets the limits, then execs the command (same pid)
            command = [prlimit, f"--nofile={self.limits[0]}:{self.limits[1]}", "--", *command]
        else:
            def limit() -> None:  # what prlimit does
                resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)

            options["preexec_fn"] = limit
        self.proc = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **options,
        )
        async with asyncio.timeout(TIMEOUT * 2):
            while not (m := re.search(rb"serving on ws://127\.0\.0\.1:(\d+)/", self.err)):
                line = await self.proc.stderr.readline()
                assert line, self.err.decode(errors="replace")
                self.err += line
        self.port = int(m.group(1))
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while chunk := await self.proc.stderr.read(65536):
            self.err += chunk

    async def write_line(self, text: str) -> None:
        self.proc.stdin.write(f"{text}\n".encode())
        await self.proc.stdin.drain()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(TIMEOUT * 2):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader


async def test_soft_limit_is_raised_to_the_hard_limit_and_a_too_large_max_connections_is_warned():
    async with Serve(256, 4096, "--max-connections", "10000") as serve:
        assert nofile(serve.proc.pid) == (4096, 4096)
        assert b"max_connections is 10000 but the open-file limit (RLIMIT_NOFILE 4096" in serve.err, serve.err
    async with Serve(256, 4096, "--max-connections", "1000") as serve:
        assert nofile(serve.proc.pid) == (4096, 4096)
        assert b"open-file limit" not in serve.err, serve.err


async def test_with_workers_each_worker_s_share_of_max_connections_is_checked():
    """Each worker has the limit: 6000 over 2 workers fits in 4096 descriptors each, 10000 does not."""
    async with Serve(256, 4096, "--max-connections", "6000", "--workers", "2") as serve:
        assert b"open-file limit" not in serve.err, serve.err
    async with Serve(256, 4096, "--max-connections", "10000", "--workers", "2") as serve:
        assert b"max_connections is 10000 (5000 per worker process) but the open-file limit" in serve.err, serve.err


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_past_the_fd_limit_no_spin_no_traceback_flood_and_service_resumes(transport):
    limit = 200
    async with Serve(limit, limit, "--max-connections", "5000", "--transport", transport) as serve:
        loop = asyncio.get_running_loop()
        flood: list[socket.socket] = []
        try:
            for _ in range(1300):  # plain TCP, no handshake: each accepted one holds a descriptor
                s = socket.socket()
                s.setblocking(False)
                try:
                    s.connect(("127.0.0.1", serve.port))
                except BlockingIOError:
                    pass
                flood.append(s)
            await asyncio.sleep(1.0)  # let the server hit the limit
            cpu0, err0, t0 = cpu_seconds(serve.proc.pid), len(serve.err), time.monotonic()
            await asyncio.sleep(3.0)
            cpu = (cpu_seconds(serve.proc.pid) - cpu0) / (time.monotonic() - t0)
            logged = len(serve.err) - err0
            print(f"cpu={cpu:.1%} logged={logged}B")
            assert cpu < 0.25, f"the server used {cpu:.0%} of a CPU while out of descriptors"
            assert logged < 20_000, f"{logged} bytes of log in 3 s:\n{serve.err[-3000:].decode(errors='replace')}"
            assert b"has no attribute 'remove_reader'" not in serve.err
            if transport == "aiofastnet":  # its listener leaves them in the backlog (fastws.fdlimit)
                assert b"accept() failed: out of file descriptors" in serve.err
            else:  # libuv's listener closes them as they come: the node's once-a-second probe says so
                assert b"out of file descriptors (" in serve.err, serve.err[-2000:]
        finally:
            for s in flood:
                s.close()
        # the descriptors come back (handshake_timeout closes the silent ones): a client is served again
        async with asyncio.timeout(TIMEOUT * 3):
            while True:
                try:
                    ws = await connect(f"ws://127.0.0.1:{serve.port}/", open_timeout=TIMEOUT)
                    break
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.2)
        async with ws:
            # the dead connections of the flood still in the backlog are accepted and dropped
            # first (each within handshake_timeout): allow for that on a loaded machine
            await until_received(serve.write_line, ws, "served again", timeout=TIMEOUT * 3)
        assert loop.is_running()


def test_the_accept_pause_is_shorter_than_aiofastnets_retry_delay():
    """A pause that outlasts aiofastnet's retry would make every loop turn call accept() in vain."""
    from aiofastnet import constants

    from fastws.fdlimit import PAUSE

    assert 0 < PAUSE < constants.ACCEPT_RETRY_DELAY
