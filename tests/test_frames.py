"""fastws.frames: the one frame codec (encode from the core, parse/split beside it)."""

from __future__ import annotations

import asyncio
import struct

import pytest

from fastws import encode_frame as public_encode_frame
from fastws.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    Frame,
    FrameHeader,
    encode_client_frame,
    encode_frame,
    mask_payload,
    parse_header,
    read_frame,
    read_frames,
    split_frames,
)
from tests.utils import TIMEOUT, RawClient, running_server

#: Payload sizes at every length-encoding boundary: 7-bit, 16-bit and 64-bit lengths.
SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def test_encode_frame_is_the_core_one() -> None:
    assert encode_frame is public_encode_frame


@pytest.mark.parametrize("n", SIZES)
def test_round_trip_with_encode_frame(n: int) -> None:
    text = "x" * n
    frame = encode_frame(text)
    h = parse_header(frame)
    assert h == FrameHeader(fin=True, rsv=0, opcode=OP_TEXT, masked=False, length=n,
                            size={0: 2, 1: 2, 125: 2, 126: 4, 127: 4, 65535: 4}.get(n, 10))
    assert h.minimal
    assert h.size + h.length == len(frame)
    assert read_frames(frame) == ([Frame(OP_TEXT, True, 0, text.encode())], len(frame))
    assert split_frames(frame) == ([frame], len(frame))


def test_round_trip_of_an_item_msgspec_encodes() -> None:
    frame = encode_frame({"seq": 1, "price": 1.5})
    (got,), end = read_frames(frame)
    assert got.payload == b'{"seq":1,"price":1.5}' and end == len(frame)


@pytest.mark.parametrize("n", SIZES)
def test_partial_data_waits_for_the_rest(n: int) -> None:
    frames = encode_frame("a" * n) + encode_frame("b" * 3)
    first = len(frames) - 5
    for cut in sorted({0, 1, 2, 3, 4, 9, first - 1, first, first + 1, len(frames) - 1}):
        if not 0 <= cut < len(frames):
            continue
        got, end = read_frames(frames[:cut])
        if cut < first:
            assert (got, end) == ([], 0), cut
        else:
            assert [f.payload for f in got] == [b"a" * n] and end == first, cut
        parts, end2 = split_frames(frames[:cut])
        assert end2 == end and b"".join(parts) == frames[:end]
    # a header cut before its extended length or mask key is not a header yet
    assert parse_header(encode_frame("a" * 126)[:3]) is None
    assert parse_header(encode_frame("a" * 65536)[:9]) is None
    assert parse_header(encode_client_frame(OP_TEXT, b"abc")[:5]) is None


def test_parse_header_at_an_offset_and_in_any_buffer() -> None:
    data = b"junk" + encode_frame("hello")
    for buf in (data, bytearray(data), memoryview(data)):
        assert parse_header(buf, 4) == FrameHeader(True, 0, OP_TEXT, False, 5, 2)


@pytest.mark.parametrize("n", SIZES)
def test_masked_client_frames(n: int) -> None:
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    frame = encode_client_frame(OP_BINARY, payload, key=b"\x01\x02\x03\x04")
    h = parse_header(frame)
    assert h is not None and h.masked and h.minimal and h.length == n
    assert frame[h.size - 4 : h.size] == b"\x01\x02\x03\x04"
    assert frame[h.size :] == mask_payload(payload, b"\x01\x02\x03\x04")
    assert read_frames(frame) == ([Frame(OP_BINARY, True, 0, payload)], len(frame))
    with pytest.raises(ValueError, match="not a fastws frame at offset 0"):
        split_frames(frame)  # the server's own stream never holds masked frames


def test_client_frame_flags_and_forced_length_forms() -> None:
    frame = encode_client_frame(OP_TEXT, b"hi", fin=False, rsv=4, mask=False)
    assert frame == b"\x41\x02hi"  # RSV1, TEXT, no FIN
    assert parse_header(frame) == FrameHeader(False, 4, OP_TEXT, False, 2, 2)
    long16 = encode_client_frame(OP_TEXT, b"hi", length_form=126)
    long64 = encode_client_frame(OP_TEXT, b"hi", length_form=127)
    for frame, size in ((long16, 8), (long64, 14)):
        h = parse_header(frame)
        assert h is not None and h.size == size and h.length == 2 and not h.minimal
        assert read_frames(frame)[0] == [Frame(OP_TEXT, True, 0, b"hi")]
    with pytest.raises(ValueError, match="a mask key is 4 bytes, got 3"):
        encode_client_frame(OP_TEXT, b"x", key=b"abc")


def test_split_frames_refuses_control_frames_and_names_the_offset() -> None:
    good = encode_frame("ok")
    with pytest.raises(ValueError, match=f"not a fastws frame at offset {len(good)}"):
        split_frames(good + encode_client_frame(OP_CLOSE, struct.pack("!H", 1000), mask=False))


def test_split_frames_from_an_offset() -> None:
    data = b"FWS1F" + encode_frame("a") + encode_frame("b" * 200)
    frames, end = split_frames(data, 5)
    assert frames == [encode_frame("a"), encode_frame("b" * 200)] and end == len(data)


async def test_read_frame_from_an_async_source() -> None:
    stream = bytearray(encode_frame("x" * 70000) + encode_client_frame(OP_PING, b"p", key=b"abcd"))

    async def read_exactly(n: int) -> bytes:
        await asyncio.sleep(0)
        out = bytes(stream[:n])
        del stream[:n]
        return out

    h, payload = await read_frame(read_exactly)
    assert (h.opcode, h.length, h.size, payload) == (OP_TEXT, 70000, 10, b"x" * 70000)
    h, payload = await read_frame(read_exactly)
    assert (h.opcode, h.masked, payload) == (OP_PING, True, b"p")
    assert not stream


async def test_server_frames_on_a_real_socket_parse() -> None:
    """What the server writes to a real client parses into the items broadcast, in order."""
    async with running_server(heartbeat_interval=3600) as server:
        client = await RawClient.connect(server.port)
        try:
            async with asyncio.timeout(TIMEOUT):
                while server.connection_count < 1:
                    await asyncio.sleep(0.005)
            for item in ("small", "m" * 300, "L" * 70000, {"seq": 7}):
                server.broadcast(item)
            got = [await client.read_frame() for _ in range(4)]
        finally:
            client.close()
    assert got == [(OP_TEXT, b"small"), (OP_TEXT, b"m" * 300), (OP_TEXT, b"L" * 70000), (OP_TEXT, b'{"seq":7}')]
