"""Limits: message size (1009), per-client message rate (1008), handshake timeout, broadcast pacing."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import anyio
import pytest
from websockets.asyncio.client import connect

import fastws
from fastws import WebSocketComponent
from fastws.cli import _server_config, build_parser
from fastws.pacing import Pacer
from tests.utils import TIMEOUT, RawClient, running_server, url, wait_for


async def expect_close(raw: RawClient, code: int, reason: bytes | None = None) -> None:
    """Read frames until CLOSE; check its code (and reason); then the TCP connection ends."""
    while True:
        opcode, payload = await raw.read_frame()
        if opcode == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") == code, payload
    if reason is not None:
        assert payload[2:] == reason
    assert await raw.closed()
    raw.close()


async def recv_text(ws) -> str:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


# -- max_message_size ------------------------------------------------------------------------


async def test_oversized_messages_close_1009_and_others_keep_going():
    limit = 1000
    async with running_server(max_message_size=limit) as server:
        good = await connect(url(server))
        exact = await RawClient.connect(server.port)
        single = await RawClient.connect(server.port)
        fragmented = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 4)
        exact.send_frame(0x2, b"x" * limit)  # exactly the limit: fine
        await wait_for(lambda: server.stats()["messages_in"] == 1)
        single.send_frame(0x2, b"x" * (limit + 1))  # one frame over the limit (picows' parser refuses it)
        await expect_close(single, 1009)
        fragmented.send_frame(0x1, b"y" * 600, fin=False)  # two frames under it, the message over it
        fragmented.send_frame(0x0, b"y" * 600, fin=True)
        await expect_close(fragmented, 1009, b"message too big")
        await wait_for(lambda: server.connection_count == 2)
        assert server.broadcast("after") == 2
        assert await recv_text(good) == "after"
        assert (await exact.read_frame()) == (0x1, b"after")
        reasons = server.stats()["disconnect_reasons"]
        assert reasons["message_too_big"] == 2
        assert sum(reasons.values()) == server.stats()["disconnects"] == 2
        exact.close()
        await good.close()


# -- max_messages_per_second -------------------------------------------------------------------


async def test_message_rate_over_the_limit_closes_1008():
    async with running_server(max_messages_per_second=2, burst=5) as server:
        good = await connect(url(server))
        flood = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 2)
        for i in range(5):  # the burst is allowed
            flood.send_frame(0x1, b"m%d" % i)
        await wait_for(lambda: server.stats()["messages_in"] == 5)
        for _ in range(20):  # control frames do not count
            flood.send_frame(0x9, b"p")
        for _ in range(20):
            assert (await flood.read_frame())[0] == 0xA
        flood.send_frame(0x1, b"one too many")
        await expect_close(flood, 1008, b"rate limit exceeded")
        await wait_for(lambda: server.connection_count == 1)
        stats = server.stats()
        assert stats["messages_in"] == 5
        assert stats["disconnect_reasons"]["rate_limited"] == 1
        assert server.broadcast("still") == 1
        assert await recv_text(good) == "still"
        await good.close()


async def test_a_client_within_the_rate_stays_connected():
    async with running_server(max_messages_per_second=20, burst=2) as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 1)
        for rnd in range(5):
            raw.send_frame(0x1, b"a")
            raw.send_frame(0x1, b"b", fin=False)  # a fragmented message counts once
            raw.send_frame(0x0, b"c")
            want = 2 * (rnd + 1)
            await wait_for(lambda want=want: server.stats()["messages_in"] == want)
            await asyncio.sleep(0.1)  # the bucket refills (2 tokens need 0.1 s at 20/s)
        assert server.connection_count == 1
        assert server.stats()["disconnect_reasons"]["rate_limited"] == 0
        raw.close()


# -- handshake_timeout --------------------------------------------------------------------------


async def test_half_sent_and_silent_handshakes_are_dropped_and_counted():
    async with running_server(handshake_timeout=0.3) as server:
        good = await connect(url(server))
        loop = asyncio.get_running_loop()
        socks = []
        for first in (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n", b""):
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, ("127.0.0.1", server.port))
            if first:
                await loop.sock_sendall(s, first)  # never finished
            socks.append(s)
        t0 = time.monotonic()
        for s in socks:
            async with asyncio.timeout(TIMEOUT):
                assert await loop.sock_recv(s, 1024) == b""  # closed by the server, nothing sent
            s.close()
        assert time.monotonic() - t0 >= 0.25
        await wait_for(lambda: server.stats()["handshake_timeouts"] == 2)
        assert server.stats()["connections_total"] == 1
        server.broadcast("alive")
        assert await recv_text(good) == "alive"
        await good.close()


# -- broadcast_rate_limit -----------------------------------------------------------------------


async def test_broadcast_rate_limit_paces_the_input_and_drops_nothing():
    rate, n = 100.0, 40
    comp = WebSocketComponent("ws", {"host": "127.0.0.1", "port": 0, "broadcast_rate_limit": rate})
    send, recv = anyio.create_memory_object_stream(1)  # a small buffer: the producer feels the pacing
    out_send, out_recv = anyio.create_memory_object_stream(1000)
    comp.receive_streams["input"] = recv
    comp.send_streams["output"] = out_send
    await comp.start()
    try:
        async with connect(url(comp)) as ws:
            await wait_for(lambda: comp.connection_count == 1)
            task = asyncio.create_task(comp.process())
            t0 = time.monotonic()
            async with send:
                for i in range(n):
                    await send.send({"i": i})
            produced = time.monotonic() - t0
            got = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < n:
                    got.append(json.loads(await ws.recv())["i"])
            elapsed = time.monotonic() - t0
            await asyncio.wait_for(task, TIMEOUT)
            assert got == list(range(n))  # nothing dropped, in order
            max_batch = Pacer(rate).max_batch
            floor = (n - max_batch) / rate  # the first group goes at once
            assert elapsed >= floor * 0.95
            assert produced >= floor * 0.9 - 2 / rate  # the sender was held back, not dropped
            assert elapsed < floor + 2.0  # and not much slower than asked
            results = []
            async with out_recv:
                async for r in out_recv:
                    results.append(r)
            assert [r["message"]["i"] for r in results] == list(range(n))
            assert all(r["broadcast_to"] == 1 for r in results)
    finally:
        await comp.stop()


async def test_pacer_spaces_groups_and_does_not_save_up_idle_time():
    p = Pacer(50)  # 20 ms per item, groups of up to 2
    assert p.max_batch == 2
    t0 = anyio.current_time()
    await p.wait(2)  # at once
    await p.wait(2)  # 40 ms later
    await p.wait(1)  # 40 ms after that
    assert anyio.current_time() - t0 >= 0.079
    await asyncio.sleep(0.1)  # idle
    t1 = anyio.current_time()
    await p.wait(1)
    assert anyio.current_time() - t1 < 0.015  # no wait now ...
    await p.wait(1)
    assert anyio.current_time() - t1 >= 0.019  # ... and no burst from the idle time either
    with pytest.raises(ValueError):
        Pacer(0)


# -- config and CLI --------------------------------------------------------------------------------


def test_limit_config_errors_name_the_key():
    cases = {
        "max_messages_per_second": ({"max_messages_per_second": -1}, "must be a positive number"),
        "burst": ({"burst": 5}, "needs max_messages_per_second"),
        "broadcast_rate_limit": ({"broadcast_rate_limit": 0}, "must be a positive number"),
        "handshake_timeout": ({"handshake_timeout": 0}, "must be a positive number"),
    }
    for key, (cfg, why) in cases.items():
        with pytest.raises(fastws.ConfigError, match=rf"config\.{key}: {why}"):
            fastws.ServerConfig.from_dict(cfg)
    with pytest.raises(fastws.ConfigError, match=r"config\.burst: expected an integer or null, got '3'"):
        fastws.ServerConfig.from_dict({"max_messages_per_second": 1, "burst": "3"})


def test_cli_limit_flags():
    args = build_parser().parse_args([
        "serve", "--max-messages-per-second", "10", "--burst", "20", "--broadcast-rate-limit", "500",
        "--handshake-timeout", "2", "--metrics-port", "9100", "--health-path", "off",
    ])
    c = fastws.ServerConfig.from_dict(_server_config(args))
    assert (c.max_messages_per_second, c.burst, c.broadcast_rate_limit) == (10.0, 20, 500.0)
    assert (c.handshake_timeout, c.metrics_port, c.health_path, c.metrics_path) == (2.0, 9100, None, "/metrics")
