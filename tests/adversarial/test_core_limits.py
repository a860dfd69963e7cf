"""Issue 14, the core's items, on real sockets: a PING flood from a client that never
reads (14.3), an item larger than max_queued_bytes (14.7), frames picows' parser refuses
and bad CLOSE frames (14.10), and fragmented messages left unfinished (14.15).

Each test asserts the outcome: memory bounded, counters exact, the other clients still
served, the right close codes. Every loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import os
import struct
import time

import pytest
from websockets.asyncio.client import connect

import fastws
from tests.utils import TIMEOUT, RawClient, running_server, url, wait_for

pytestmark = pytest.mark.adversarial

KiB, MiB = 1024, 1024 * 1024


def rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def masked(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """One masked client frame (payload < 126 bytes), with a zero mask for speed."""
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def server_client(server: fastws.Server, raw: RawClient) -> fastws.Client:
    return next(c for c in server.clients if c.remote[1] == raw.local_port)


async def read_close(raw: RawClient) -> tuple[int, bytes]:
    """Read frames until the server's CLOSE; return (code, reason)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            op, payload = await raw.read_frame()
            if op == 0x8:
                return struct.unpack("!H", payload[:2])[0], payload[2:]


async def watcher(server: fastws.Server):
    """A well-behaved client that must keep receiving broadcasts; returns (ws, received)."""
    ws = await connect(url(server), max_size=None, open_timeout=TIMEOUT)
    received: list[str] = []
    n = len(server.clients)
    await wait_for(lambda: len(server.clients) >= n)

    async def reader() -> None:
        async for m in ws:
            received.append(m)

    return ws, received, asyncio.get_running_loop().create_task(reader())


# -- 14.3: PING flood from a client that never reads --------------------------------------


@pytest.mark.parametrize("policy", ["drop", "disconnect"])
async def test_ping_flood_without_reading_keeps_memory_bounded(policy):
    cap = 64 * KiB
    flood_bytes = 48 * MiB  # of PONGs, were they all queued
    async with running_server(max_queued_bytes=cap, slow_client_policy=policy, heartbeat_interval=60) as server:
        ws, received, task = await watcher(server)
        raw = await RawClient.connect(server.port, rcvbuf=4096)
        await wait_for(lambda: len(server.clients) == 2)
        flooder = server_client(server, raw)
        ping = masked(0x9, b"p" * 125)
        chunk = ping * 512  # 67 KB a write
        loop = asyncio.get_running_loop()
        base = rss()
        worst_backlog = peak = sent = broadcasts = 0
        cut = False
        deadline = time.monotonic() + 4 * TIMEOUT
        while sent < flood_bytes // 127 and time.monotonic() < deadline:
            try:
                await loop.sock_sendall(raw.sock, chunk)
            except (ConnectionResetError, BrokenPipeError):
                cut = True
                break
            sent += 512
            if sent % (512 * 16) == 0:
                server.broadcast(f"tick {broadcasts}")
                broadcasts += 1
                worst_backlog = max(worst_backlog, flooder.write_buffer_size())
                peak = max(peak, rss() - base)
                if not flooder.is_open:
                    cut = True
                    break
        s = server.stats()
        # memory: the user-space backlog never passes the cap by more than a flush
        assert worst_backlog <= cap + 16 * KiB, worst_backlog
        assert peak < 24 * MiB, f"RSS grew {peak / MiB:.1f} MiB under a {sent * 127 / MiB:.0f} MiB PONG flood"
        assert s["pongs_skipped"] > 0
        if policy == "drop":
            assert not cut and flooder.is_open, "drop policy: the flooder stays connected"
            assert sent * 127 >= flood_bytes - len(chunk)  # the whole flood went through
            assert s["slow_disconnects"] == 0
        else:
            await wait_for(lambda: len(server.clients) == 1)
            s = server.stats()
            assert s["slow_disconnects"] == 1 == s["disconnect_reasons"]["slow_client"]
        # the other client was served throughout, every broadcast exactly once
        server.broadcast("last")
        await wait_for(lambda: received[-1:] == ["last"])
        assert received == [f"tick {i}" for i in range(broadcasts)] + ["last"]
        raw.close()
        await ws.close()
        await task


# -- 14.7: an item larger than max_queued_bytes -------------------------------------------


async def test_item_larger_than_the_cap_is_refused_and_fast_readers_are_kept():
    big = "x" * (10 * MiB)
    async with running_server() as server:  # max_queued_bytes: 1 MiB (default)
        clients = [await watcher(server) for _ in range(3)]
        with pytest.raises(fastws.EncodeError, match="larger than max_queued_bytes"):
            server.broadcast(big)
        with pytest.raises(fastws.EncodeError, match="larger than max_queued_bytes"):
            server.broadcast({"blob": big})
        server.broadcast("after")
        for _, received, _ in clients:
            await wait_for(lambda received=received: received == ["after"])
        s = server.stats()
        assert s["encode_errors"] == 2 and s["slow_disconnects"] == 0 and s["connections"] == 3
        assert sum(s["disconnect_reasons"].values()) == 0
        for ws, _, task in clients:
            await ws.close()
            await task


async def test_item_of_10_mib_reaches_fast_readers_when_the_cap_allows_it():
    big = "y" * (10 * MiB)
    async with running_server(max_queued_bytes=16 * MiB) as server:
        clients = [await watcher(server) for _ in range(3)]
        assert server.broadcast(big) == 3
        server.broadcast("after")
        for _, received, _ in clients:
            await wait_for(lambda received=received: received[-1:] == ["after"], timeout=4 * TIMEOUT)
            assert len(received) == 2 and received[0] == big
        s = server.stats()
        assert s["slow_disconnects"] == 0 and s["connections"] == 3 and s["encode_errors"] == 0
        for ws, _, task in clients:
            await ws.close()
            await task


# -- 14.10: frames picows' parser refuses, bad CLOSE frames ------------------------------

PARSER_REFUSED = {
    "unmasked": (b"\x81\x02hi", 1002, "protocol_error"),
    "opcode 3": (masked(0x3, b"x"), 1002, "protocol_error"),
    "opcode 0xB": (masked(0xB, b"x"), 1002, "protocol_error"),
    "fragmented ping": (masked(0x9, b"x", fin=False), 1002, "protocol_error"),
    "126-byte ping": (bytes([0x89, 0x80 | 126]) + struct.pack("!H", 126) + b"\0" * 4 + b"p" * 126,
                      1002, "protocol_error"),
    "2^62 length": (b"\x82\xff" + struct.pack("!Q", 1 << 62) + b"\0" * 4, 1009, "message_too_big"),
    "close code 999": (masked(0x8, struct.pack("!H", 999)), 1002, "protocol_error"),
    "close code 1005": (masked(0x8, struct.pack("!H", 1005)), 1002, "protocol_error"),
    "close 1-byte payload": (masked(0x8, b"\x03"), 1002, "protocol_error"),
    # picows answers 1007 (invalid payload data), as Autobahn's case 7.5.1 accepts
    "close reason not UTF-8": (masked(0x8, struct.pack("!H", 1000) + b"\xff\xfe"), 1007, "protocol_error"),
}


@pytest.mark.parametrize("name", list(PARSER_REFUSED))
async def test_refused_frames_are_closed_and_counted_as_protocol_errors(name):
    data, code, reason = PARSER_REFUSED[name]
    async with running_server() as server:
        ws, received, task = await watcher(server)
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: len(server.clients) == 2)
        raw.sock.sendall(data)
        assert (await read_close(raw))[0] == code
        await wait_for(lambda: len(server.clients) == 1)
        s = server.stats()
        assert s["protocol_errors"] == 1
        assert s["disconnect_reasons"][reason] == 1 == sum(s["disconnect_reasons"].values())
        assert s["disconnect_reasons"]["client_close"] == 0
        server.broadcast("still here")
        await wait_for(lambda: received == ["still here"])
        raw.close()
        await ws.close()
        await task


async def test_a_valid_close_is_still_a_client_close():
    async with running_server() as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: len(server.clients) == 1)
        raw.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
        assert (await read_close(raw))[0] == 1000
        await wait_for(lambda: len(server.clients) == 0)
        s = server.stats()
        assert s["disconnect_reasons"]["client_close"] == 1 and s["protocol_errors"] == 0
        raw.close()


# -- 14.15: unfinished fragmented messages --------------------------------------------------


async def test_unfinished_message_kept_open_with_pings_is_closed_after_fragment_timeout():
    got: list[str] = []
    async with running_server(fragment_timeout=0.5, heartbeat_interval=30,
                              on_message=lambda c, m: got.append(m)) as server:
        ws, received, task = await watcher(server)
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: len(server.clients) == 2)
        t0 = time.monotonic()
        raw.send_frame(0x1, b"a" * (512 * KiB), fin=False)  # half a max_message_size, pinned
        code = None
        async with asyncio.timeout(TIMEOUT):
            while code is None:  # pings keep it alive; the server must close it anyway
                raw.send_frame(0x9, b"k")
                try:
                    async with asyncio.timeout(0.1):
                        op, payload = await raw.read_frame()
                except TimeoutError:
                    continue
                if op == 0x8:
                    code, why = struct.unpack("!H", payload[:2])[0], payload[2:]
        elapsed = time.monotonic() - t0
        assert code == 1008 and why == b"message not finished within fragment_timeout"
        assert 0.5 <= elapsed < 0.5 + TIMEOUT
        await wait_for(lambda: len(server.clients) == 1)
        s = server.stats()
        assert s["disconnect_reasons"]["fragment_timeout"] == 1 == sum(s["disconnect_reasons"].values())
        assert s["protocol_errors"] == 1 and got == []
        server.broadcast("others fine")
        await wait_for(lambda: received == ["others fine"])
        raw.close()
        await ws.close()
        await task


async def test_silent_unfinished_message_is_closed_by_the_heartbeat_round():
    async with running_server(fragment_timeout=0.3, heartbeat_interval=0.2, heartbeat_timeout=10) as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: len(server.clients) == 1)
        raw.send_frame(0x2, b"b" * 1000, fin=False)
        # sends nothing more: no frame of its own can trigger the check
        code, why = await read_close(raw)
        assert code == 1008 and why == b"message not finished within fragment_timeout"
        await wait_for(lambda: len(server.clients) == 0)
        s = server.stats()
        assert s["disconnect_reasons"]["fragment_timeout"] == 1 and s["heartbeat_timeouts"] == 0
        raw.close()


async def test_fragmented_message_finished_in_time_is_delivered():
    got: list[str] = []
    async with running_server(fragment_timeout=2.0, on_message=lambda c, m: got.append(m)) as server:
        raw = await RawClient.connect(server.port)
        await wait_for(lambda: len(server.clients) == 1)
        raw.send_frame(0x1, b"hel", fin=False)
        raw.send_frame(0x9, b"")
        raw.send_frame(0x0, b"lo", fin=True)
        await wait_for(lambda: got == ["hello"])
        assert server.stats()["protocol_errors"] == 0 and len(server.clients) == 1
        raw.close()


def test_fragment_timeout_must_be_positive():
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="fragment_timeout must be a positive number of seconds"):
            fastws.Hub(loop, fragment_timeout=0)
    finally:
        loop.close()
