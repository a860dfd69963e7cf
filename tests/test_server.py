"""The server over real sockets: fan-out, limits, heartbeat, slow clients, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fastws
from tests.utils import TIMEOUT, RawClient, running_server, url, wait_for


async def recv_json(ws):
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


async def test_many_clients_receive_every_broadcast():
    n_clients, n_messages = 40, 25
    async with running_server() as server:
        clients = [await connect(url(server)) for _ in range(n_clients)]
        await wait_for(lambda: server.connection_count == n_clients)
        counts = []
        for i in range(n_messages):
            counts.append(server.broadcast({"seq": i}))
            if i % 5 == 4:
                await asyncio.sleep(0)  # several turns, several items per turn
        assert counts == [n_clients] * n_messages
        for ws in clients:
            got = [(await recv_json(ws))["seq"] for _ in range(n_messages)]
            assert got == list(range(n_messages))
        stats = server.stats()
        assert stats["messages"] == n_messages
        assert stats["deliveries"] == n_messages * n_clients
        # 25 items in 5 turns: each client got 5 writes, not 25
        assert stats["flushes"] == 5
        for ws in clients:
            await ws.close()


async def test_str_goes_verbatim_and_flush_sends_now():
    async with running_server() as server:
        async with connect(url(server)) as ws:
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast('not json {')
            assert server.flush() == 1
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "not json {"


async def test_large_messages_use_extended_lengths():
    async with running_server(max_message_size=1 << 20) as server:
        async with connect(url(server), max_size=None) as ws:
            await wait_for(lambda: server.connection_count == 1)
            for size in (0, 125, 126, 65535, 65536, 300_000):
                server.broadcast("x" * size)
                async with asyncio.timeout(TIMEOUT):
                    assert len(await ws.recv()) == size


async def test_max_connections_closes_with_1008(caplog):
    caplog.set_level(logging.WARNING, "fastws.server")
    async with running_server(max_connections=2) as server:
        ok = [await connect(url(server)) for _ in range(2)]
        await wait_for(lambda: server.connection_count == 2)
        extra = await connect(url(server))
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(TIMEOUT):
                await extra.recv()
        assert info.value.rcvd.code == 1008
        assert info.value.rcvd.reason == "Max connections reached"
        assert server.stats()["rejected"]["max_connections"] == 1
        assert any("Max connections reached" in r.getMessage() for r in caplog.records)
        # the others still get broadcasts
        assert server.broadcast({"still": "here"}) == 2
        for ws in ok:
            assert await recv_json(ws) == {"still": "here"}
            await ws.close()


async def test_heartbeat_removes_silent_client_and_keeps_good_ones(caplog):
    caplog.set_level(logging.WARNING, "fastws.server")
    async with running_server(heartbeat_interval=0.2, heartbeat_timeout=0.3) as server:
        good = await connect(url(server))  # answers pings itself
        silent = await RawClient.connect(server.port)  # never answers
        await wait_for(lambda: server.connection_count == 2)
        # the silent client is pinged, then closed with 1001 and the TCP connection dropped
        opcode, _ = await silent.read_frame()
        assert opcode == 0x9
        await wait_for(lambda: server.connection_count == 1)
        assert await silent.closed()
        silent.close()
        assert server.stats()["heartbeat_timeouts"] == 1
        assert any("heartbeat: closed 1 client that did not answer a ping" in r.getMessage() for r in caplog.records)
        # the good client survives several more rounds
        before = server.hub.flushes
        await asyncio.sleep(0.9)  # three more ping rounds; nothing to wait for but time itself
        assert server.connection_count == 1
        server.broadcast({"alive": True})
        assert await recv_json(good) == {"alive": True}
        assert server.hub.flushes == before + 1
        await good.close()


async def test_a_client_that_answers_with_any_frame_is_alive():
    async with running_server(heartbeat_interval=0.15) as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 1)
        for _ in range(4):  # answer each ping with a text frame instead of a pong
            opcode, _ = await raw.read_frame()
            assert opcode == 0x9
            raw.send_frame(0x1, b"still here")
        assert server.connection_count == 1
        assert server.stats()["heartbeat_timeouts"] == 0
        raw.close()


async def _fill_until(server, predicate, chunk, limit=400):
    """Broadcast ``chunk`` turn by turn until ``predicate()`` (bounded)."""
    for _ in range(limit):
        server.broadcast(chunk)
        await asyncio.sleep(0.002)
        if predicate():
            return
    raise AssertionError("slow-client policy never triggered")


async def _drain(ws, until_text):
    while True:
        async with asyncio.timeout(TIMEOUT):
            msg = await ws.recv()
        if msg == until_text:
            return


async def test_slow_client_is_disconnected_and_others_unaffected(caplog):
    caplog.set_level(logging.WARNING, "fastws.core")
    cap = 64 * 1024
    async with running_server(max_queued_bytes=cap) as server:
        good = await connect(url(server), max_size=None)
        stuck = await RawClient.connect(server.port, rcvbuf=4096)  # never reads
        await wait_for(lambda: server.connection_count == 2)
        chunk = "y" * 16384
        reader = asyncio.create_task(_drain(good, "END"))
        stuck_client = next(c for c in server.clients if c.remote[1] == stuck.local_port)
        peak = 0

        def over():
            nonlocal peak
            if stuck_client.is_open:
                peak = max(peak, stuck_client.write_buffer_size())
            return server.stats()["slow_disconnects"] == 1

        await _fill_until(server, over, chunk)
        assert server.connection_count == 1
        assert peak <= cap + len(chunk) + 16  # bounded: the cap plus one write
        server.broadcast("END")
        async with asyncio.timeout(TIMEOUT):
            await reader
        assert any("disconnecting it" in r.getMessage() for r in caplog.records)
        assert await stuck.closed()
        stuck.close()
        await good.close()


async def test_slow_client_drop_policy_skips_and_counts(caplog):
    caplog.set_level(logging.WARNING, "fastws.core")
    cap = 64 * 1024
    async with running_server(max_queued_bytes=cap, slow_client_policy="drop") as server:
        good = await connect(url(server), max_size=None)
        stuck = await RawClient.connect(server.port, rcvbuf=4096)
        await wait_for(lambda: server.connection_count == 2)
        chunk = "z" * 16384
        reader = asyncio.create_task(_drain(good, "END"))
        await _fill_until(server, lambda: server.stats()["dropped"] >= 5, chunk)
        # still connected, still registered, but skipped: the good client gets everything
        assert server.connection_count == 2
        assert server.broadcast("END") == 1
        async with asyncio.timeout(TIMEOUT):
            await reader
        episodes = [r for r in caplog.records if "dropping its messages" in r.getMessage()]
        assert len(episodes) == 1  # logged once per episode, not per message
        stuck_client = next(c for c in server.clients if c.write_buffer_size() > 0)
        assert stuck_client.write_buffer_size() <= cap + len(chunk) + 16
        assert stuck_client.dropped == server.stats()["dropped"]
        await good.close()
        stuck.close()


async def test_stop_closes_clients_with_1001():
    server = fastws.Server(host="127.0.0.1", port=0)
    await server.start()
    clients = [await connect(url(server)) for _ in range(5)]
    await wait_for(lambda: server.connection_count == 5)
    port = server.port
    server.broadcast({"last": 1})  # published before stop: delivered before the CLOSE
    await server.stop()
    for ws in clients:
        assert await recv_json(ws) == {"last": 1}
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(TIMEOUT):
                await ws.recv()
        assert info.value.rcvd.code == 1001
    assert server.connection_count == 0
    with pytest.raises(OSError):  # not listening any more
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


async def test_port_in_use_names_host_and_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        server = fastws.Server(host="127.0.0.1", port=port)
        with pytest.raises(fastws.ServerError, match=f"127.0.0.1:{port}"):
            await server.start()


async def test_client_messages_are_read_and_dropped_by_default():
    async with running_server() as server:
        async with connect(url(server)) as ws:
            await ws.send("hello")
            await ws.send(b"\x00\x01")
            await wait_for(lambda: server.stats()["messages_in"] == 2)
            server.broadcast({"ok": 1})
            assert await recv_json(ws) == {"ok": 1}


async def test_on_message_hook_receives_client_messages():
    got = []
    async with running_server(on_message=lambda client, data: got.append(data)) as server:
        async with connect(url(server)) as ws:
            await ws.send("hello")
            await ws.send(b"\x00\x01")
            await wait_for(lambda: len(got) == 2)
    assert got == ["hello", b"\x00\x01"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (dict(opcode=0x1, payload=b"x", rsv=4), 1002),  # RSV1 without an extension
        (dict(opcode=0x1, payload=b"\xff\xfe"), 1007),  # invalid UTF-8
        (dict(opcode=0x0, payload=b"x"), 1002),  # continuation with nothing to continue
    ],
)
async def test_protocol_errors_close_that_client_only(frame, code):
    async with running_server() as server:
        good = await connect(url(server))
        bad = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 2)
        bad.send_frame(**frame)
        opcode, payload = await bad.read_frame()
        assert opcode == 0x8
        assert int.from_bytes(payload[:2], "big") == code
        await wait_for(lambda: server.connection_count == 1)
        assert server.broadcast({"ok": True}) == 1
        assert await recv_json(good) == {"ok": True}
        await good.close()
        bad.close()


async def test_stop_log_says_1_client_not_1_clients(caplog):
    """A client that never answers the CLOSE is dropped after close_timeout, and the log counts it in English."""
    caplog.set_level(logging.WARNING, "fastws.server")
    async with running_server(close_timeout=0.1) as server:
        silent = await RawClient.connect(server.port)  # reads nothing, never answers the CLOSE
        await wait_for(lambda: server.connection_count == 1)
    silent.close()
    messages = [r.getMessage() for r in caplog.records]
    assert "1 client did not finish the closing handshake; dropping them" in messages, messages
