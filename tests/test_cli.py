"""The command line, end to end in a spawned process."""

from __future__ import annotations

import asyncio
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fastws.cli import main
from tests.utils import TIMEOUT, spawn_serve, until_received


async def test_serve_broadcasts_stdin_lines_and_stops_on_sigterm():
    proc, port = await spawn_serve()
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            async def write_line(text):
                proc.stdin.write(f"{text}\n".encode())
                await proc.stdin.drain()

            await until_received(write_line, ws, "ready")
            proc.stdin.write(b'{"level": "info", "msg": "one"}\nplain line two\n')
            await proc.stdin.drain()
            got = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < 2:
                    msg = await ws.recv()
                    if msg != "ready":
                        got.append(msg)
            assert got == ['{"level": "info", "msg": "one"}', "plain line two"]
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await ws.recv()
            assert info.value.rcvd.code == 1001
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_keeps_serving_after_stdin_ends_and_stops_on_sigint():
    proc, port = await spawn_serve()
    try:
        proc.stdin.close()
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.protocol.state.name == "OPEN"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_help_lists_every_server_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--max-connections", "--heartbeat-interval", "--heartbeat-timeout",
                 "--max-queued-bytes", "--slow-client-policy", "--max-message-size", "--exit-on-eof"):
        assert flag in out


def test_bad_option_value_is_a_clear_error(capsys):
    assert main(["serve", "--port", "70000"]) == 1
    err = capsys.readouterr().err
    assert "port" in err and "1-65535" in err and "Traceback" not in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().out
