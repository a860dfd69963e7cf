"""WebSocket frames (RFC 6455 section 5.2): encode and parse, side by side.

* :func:`encode_frame` is the core's: serialize one item once and frame it as one
  unmasked FIN TEXT frame, exactly as the server writes it to every client.
* :func:`encode_client_frame` builds any frame a client may send (masked by default),
  including the malformed ones tests need (no mask, non-minimal lengths, RSV bits).
* :func:`parse_header` reads one frame header from a buffer without copying;
  :func:`read_frames` cuts a buffer into complete frames (unmasking client frames);
  :func:`split_frames` cuts a stream of the server's own data frames (backplane,
  workers); :func:`read_frame` reads one frame from an async byte source.
* :func:`encode_topic_record` / :func:`split_records`: the one encoding of a frame with
  its topic (and the offset and epoch a shared history gave it) between processes:
  the backplane's ``T`` messages and the parent-to-worker stream (format below).

Topic record (all integers big-endian)::

    b"T" + topic length (u16) + topic (UTF-8) + offset (u64, 0: not numbered)
         + epoch length (u8, 0: no epoch) + epoch (ASCII) + one complete frame

Its first byte, ``T`` (0x54), is never the first byte of a fastws data frame (0x81,
0x82), so a stream may hold plain frames (topic-less broadcasts) and records side by
side, in publish order; :func:`split_records` cuts both.

Everything here but ``encode_frame`` is plain Python for the cold paths (backplane
relay, tests, the benchmarks' load generator); the hot path is in ``_core``.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from ._core import encode_frame

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameHeader",
    "encode_client_frame",
    "encode_frame",
    "encode_topic_record",
    "mask_payload",
    "new_epoch",
    "parse_header",
    "read_frame",
    "read_frames",
    "split_frames",
    "split_records",
    "TopicFrame",
    "RECORD_TOPIC",
]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

Buffer = bytes | bytearray | memoryview

#: First byte of a topic record (see the module docstring).
RECORD_TOPIC = 0x54
#: Bytes a record adds to its frame, besides the topic and the epoch.
RECORD_OVERHEAD = 12
#: (frame, topic or None, offset (0: not numbered), epoch or None): one entry of :func:`split_records`.
TopicFrame = tuple[bytes, str | None, int, str | None]


class FrameHeader(NamedTuple):
    """One frame header. ``size`` counts every header byte (mask key included)."""

    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    size: int

    @property
    def minimal(self) -> bool:
        """True if the payload length uses the shortest encoding (RFC 6455 requires it)."""
        form = self.size - (4 if self.masked else 0)
        return form == 2 or (form == 4 and self.length >= 126) or (form == 10 and self.length > 0xFFFF)


class Frame(NamedTuple):
    """One complete frame; ``payload`` is unmasked."""

    opcode: int
    fin: bool
    rsv: int
    payload: bytes


def parse_header(data: Buffer, pos: int = 0) -> FrameHeader | None:
    """The header of the frame at ``data[pos:]``, or None while fewer bytes than the header has arrived.

    Only the header needs to be there; the caller checks ``pos + size + length``
    against what it holds before it reads the payload.
    """
    avail = len(data) - pos
    if avail < 2:
        return None
    b0 = data[pos]
    b1 = data[pos + 1]
    length = b1 & 0x7F
    size = 2
    if length == 126:
        size = 4
        if avail < 4:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
    elif length == 127:
        size = 10
        if avail < 10:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
    masked = bool(b1 & 0x80)
    if masked:
        size += 4
        if avail < size:
            return None
    return FrameHeader(bool(b0 & 0x80), (b0 >> 4) & 0x7, b0 & 0x0F, masked, length, size)


def mask_payload(payload: Buffer, key: bytes) -> bytes:
    """``payload`` XOR the 4-byte ``key`` repeated (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def read_frames(data: Buffer, pos: int = 0) -> tuple[list[Frame], int]:
    """Every complete frame in ``data[pos:]`` and the offset of the first byte not consumed."""
    out: list[Frame] = []
    n = len(data)
    while True:
        h = parse_header(data, pos)
        if h is None:
            break
        start = pos + h.size
        end = start + h.length
        if end > n:
            break
        payload = bytes(data[start:end])
        if h.masked:
            payload = mask_payload(payload, bytes(data[start - 4 : start]))
        out.append(Frame(h.opcode, h.fin, h.rsv, payload))
        pos = end
    return out, pos


def split_frames(data: Buffer, pos: int = 0) -> tuple[list[bytes], int]:
    """Cut ``data[pos:]`` into complete server (unmasked) WebSocket data frames, header included.

    Returns the frames and the offset of the first byte not consumed (an incomplete
    frame at the end stays for the caller). Raises ``ValueError`` on a byte stream
    that is not a sequence of unmasked FIN data frames.
    """
    out: list[bytes] = []
    n = len(data)
    while pos + 2 <= n:
        end = _frame_end(data, pos, n)
        if end is None:
            break
        out.append(bytes(data[pos:end]))
        pos = end
    return out, pos


def _frame_end(data: Buffer, start: int, n: int) -> int | None:
    """Where the server data frame at ``start`` ends (None: not all of it is in ``data[:n]``);
    ``ValueError`` if the bytes there are not an unmasked FIN data frame."""
    if data[start] not in (0x81, 0x82) or data[start + 1] & 0x80:
        raise ValueError(f"not a fastws frame at offset {start}: {bytes(data[start : start + 2])!r}")
    h = parse_header(data, start)
    if h is None:
        return None
    end = start + h.size + h.length
    return end if end <= n else None


def encode_topic_record(frame: bytes, topic: str, offset: int = 0, epoch: str | None = None) -> bytes:
    """``frame`` with its topic, offset and epoch, as one record (format in the module docstring)."""
    t = topic.encode()
    e = epoch.encode("ascii") if epoch else b""
    if not 0 < len(t) <= 0xFFFF:
        raise ValueError(f"a topic record needs a topic of 1-65535 bytes, got {len(t)}")
    if len(e) > 0xFF:
        raise ValueError(f"an epoch is at most 255 bytes, got {len(e)}")
    if not 0 <= offset < 1 << 64:
        raise ValueError(f"an offset is 0..2**64-1, got {offset}")
    return b"".join((b"T", len(t).to_bytes(2, "big"), t, offset.to_bytes(8, "big"), bytes((len(e),)), e, frame))


_EPOCH_CHARS = string.ascii_letters + string.digits
_random = random.Random()


def new_epoch() -> str:
    """A random epoch: 12 characters from ``[A-Za-z0-9]`` (not a secret: only unlikely to repeat)."""
    return "".join(_random.choices(_EPOCH_CHARS, k=12))


def split_records(data: Buffer, pos: int = 0) -> tuple[list[TopicFrame], int]:
    """Cut ``data[pos:]`` into plain frames and topic records, in order.

    A plain frame gives ``(frame, None, 0, None)``, a record ``(frame, topic, offset,
    epoch)``. Returns them and the offset of the first byte not consumed (an incomplete
    frame or record at the end stays for the caller). Raises ``ValueError`` on bytes
    that are neither (see :func:`split_frames`).
    """
    out: list[TopicFrame] = []
    n = len(data)
    while pos + 2 <= n:
        b0 = data[pos]
        topic: str | None = None
        offset = 0
        epoch: str | None = None
        start = pos
        if b0 == RECORD_TOPIC:
            if pos + 3 > n:
                break
            tlen = int.from_bytes(data[pos + 1 : pos + 3], "big")
            elen_at = pos + 3 + tlen + 8
            if elen_at + 1 > n:
                break
            if not tlen:
                raise ValueError(f"a topic record without a topic at offset {pos}")
            elen = data[elen_at]
            start = elen_at + 1 + elen
            if start + 2 > n:
                break
            try:
                topic = bytes(data[pos + 3 : pos + 3 + tlen]).decode()
                epoch = bytes(data[elen_at + 1 : start]).decode("ascii") if elen else None
            except UnicodeDecodeError:
                raise ValueError(f"a topic record with a topic or epoch that is not text at offset {pos}") from None
            offset = int.from_bytes(data[pos + 3 + tlen : elen_at], "big")
        end = _frame_end(data, start, n)
        if end is None:
            break
        out.append((bytes(data[start:end]), topic, offset, epoch))
        pos = end
    return out, pos


def encode_client_frame(
    opcode: int,
    payload: Buffer = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length_form: int | None = None,
    key: bytes | None = None,
) -> bytes:
    """One frame as a client sends it: masked with ``key`` (random by default) unless ``mask=False``.

    ``length_form`` (126 or 127) forces a longer length encoding than needed, which a
    server must refuse; it exists for tests.
    """
    n = len(payload)
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mbit = 0x80 if mask else 0
    form = length_form or (n if n < 126 else 126 if n <= 0xFFFF else 127)
    if form < 126:
        head.append(mbit | n)
    elif form == 126:
        head.append(mbit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(mbit | 127)
        head += n.to_bytes(8, "big")
    if not mask:
        return bytes(head) + bytes(payload)
    key = os.urandom(4) if key is None else key
    if len(key) != 4:
        raise ValueError(f"a mask key is 4 bytes, got {len(key)}")
    return bytes(head) + key + mask_payload(payload, key)


async def read_frame(read_exactly: Callable[[int], Awaitable[bytes]]) -> tuple[FrameHeader, bytes]:
    """Read one frame with ``read_exactly(n)`` (returns exactly n bytes); (header, unmasked payload)."""
    first = await read_exactly(2)
    need = 2 + {126: 2, 127: 8}.get(first[1] & 0x7F, 0) + (4 if first[1] & 0x80 else 0)
    head = first + (await read_exactly(need - 2) if need > 2 else b"")
    h = parse_header(head)
    if h is None or h.size != len(head):  # read_exactly returned the wrong number of bytes
        raise ValueError(f"short frame header: {head!r}")
    payload = await read_exactly(h.length) if h.length else b""
    if h.masked:
        payload = mask_payload(payload, head[-4:])
    return h, payload
