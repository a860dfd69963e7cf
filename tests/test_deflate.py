"""permessage-deflate (RFC 7692): negotiation, one compressed frame for every deflate client,
inbound decompression with the message-size limit. Real clients: websockets with compression
on, and raw sockets that check RSV1 and decompress by hand."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import struct
import subprocess
import urllib.request
import zlib

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import fastws
from fastws.deflate import negotiate
from tests.utils import TIMEOUT, RawClient, running_server, url, wait_for

TAIL = b"\x00\x00\xff\xff"


def dashboard_item(i: int, size: int = 800) -> dict:
    """A realistic dashboard update (300 B - 2 KB of JSON)."""
    rnd = random.Random(i)
    rows = [{"sensor": f"line-{k}", "value": round(rnd.uniform(0, 100), 3), "ok": rnd.random() > 0.1}
            for k in range(max(1, size // 60))]
    return {"seq": i, "ts": 1764500000.0 + i, "kind": "metrics", "rows": rows}


async def deflate_client(port: int, offer: str | None = "permessage-deflate") -> tuple[RawClient, str | None]:
    """A raw client that offers ``offer``; returns it with the server's Sec-WebSocket-Extensions."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    extra = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, 4096)
            assert chunk, f"closed during the handshake: {data!r}"
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert " 101 " in lines[0], lines[0]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return RawClient(sock, rest), headers.get("sec-websocket-extensions")


async def read_frame(raw: RawClient) -> tuple[int, bool, bool, bytes]:
    """(opcode, fin, rsv1, payload) of the next frame; checks that RSV2/RSV3 and the mask bit are clear."""
    async with asyncio.timeout(TIMEOUT):
        b0, b1 = await raw._fill(2)
        assert b0 & 0x30 == 0 and b1 & 0x80 == 0
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await raw._fill(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await raw._fill(8))
        return b0 & 0x0F, bool(b0 & 0x80), bool(b0 & 0x40), await raw._fill(n)


async def read_message(raw: RawClient, wbits: int = 15) -> tuple[int, bool, bytes]:
    """(opcode, was compressed, payload) of the next message, inflated as a client with a
    ``wbits`` window would (a distance beyond the window fails here)."""
    opcode, fin, rsv1, payload = await read_frame(raw)
    assert fin
    if rsv1:
        payload = zlib.decompressobj(-wbits).decompress(payload + TAIL)
    return opcode, rsv1, payload


def compress(data: bytes, obj=None) -> bytes:
    """What a client sends: raw deflate, sync flush, the 00 00 ff ff tail removed."""
    c = obj or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


async def expect_close(raw: RawClient, code: int) -> None:
    while True:
        opcode, _, _, payload = await read_frame(raw)
        if opcode == 0x8:
            break
    assert int.from_bytes(payload[:2], "big") == code, payload
    assert await raw.closed()
    raw.close()


async def recv(ws) -> str | bytes:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


def echo(client, data):
    client.send(data)


# -- negotiation ------------------------------------------------------------------------------

# every combination of the four parameters (RFC 7692 7.1), each with its expected answer
OFFERS = [
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover", 15),
    ("permessage-deflate; server_no_context_takeover", "permessage-deflate; server_no_context_takeover", 15),
    ("permessage-deflate; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15),
    ("permessage-deflate; client_max_window_bits", "permessage-deflate; server_no_context_takeover", 15),
    ("permessage-deflate; client_max_window_bits=10", "permessage-deflate; server_no_context_takeover", 15),
    ("permessage-deflate; server_max_window_bits=8",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=8", 8),
    ('permessage-deflate; server_max_window_bits="11"',
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=11", 11),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
     "server_max_window_bits=9; client_max_window_bits=12",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=9", 9),
    ("permessage-deflate; client_max_window_bits; server_max_window_bits=15",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=15", 15),
    # the first offer cannot be honoured, the second is taken
    ("permessage-deflate; server_max_window_bits=7, permessage-deflate; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 15),
    ("x-webkit-deflate-frame, permessage-deflate", "permessage-deflate; server_no_context_takeover", 15),
]

# offers fastws declines: the connection opens without the extension
DECLINED = [
    "permessage-deflate; server_max_window_bits",         # needs a value
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=08",      # leading zero
    "permessage-deflate; client_max_window_bits=20",
    "permessage-deflate; server_no_context_takeover=1",   # takes no value
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; mystery_param",
    "x-webkit-deflate-frame",
]


@pytest.mark.parametrize(("offer", "answer", "wbits"), OFFERS)
async def test_offer_answered_and_window_honoured(offer, answer, wbits):
    async with running_server() as server:
        raw, ext = await deflate_client(server.port, offer)
        assert ext == answer
        await wait_for(lambda: server.connection_count == 1)
        # larger than any window, with repeats far apart: a longer distance than the window fails to inflate
        block = bytes(random.Random(1).getrandbits(8) for _ in range(300)).hex()
        big = block + "x" * 40000 + block
        server.broadcast(big)
        server.broadcast(big)  # a fresh compressor per message: the second inflates alone too
        for _ in range(2):
            opcode, compressed, payload = await read_message(raw, wbits)
            assert (opcode, compressed, payload) == (1, True, big.encode())
        assert server.hub.deflater.wbits == wbits
        raw.close()


def _combinations():
    for snct in (False, True):
        for cnct in (False, True):
            for smwb in (None, 8, 12, 15):
                for cmwb in (None, "", "10"):
                    offer = ["permessage-deflate"]
                    answer = ["permessage-deflate", "server_no_context_takeover"]
                    if snct:
                        offer.append("server_no_context_takeover")
                    if cnct:
                        offer.append("client_no_context_takeover")
                        answer.append("client_no_context_takeover")
                    if smwb:
                        offer.append(f"server_max_window_bits={smwb}")
                        answer.append(f"server_max_window_bits={smwb}")
                    if cmwb is not None:
                        offer.append("client_max_window_bits" + (f"={cmwb}" if cmwb else ""))
                    yield "; ".join(offer), "; ".join(answer), smwb or 15, cnct


@pytest.mark.parametrize(("offer", "answer", "wbits", "cnct"), list(_combinations()))
async def test_every_parameter_combination(offer, answer, wbits, cnct):
    """2 x 2 x 4 x 3 offers: the answer, the window of what the server sends, and the client's
    compressed messages (with or without its context, as agreed) all work."""
    received = []
    async with running_server(on_message=lambda c, d: received.append(d)) as server:
        raw, ext = await deflate_client(server.port, offer)
        assert ext == answer
        await wait_for(lambda: server.connection_count == 1)
        big = os.urandom(100).hex() + "w" * 1000 + os.urandom(100).hex()
        server.broadcast(big)
        assert await read_message(raw, wbits) == (1, True, big.encode())
        ctx = None if cnct else zlib.compressobj(6, zlib.DEFLATED, -10 if "client_max_window_bits=10" in offer else -15)
        for _ in range(2):
            raw.send_frame(0x1, compress(big.encode(), ctx), rsv=4)
        await wait_for(lambda: len(received) == 2)
        assert received == [big, big]
        assert server.stats()["compression"]["inflaters"] == (0 if cnct else 1)
        raw.close()


@pytest.mark.parametrize("offer", DECLINED)
async def test_unacceptable_offer_declined_not_failed(offer):
    async with running_server() as server:
        raw, ext = await deflate_client(server.port, offer)
        assert ext is None
        await wait_for(lambda: server.connection_count == 1)
        server.broadcast("y" * 1000)
        assert await read_message(raw) == (1, False, b"y" * 1000)
        raw.close()


def test_negotiate_unit():
    assert negotiate([]) is None
    assert negotiate(["permessage-deflate; server_max_window_bits=10"]) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", 10, False)
    # several header lines: the offers are read in order
    assert negotiate(["foo", "permessage-deflate; client_no_context_takeover"]).client_no_context_takeover


async def test_compression_off_negotiates_nothing():
    async with running_server(compression="off") as server:
        async with connect(url(server), compression="deflate") as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast({"a": "b" * 500})
            assert json.loads(await recv(ws)) == {"a": "b" * 500}
        assert "compression" not in server.stats()
        raw = await RawClient.connect(server.port, headers="Sec-WebSocket-Extensions: permessage-deflate\r\n")
        raw.send_frame(0x1, compress(b"hello"), rsv=4)  # RSV1 without the extension
        await expect_close(raw, 1002)


@pytest.mark.parametrize(("key", "value", "words"), [
    ("compression", "gzip", "compression"),
    ("compression_level", 0, "compression_level: must be 1-9"),
    ("compression_level", 10, "compression_level: must be 1-9"),
    ("compression_min_size", -1, "compression_min_size: must be >= 0"),
])
def test_config_errors(key, value, words):
    with pytest.raises(fastws.ConfigError, match=words):
        fastws.ServerConfig.from_dict({key: value})


# -- outbound: one compressed frame for every deflate client ---------------------------------


async def test_mixed_deflate_and_plain_clients_receive_the_same_messages():
    items = [dashboard_item(i, 300 + 170 * i) for i in range(10)] + ["tiny", {"x": 1}]
    async with running_server(compression_min_size=64) as server:
        deflated = [await connect(url(server), compression="deflate") for _ in range(2)]
        plain = [await connect(url(server), compression=None) for _ in range(2)]
        raw, ext = await deflate_client(server.port, "permessage-deflate; client_no_context_takeover")
        await wait_for(lambda: server.connection_count == 5)
        assert all(ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate") for ws in deflated)
        assert all("Sec-WebSocket-Extensions" not in ws.response.headers for ws in plain)
        flushes = server.hub.flushes
        assert server.broadcast_many(items) == [5] * len(items)  # one turn: one write per client
        expected = [i if isinstance(i, str) else json.loads(json.dumps(i)) for i in items]
        for ws in deflated + plain:
            got = [await recv(ws) for _ in items]
            assert [g if g in ("tiny",) else json.loads(g) for g in got] == expected
        frames = [await read_message(raw) for _ in items]
        assert [f[1] for f in frames] == [True] * 10 + [False, False]  # below compression_min_size: plain
        assert [json.loads(f[2]) if f[2] != b"tiny" else "tiny" for f in frames] == expected
        assert server.hub.flushes == flushes + 1
        d = server.stats()["compression"]
        assert d["clients"] == 3 and d["messages_compressed"] == 10 and d["messages_uncompressed"] == 2
        assert d["bytes_compressed"] * 2 < d["bytes_in"]
        for ws in deflated + plain:
            await ws.close()
        raw.close()
        await wait_for(lambda: server.connection_count == 0)
        assert server.hub.deflater.clients == 0


async def test_no_compression_while_no_deflate_client_is_connected():
    async with running_server() as server:
        async with connect(url(server), compression=None) as ws:
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast(dashboard_item(1))
            await recv(ws)
        assert server.stats()["compression"]["messages_compressed"] == 0


async def test_deflate_client_joining_mid_turn_gets_the_plain_frames_of_that_turn():
    """A message published before the first deflate client joined, in the same loop turn, was not
    compressed: that turn's deflate clients get the plain buffer (legal per message), never a
    compressed buffer that misses it. (In-memory transports: the order is forced.)"""
    import logging

    from picows.picows import WSTransport

    from fastws._core import Hub
    from fastws._testing import MemoryTransport
    from fastws._testing import connect as connect_memory

    loop = asyncio.get_running_loop()
    hub = Hub(loop)
    hub.enable_deflate(6, 16)
    plain_t, deflate_t = MemoryTransport(loop), MemoryTransport(loop)
    connect_memory(hub, plain_t)
    hub.publish("first " * 10)  # no deflate client yet: not compressed
    client = hub.new_client()
    client.use_deflate(15, False)
    client.on_ws_connected(WSTransport(False, deflate_t, logging.getLogger("test"), loop))
    hub.publish("second " * 10)
    assert hub.flush() == 2
    frames = fastws.encode_frame("first " * 10) + fastws.encode_frame("second " * 10)
    assert plain_t.take() == frames
    assert deflate_t.take() == frames  # the plain buffer, whole
    hub.publish("third " * 10)  # the next turn: compressed once for it
    hub.flush()
    assert plain_t.take() == fastws.encode_frame("third " * 10)
    got = deflate_t.take()
    assert got[0] == 0xC1 and zlib.decompressobj(-15).decompress(got[2:] + TAIL) == b"third " * 10
    assert hub.bytes_out == 2 * len(frames) + len(fastws.encode_frame("third " * 10)) + len(got)


async def test_smallest_window_serves_every_deflate_client():
    async with running_server() as server:
        small, ext = await deflate_client(server.port, "permessage-deflate; server_max_window_bits=9")
        large, _ = await deflate_client(server.port, "permessage-deflate")
        await wait_for(lambda: server.connection_count == 2)
        assert server.hub.deflater.wbits == 9
        block = os.urandom(200).hex()
        big = block + "z" * 3000 + block
        server.broadcast(big)
        assert await read_message(small, 9) == (1, True, big.encode())
        assert await read_message(large, 15) == (1, True, big.encode())
        small.close()
        await wait_for(lambda: server.connection_count == 1)
        assert server.hub.deflater.wbits == 15
        large.close()


async def test_broadcast_frame_compressed_for_deflate_clients():
    async with running_server() as server:
        raw, _ = await deflate_client(server.port)
        plain = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 2)
        item = dashboard_item(7, 1200)
        server.broadcast_frame(fastws.encode_frame(item))  # e.g. from a backplane
        opcode, compressed, payload = await read_message(raw)
        assert compressed and json.loads(payload) == json.loads(json.dumps(item))
        assert await plain.read_frame() == (1, json.dumps(item, separators=(",", ":")).encode())
        raw.close()
        plain.close()


async def test_send_to_one_client_compresses_with_its_window():
    async with running_server(on_message=echo) as server:
        raw, _ = await deflate_client(server.port, "permessage-deflate; server_max_window_bits=10")
        await wait_for(lambda: server.connection_count == 1)
        text = os.urandom(100).hex() + "e" * 2000 + os.urandom(100).hex()
        raw.send_frame(0x1, text.encode())
        assert await read_message(raw, 10) == (1, True, text.encode())
        raw.send_frame(0x2, b"\x01\x02")  # below compression_min_size: sent as is
        assert await read_message(raw) == (2, False, b"\x01\x02")
        raw.close()


async def test_worker_processes_compress_the_frames_they_get():
    server = fastws.Server(host="127.0.0.1", port=0, workers=2, max_connections=100)
    await server.start()
    clients = []
    try:
        clients = [await connect(f"ws://127.0.0.1:{server.port}/", compression=c) for c in ("deflate", None) * 4]
        await wait_for(lambda: server.connection_count == 8)
        items = [dashboard_item(i, 1500) for i in range(20)]
        for item in items:
            server.broadcast(item)
        expected = json.loads(json.dumps(items))
        for ws in clients:
            assert [json.loads(await recv(ws)) for _ in items] == expected
        # the workers report their counters every 0.5 s; each compressed every message once
        await wait_for(lambda: (d := server.stats().get("compression", {})).get("clients") == 4
                       and d["messages_compressed"] >= 20)
    finally:
        for ws in clients:
            await ws.close()
        await server.stop()


# -- inbound ----------------------------------------------------------------------------------


async def test_websockets_client_with_context_takeover_holds_one_inflater():
    received = []
    async with running_server(on_message=lambda c, d: received.append(d)) as server:
        async with connect(url(server), compression="deflate") as ws:  # keeps its context
            await wait_for(lambda: server.connection_count == 1)
            assert server.stats()["compression"]["inflaters"] == 0  # none before it sends one
            msgs = [json.dumps(dashboard_item(i)) for i in range(5)]
            for m in msgs:  # later messages refer to earlier ones
                await ws.send(m)
            await wait_for(lambda: len(received) == 5)
            assert received == msgs
            assert server.stats()["compression"]["inflaters"] == 1
        await wait_for(lambda: server.connection_count == 0)
        assert server.stats()["compression"]["inflaters"] == 0


async def test_client_without_context_takeover_holds_no_inflater():
    received = []
    factory = ClientPerMessageDeflateFactory(client_no_context_takeover=True, server_no_context_takeover=True)
    async with running_server(on_message=lambda c, d: received.append(d)) as server:
        async with connect(url(server), extensions=[factory], compression=None) as ws:
            assert "client_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
            msgs = [json.dumps(dashboard_item(i)) for i in range(5)]
            for m in msgs:
                await ws.send(m)
            await wait_for(lambda: len(received) == 5)
            assert received == msgs
            assert server.stats()["compression"]["inflaters"] == 0


async def test_raw_compressed_messages_with_and_without_context_takeover():
    received = []
    async with running_server(on_message=lambda c, d: received.append((c.remote[1], d))) as server:
        keeps, _ = await deflate_client(server.port, "permessage-deflate")
        resets, _ = await deflate_client(server.port, "permessage-deflate; client_no_context_takeover")
        ctx = zlib.compressobj(6, zlib.DEFLATED, -15)
        text = b'{"hello": "world", "n": 12345678901234567890}'
        keeps.send_frame(0x1, compress(text, ctx), rsv=4)
        second = compress(text, ctx)  # refers back to the first message
        assert len(second) < len(compress(text)) / 2
        keeps.send_frame(0x1, second, rsv=4)
        keeps.send_frame(0x1, b"plain between", rsv=0)  # an uncompressed message in between is fine
        keeps.send_frame(0x2, compress(b"\x00" * 1000, ctx), rsv=4)
        for _ in range(2):
            resets.send_frame(0x1, compress("héllo wörld".encode()), rsv=4)
        # a fragmented compressed message: RSV1 on the first frame only, a PING in between
        body = compress(("fragmented " * 300).encode())
        resets.send_frame(0x1, body[:10], fin=False, rsv=4)
        resets.send_frame(0x9, b"p")
        resets.send_frame(0x0, body[10:20], fin=False)
        resets.send_frame(0x0, body[20:])
        assert await read_frame(resets) == (0xA, True, False, b"p")
        await wait_for(lambda: len(received) == 7)
        assert [d for p, d in received if p == keeps.local_port] == [text.decode(), text.decode(), "plain between",
                                                                     b"\x00" * 1000]
        assert [d for p, d in received if p == resets.local_port] == ["héllo wörld", "héllo wörld",
                                                                      "fragmented " * 300]
        assert server.stats()["compression"]["inflaters"] == 1  # only the client that keeps its context
        keeps.close()
        resets.close()


async def test_zip_bomb_stops_at_max_message_size_with_1009():
    limit = 64 * 1024
    received = []
    async with running_server(max_message_size=limit, on_message=lambda c, d: received.append(d)) as server:
        bomb, _ = await deflate_client(server.port)
        exact, _ = await deflate_client(server.port)
        frag, _ = await deflate_client(server.port, "permessage-deflate; client_no_context_takeover")
        other = await connect(url(server), compression="deflate")
        await wait_for(lambda: server.connection_count == 4)
        exact.send_frame(0x2, compress(b"\x00" * limit), rsv=4)  # exactly the limit: fine
        await wait_for(lambda: len(received) == 1)
        payload = compress(b"\x00" * (50 * 1024 * 1024))  # 50 MiB in about 50 KiB
        assert len(payload) < limit
        bomb.send_frame(0x2, payload, rsv=4)
        await expect_close(bomb, 1009)
        # in fragments, each small: the limit is on the inflated total
        small = compress(b"a" * (limit + 1))
        frag.send_frame(0x1, small[:50], fin=False, rsv=4)
        frag.send_frame(0x0, small[50:])
        await expect_close(frag, 1009)
        assert len(received) == 1 and len(received[0]) == limit
        await other.send("still " * 100)
        await wait_for(lambda: len(received) == 2)
        assert server.stats()["disconnect_reasons"]["message_too_big"] == 2
        await other.close()
        exact.close()


@pytest.mark.parametrize(("frames", "code"), [
    ([(0x1, b"\xff\xfe\xfd garbage", True, 4)], 1007),                        # not deflate data
    ([(0x1, compress(b"\xc3\x28 bad utf-8"), True, 4)], 1007),               # inflates to invalid UTF-8
    ([(0x9, b"ping", True, 4)], 1002),                                        # RSV1 on a control frame
    ([(0x1, compress(b"abc")[:2], False, 4), (0x0, b"x", True, 4)], 1002),    # RSV1 on a continuation
    ([(0x1, compress(b"abc"), True, 2)], 1002),                               # RSV2: no extension uses it
    ([(0x1, compress(b"abc")[:2], False, 4), (0x1, b"new", True, 0)], 1002),  # new message inside one
])
async def test_bad_compressed_input_fails_the_connection(frames, code):
    async with running_server() as server:
        raw, _ = await deflate_client(server.port)
        for opcode, payload, fin, rsv in frames:
            raw.send_frame(opcode, payload, fin=fin, rsv=rsv)
        await expect_close(raw, code)


# -- Chromium ----------------------------------------------------------------------------------

from tests.test_browser import Child, browser, dom, free_port, page, wait_until  # noqa: E402, F401


@pytest.mark.browser
def test_chromium_negotiates_deflate_and_receives_compressed_broadcasts(page, tmp_path):  # noqa: F811
    port = free_port()
    child = Child(["serve", "--page", "--host", "127.0.0.1", "--port", str(port)], port,
                  tmp_path / "serve.log", stdin=subprocess.PIPE)
    try:
        page.get(f"http://127.0.0.1:{port}/")
        wait_until("the page to connect", lambda: dom(page)["state"] == "connected")
        # a second socket of our own, to read what was negotiated and to send compressed messages
        page.execute_script(f"""
            window.got = []; window.closeCode = null;
            window.sock = new WebSocket('ws://127.0.0.1:{port}/');
            window.sock.onmessage = (e) => window.got.push(e.data);
            window.sock.onclose = (e) => {{ window.closeCode = e.code; }};""")
        wait_until("our socket to open", lambda: page.execute_script("return window.sock.readyState === 1"))
        ext = page.execute_script("return window.sock.extensions")
        assert ext.startswith("permessage-deflate") and "server_no_context_takeover" in ext
        # Chromium compresses what it sends, keeping its context: several similar messages
        page.execute_script("for (let i = 0; i < 5; i++) window.sock.send(JSON.stringify({i, pad: 'p'.repeat(3000)}));")
        lines = [json.dumps(dashboard_item(i, 300 + 300 * i)) for i in range(5)] + ["short"]
        assert child.proc.stdin is not None
        child.proc.stdin.write(("\n".join(lines) + "\n").encode())
        child.proc.stdin.flush()
        got = wait_until("6 messages on our socket", lambda: (g := page.execute_script("return window.got"))
                         and len(g) >= 6 and g)
        assert got == lines
        shown = wait_until("6 messages on the page", lambda: (d := dom(page))["count"] >= 6 and d)
        assert shown["messages"][0] == "short"
        assert page.execute_script("return window.closeCode") is None  # its compressed messages were accepted
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
            metrics = r.read().decode()
        assert "fastws_received_messages_total 5" in metrics and "fastws_protocol_errors_total 0" in metrics
    finally:
        assert child.stop() == 0, (tmp_path / "serve.log").read_text()


def test_deflate_stub_matches_the_module():
    import ast
    import pathlib

    from fastws import _deflate

    tree = ast.parse((pathlib.Path(_deflate.__file__).parent / "_deflate.pyi").read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    assert set(classes) == {"Deflater", "Inflater"}
    for name, node in classes.items():
        stub = {b.target.id if isinstance(b, ast.AnnAssign) else b.name for b in node.body
                if isinstance(b, (ast.AnnAssign, ast.FunctionDef))} - {"__init__"}
        public = {n for n in dir(getattr(_deflate, name)) if not n.startswith("_")}
        assert stub == public, name


@pytest.mark.parametrize("junk", [b"\x81", b"\x81\x7f" + b"\xff" * 7 + b"\xf6", b"\x81\x7e\x00", b"\x81\x05abc",
                                  b"\x81\x85mask!"])
async def test_malformed_published_frame_passes_through_for_deflate_clients(junk):
    """publish_frame takes what a backplane or worker pipe delivered: bytes that are not a whole
    frame reach deflate clients exactly as they reach plain ones (never read past, never compressed)."""
    import logging

    from picows.picows import WSTransport

    from fastws._core import Hub
    from fastws._testing import MemoryTransport
    from fastws._testing import connect as connect_memory

    loop = asyncio.get_running_loop()
    hub = Hub(loop)
    hub.enable_deflate(6, 16)
    plain_t, deflate_t = MemoryTransport(loop), MemoryTransport(loop)
    connect_memory(hub, plain_t)
    client = hub.new_client()
    client.use_deflate(15, False)
    client.on_ws_connected(WSTransport(False, deflate_t, logging.getLogger("test"), loop))
    good = fastws.encode_frame("hello " * 20)
    hub.publish_frame(good + junk)
    hub.flush()
    assert plain_t.take() == good + junk
    got = deflate_t.take()
    assert got[0] == 0xC1 and got.endswith(junk)
    assert zlib.decompressobj(-15).decompress(got[2:-len(junk)] + TAIL) == b"hello " * 20
