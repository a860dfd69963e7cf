"""Client._write: send(2) on the socket, the transport only for what the socket does not take.

What the direct path relies on, each shown with real sockets: every write fastws makes
to an open connection goes through it (so a PONG amid queued broadcasts keeps every frame
whole), nothing follows a CLOSE that picows sent on its own, and the loop closes a
connection's fd only after fastws has been told the connection is gone.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct

import pytest

from fastws.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from tests.utils import TIMEOUT, RawClient, running_server, wait_for


@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_pongs_amid_queued_broadcasts_keep_every_frame_whole(transport):
    async with running_server(transport=transport, max_queued_bytes=64 << 20) as server:
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        await wait_for(lambda: server.connection_count == 1)
        (client,) = server.clients
        sent: list[str] = []

        def publish(k: int) -> None:
            for _ in range(k):  # lengths differ, so a frame cut by a PONG shows
                sent.append(f"{len(sent):05d}" * 1500 + "y" * (len(sent) % 89))
                server.broadcast(sent[-1])

        async with asyncio.timeout(TIMEOUT):
            while client.write_buffer_size() == 0:  # until the kernel takes no more
                publish(20)
                await asyncio.sleep(0)
        for i in range(3):  # PINGs while broadcasts wait in the transport, more after each
            seen = client.last_seen
            raw.send_frame(OP_PING, b"p%d" % i)
            await wait_for(lambda seen=seen: client.last_seen > seen)  # read, PONG written
            publish(5)
            await asyncio.sleep(0)
        got, pongs = [], []
        while len(got) < len(sent):
            opcode, payload = await raw.read_frame()
            if opcode == OP_PONG:
                pongs.append((len(got), payload))
            else:
                assert opcode == OP_TEXT, f"frame {len(got)}: opcode {opcode}"
                got.append(payload.decode())
        assert got == sent
        assert [p for _, p in pongs] == [b"p0", b"p1", b"p2"]
        assert all(0 < at < len(sent) for at, _ in pongs)  # they came amid the broadcasts
        raw.close()


@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_nothing_follows_the_close_picows_sent_for_a_bad_frame(transport):
    async with running_server(transport=transport) as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 1)
        stop = False

        async def publisher() -> None:
            while not stop:  # a broadcast every loop turn, until the connection is gone
                server.broadcast({"n": 1})
                await asyncio.sleep(0)

        task = asyncio.create_task(publisher())
        try:
            await raw.read_frame()  # broadcasts flow
            raw.send_frame(OP_TEXT, b"unmasked", mask=False)  # picows refuses it: CLOSE 1002
            async with asyncio.timeout(TIMEOUT):
                while True:
                    opcode, payload = await raw.read_frame()
                    if opcode == OP_CLOSE:
                        break
                    assert opcode == OP_TEXT
            assert struct.unpack("!H", payload[:2])[0] == 1002
            assert await raw.closed()
            assert not raw.buf, f"{len(raw.buf)} bytes after the CLOSE frame"
        finally:
            stop = True
            await task
            raw.close()


@pytest.mark.parametrize("how", ["reset", "eof"])
@pytest.mark.parametrize("transport", ["loop", "aiofastnet"])
async def test_the_fd_is_still_the_connections_own_when_fastws_is_told_it_is_gone(transport, how):
    # Client._write sends on the fd without asking the transport: that is safe only while the
    # fd cannot have been closed (and reused by a new connection) before on_ws_disconnected
    inodes: dict[int, int] = {}
    checked: list[bool] = []

    def on_connect(c) -> None:
        fd = c.transport.underlying_transport.get_extra_info("socket").fileno()
        inodes[id(c)] = fd
        inodes[fd] = os.fstat(fd).st_ino

    def on_disconnect(c) -> None:
        fd = inodes[id(c)]
        checked.append(os.fstat(fd).st_ino == inodes[fd])

    async with running_server(transport=transport, on_connect=on_connect, on_disconnect=on_disconnect) as server:
        for round_ in range(5):
            raw = await RawClient.connect(server.port)
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast({"round": round_})
            await raw.read_frame()
            if how == "reset":
                raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                raw.sock.shutdown(socket.SHUT_WR)
            raw.close()
            await wait_for(lambda: server.connection_count == 0)
            server.broadcast({"after": round_})  # to nobody; must not touch a closed fd
            await asyncio.sleep(0)
    assert checked == [True] * 5
