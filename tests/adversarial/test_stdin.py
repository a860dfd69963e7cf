"""``fastws serve`` with every kind of standard input a service manager or a shell hands it.

Each test spawns a real ``python -m fastws serve`` process, connects a real ``websockets``
client to it on 127.0.0.1, and signals it: it must serve, never die of SIGABRT, and exit 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.utils import TIMEOUT, until_received

pytestmark = pytest.mark.adversarial

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


async def spawn(*args: str, stdin: Any, stderr: Any = subprocess.PIPE, shell_prefix: str = "",
                **kwargs: Any) -> tuple[asyncio.subprocess.Process, int, asyncio.StreamReader | None]:
    """``fastws serve`` with this stdin; returns it, its port, and its stderr reader.

    ``shell_prefix`` runs it through ``sh -c 'exec ... <prefix>'`` (``0<&-`` closes stdin).
    """
    argv = [sys.executable, "-m", "fastws", "--log-level", "info", "serve", "--host", "127.0.0.1",
            "--port", "0", *args]
    if shell_prefix:
        argv = ["sh", "-c", 'exec "$@" ' + shell_prefix, "sh", *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=stdin, stderr=stderr,
                                                stdout=subprocess.DEVNULL, env=ENV, **kwargs)
    return proc, await read_port(proc.stderr), proc.stderr


async def read_port(stream: asyncio.StreamReader | None) -> int:
    assert stream is not None
    async with asyncio.timeout(TIMEOUT * 2):
        while True:
            line = (await stream.readline()).decode()
            assert line, "fastws serve exited before it listened"
            if m := re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", line):
                return int(m.group(1))


async def stop(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal ``proc``; return its exit status and the rest of its stderr."""
    proc.send_signal(sig)
    async with asyncio.timeout(TIMEOUT):
        rest = (await proc.stderr.read()).decode() if proc.stderr else ""
        return await proc.wait(), rest


async def wait_line(stream: asyncio.StreamReader | None, text: str) -> None:
    """Read ``stream`` until a line contains ``text`` (bounded)."""
    assert stream is not None
    async with asyncio.timeout(TIMEOUT):
        while text not in (line := (await stream.readline()).decode()):
            assert line, f"ended before {text!r}"


def kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()


async def serves(port: int) -> None:
    """A client can connect, and the server closes it with 1001 when it stops."""
    async with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
        assert ws.protocol.state.name == "OPEN"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_dev_null(sig: int) -> None:
    proc, port, stderr = await spawn(stdin=subprocess.DEVNULL)
    try:
        await serves(port)
        await wait_line(stderr, "standard input ended after 0 lines")
        code, err = await stop(proc, sig)
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        kill(proc)


async def test_regular_file(tmp_path) -> None:
    data = tmp_path / "in.txt"
    data.write_bytes(b"one\ntwo\nthree without newline")
    with open(data, "rb") as f:
        proc, port, stderr = await spawn(stdin=f)
    try:
        await serves(port)
        await wait_line(stderr, "standard input ended after 3 lines")  # read with plain reads
        code, err = await stop(proc)
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        kill(proc)


async def test_closed_stdin() -> None:
    proc, port, _ = await spawn(stdin=subprocess.DEVNULL, shell_prefix="0<&-")
    try:
        await serves(port)
        code, err = await stop(proc)
        assert code == 0, err  # not -SIGABRT
        assert "Traceback" not in err
    finally:
        kill(proc)


async def test_systemd_like_environment() -> None:
    """No tty, a new session, stdin /dev/null, stdout and stderr on a socket (the journal)."""
    journal, ours = socket.socketpair()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "serve", "--host", "127.0.0.1", "--port", "0",
        stdin=subprocess.DEVNULL, stdout=journal, stderr=journal, start_new_session=True, env=ENV,
    )
    journal.close()
    try:
        reader, writer = await asyncio.open_connection(sock=ours)
        async with asyncio.timeout(TIMEOUT * 2):
            while not (m := re.search(rb"serving on ws://127\.0\.0\.1:(\d+)/", await reader.readline())):
                pass
        await serves(int(m.group(1)))
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
            rest = await reader.read()
        assert b"Traceback" not in rest and b"fastws stopped" in rest
        writer.close()
    finally:
        kill(proc)


async def test_pipe_overlong_lines_are_skipped_whole() -> None:
    """A 10 MiB and a 1.5 MB line (max_message_size 1 MiB) are dropped whole, logged once each;
    the normal line after them arrives, and nothing of their tails does."""
    proc, port, stderr = await spawn(stdin=subprocess.PIPE)
    assert proc.stdin is not None and stderr is not None
    try:
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None, open_timeout=TIMEOUT) as ws:
            async def write_line(text: str) -> None:
                proc.stdin.write(f"{text}\n".encode())  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]

            await until_received(write_line, ws, "ready")
            proc.stdin.write(b"x" * (10 * 1024 * 1024) + b"\n")
            proc.stdin.write(b"y" * 1_500_000 + b"\n")
            proc.stdin.write(b"after the long ones\n")
            async with asyncio.timeout(TIMEOUT * 2):
                await proc.stdin.drain()
                msg = await ws.recv()
                while msg == "ready":
                    msg = await ws.recv()
            assert msg == "after the long ones"
            code, err = await stop(proc)
        assert code == 0
        skipped = [line for line in err.splitlines() if "skipped a line" in line]
        assert len(skipped) == 2, err
        assert "of 10485760 bytes" in skipped[0] and "of 1500000 bytes" in skipped[1]
        assert "(2 lines longer than max_message_size skipped)" in err
    finally:
        kill(proc)


async def test_line_over_max_queued_bytes_is_refused_counted_and_the_next_one_goes_out() -> None:
    """A line that fits max_message_size but not max_queued_bytes: the server refuses it
    (EncodeError), the pump logs it once and goes on."""
    proc, port, stderr = await spawn("--max-queued-bytes", "4096", stdin=subprocess.PIPE)
    assert proc.stdin is not None and stderr is not None
    try:
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
            async def write_line(text: str) -> None:
                proc.stdin.write(f"{text}\n".encode())  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]

            await until_received(write_line, ws, "ready")
            proc.stdin.write(b"z" * 5000 + b"\nnext\n")
            proc.stdin.close()
            async with asyncio.timeout(TIMEOUT):
                while (msg := await ws.recv()) == "ready":
                    pass
            assert msg == "next"
            await wait_line(stderr, "1 line refused by the server")
            code, err = await stop(proc)
        assert code == 0 and "Traceback" not in err
    finally:
        kill(proc)


async def test_sigterm_during_a_burst_delivers_what_was_read() -> None:
    """SIGTERM while a large burst is piped in: every line fastws read goes out before the
    CLOSE 1001, in order, and the count it logs is exactly what the client received."""
    lines = 300_000
    # a generous close_timeout: the client has a backlog of messages to read before it can
    # answer the CLOSE (with the default 2 s a slower client would be cut, as documented)
    proc, port, stderr = await spawn("--max-queued-bytes", str(64 * 1024 * 1024), "--close-timeout", "30",
                                     stdin=subprocess.PIPE)
    assert proc.stdin is not None and stderr is not None
    readies = 0
    try:
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT, max_queue=None) as ws:
            async def write_line(text: str) -> None:
                nonlocal readies
                readies += 1
                proc.stdin.write(f"{text}\n".encode())  # type: ignore[union-attr]
                await proc.stdin.drain()  # type: ignore[union-attr]

            await until_received(write_line, ws, "ready")
            writer = asyncio.create_task(write_all(proc, b"".join(b"%d\n" % i for i in range(lines))))
            got = []
            async with asyncio.timeout(TIMEOUT):
                while not got:  # the burst has begun to arrive
                    if (msg := await ws.recv()) != "ready":
                        got.append(msg)
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT * 6):
                    while True:
                        if (msg := await ws.recv()) != "ready":
                            got.append(msg)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        async with asyncio.timeout(TIMEOUT):
            err = (await stderr.read()).decode()
            assert await proc.wait() == 0
        assert got == [str(i) for i in range(len(got))]  # in order, none missing
        m = re.search(r"standard input: (\d+) lines? broadcast", err)
        assert m, err
        assert int(m.group(1)) - readies == len(got)  # exactly what was read went out
        assert "Traceback" not in err
    finally:
        kill(proc)


async def write_all(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: what it had read is what counts


@pytest.mark.parametrize("kind", ["socket", "tty"])
async def test_socket_and_terminal_stdin_lines_arrive(kind: str) -> None:
    """A socket (systemd's StandardInput=socket) goes to the loop's pipe reader; a terminal
    to the thread reader. Both broadcast their lines, and SIGTERM exits 0."""
    if kind == "socket":
        ours, theirs = socket.socketpair()
        send = ours.sendall
        child_fd = theirs.fileno()
    else:
        import pty

        master, child_fd = pty.openpty()
        ours = theirs = None

        def send(data: bytes) -> None:
            os.write(master, data)
    try:
        proc, port, _ = await spawn(stdin=child_fd)
    finally:
        if theirs is not None:
            theirs.close()
        else:
            os.close(child_fd)
    try:
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT) as ws:
            async def write_line(text: str) -> None:
                send(f"{text}\n".encode())

            await until_received(write_line, ws, f"hello from a {kind}")
        code, err = await stop(proc)
        assert code == 0 and "Traceback" not in err
    finally:
        kill(proc)
        if ours is not None:
            ours.close()
        else:
            os.close(master)
