"""The memory budget of issue 13 (bench/README.md, "Memory budget") does not cost correctness.

fastws runs picows on the event loop's own transports by default (``transport: auto``)
and cuts picows' read buffer of each connection to ``Hub.idle_read_buffer`` once it is
open. Over real sockets: large sends to a client that does not read arrive intact on
either transport, large inbound frames still parse, and a frame that arrives together
with the upgrade request is not lost when the buffer is cut.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket

import pytest
from websockets.asyncio.client import connect

import fastws
from fastws._testing import memory_buffer_capacity
from fastws.frames import OP_TEXT, encode_client_frame
from fastws.node import use_aiofastnet
from tests.utils import TIMEOUT, RawClient, running_server, url, wait_for


def read_buffer_capacity(client: fastws.Client) -> int:
    from picows.picows import MemoryBuffer

    proto = client.transport.underlying_transport.get_protocol()
    bufs = [o for o in gc.get_referents(proto) if type(o) is MemoryBuffer]
    assert len(bufs) == 1
    return int(memory_buffer_capacity(bufs[0]))


def test_transport_choice():
    assert not use_aiofastnet("auto", tls=False)
    assert not use_aiofastnet("loop", tls=False)
    assert use_aiofastnet("aiofastnet", tls=False)
    assert use_aiofastnet("auto", tls=True) and use_aiofastnet("loop", tls=True)
    with pytest.raises(fastws.ConfigError, match="transport"):
        fastws.ServerConfig.from_dict({"transport": "epoll"})


@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_large_sends_to_a_client_that_does_not_read_arrive_intact(transport):
    # picows' own send() of more than 8192 bytes hands the loop's transports a view of its
    # reused write buffer: under backpressure the queued frames would be overwritten
    size = 20_000
    async with running_server(transport=transport, max_queued_bytes=64 << 20) as server:
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        await wait_for(lambda: server.connection_count == 1)
        (client,) = server.clients
        messages = []
        # until the kernel takes no more and frames queue in user space, then 50 more
        while len(messages) < 2000 and (client.write_buffer_size() == 0 or len(messages) % 50):
            # lengths differ, so each frame header differs (the corruption overwrites headers)
            messages.append(f"{len(messages):05d}" * (size // 5) + "x" * (len(messages) % 97))
            client.send(messages[-1])
        assert client.write_buffer_size() > 0
        client.send(b"\x00\x01" * 6000)  # binary, through the same path
        for i, m in enumerate(messages):
            opcode, payload = await raw.read_frame()
            assert opcode == OP_TEXT and payload == m.encode(), f"message {i} differs"
        opcode, payload = await raw.read_frame()
        assert opcode == 0x2 and payload == b"\x00\x01" * 6000
        raw.close()


@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_read_buffer_is_cut_and_large_frames_still_parse(transport):
    got: list[str | bytes] = []
    async with running_server(transport=transport, max_message_size=1 << 20,
                              on_message=lambda c, m: got.append(m)) as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 1)
        (client,) = server.clients
        assert read_buffer_capacity(client) == server.hub.idle_read_buffer + 256 == 768
        big = "x" * 60_000
        raw.send_frame(OP_TEXT, big.encode())
        raw.send_frame(OP_TEXT, b"small")
        await wait_for(lambda: len(got) == 2)
        assert got == [big, "small"]
        assert read_buffer_capacity(client) >= 60_000  # picows grew it by itself
        raw.close()


async def test_read_buffer_left_alone_when_off():
    async with running_server() as server:
        server.hub.idle_read_buffer = 0
        async with connect(url(server)):
            await wait_for(lambda: server.connection_count == 1)
            assert read_buffer_capacity(server.clients[0]) == 2048


async def test_frames_sent_with_the_upgrade_request_are_not_lost():
    # the client does not wait for 101: its first frames are in the read buffer when the
    # connection opens (and the buffer is cut), still to be parsed
    got: list[str | bytes] = []
    async with running_server(on_message=lambda c, m: got.append(m)) as server:
        loop = asyncio.get_running_loop()
        for payload_size in (10, 300, 1500):
            sock = socket.socket()
            sock.setblocking(False)
            async with asyncio.timeout(TIMEOUT):
                await loop.sock_connect(sock, ("127.0.0.1", server.port))
                key = base64.b64encode(os.urandom(16)).decode()
                request = (f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
                frames = b"".join(encode_client_frame(OP_TEXT, f"{i}".encode() * payload_size) for i in range(3))
                await loop.sock_sendall(sock, request + frames)
                await wait_for(lambda: len(got) == 3)
            assert got == [f"{i}" * payload_size for i in range(3)]
            got.clear()
            sock.close()


@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_broadcast_and_heartbeat_on_each_transport(transport):
    async with running_server(transport=transport, heartbeat_interval=0.2) as server:
        async with connect(url(server)) as ws:
            await wait_for(lambda: server.connection_count == 1)
            for i in range(3):
                server.broadcast({"i": i})
            async with asyncio.timeout(TIMEOUT):
                assert [await ws.recv() for _ in range(3)] == ['{"i":0}', '{"i":1}', '{"i":2}']
            # the pings of two heartbeat rounds were answered: still connected
            await asyncio.sleep(0.5)
            assert server.connection_count == 1
            assert server.stats()["heartbeat_timeouts"] == 0
