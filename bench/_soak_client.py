"""Soak client role: ``python -m bench._soak_client --port P --n N --source 127.0.0.X --deadline S``.

Opens N connections from one source address, answers every PING with a PONG, checks
the ``seq`` of every message on every connection, and waits for ``"END"`` on all of
them (or the deadline). Prints one JSON line when connected (``ready``) and one with
the report. Started by ``bench/soak.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from typing import Any

from bench._util import cpu_s, emit, percentile, raise_nofile, run_role, upgrade_request
from fastws.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_client_frame, parse_header

ZERO_KEY = bytes(4)
PONG = encode_client_frame(OP_PONG, b"", key=ZERO_KEY)
CLOSE = encode_client_frame(OP_CLOSE, struct.pack("!H", 1000), key=ZERO_KEY)
HANDSHAKE = upgrade_request()


class Conn(asyncio.Protocol):
    __slots__ = ("owner", "transport", "buf", "upgraded", "expect", "gaps", "ended", "pings", "closed_early")

    def __init__(self, owner: Clients) -> None:
        self.owner = owner
        self.buf = bytearray()
        self.upgraded = False
        self.expect = -1  # next seq; -1 until the first message
        self.gaps = 0
        self.ended = False
        self.pings = 0
        self.closed_early = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(HANDSHAKE)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.closed_early = True
            self.owner.lost += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                return
            if b" 101 " not in buf[:i]:
                self.owner.refused += 1
                self.transport.close()
                return
            del buf[: i + 4]
            self.upgraded = True
            self.owner.upgraded += 1
        pos, n = 0, len(buf)
        while (h := parse_header(buf, pos)) is not None and pos + h.size + h.length <= n:
            start = pos + h.size
            pos = start + h.length
            if h.opcode == OP_TEXT:
                self._message(buf, start, pos)
            elif h.opcode == OP_PING:
                self.pings += 1
                self.transport.write(PONG)
            elif h.opcode == OP_CLOSE:
                self.ended = True
                self.transport.close()
        if pos:
            del buf[:pos]

    def _message(self, buf: bytearray, start: int, end: int) -> None:
        owner = self.owner
        if buf[start] != 0x7B:  # not JSON: "END"
            self.ended = True
            owner.ended += 1
            if owner.ended == len(owner.conns):
                owner.all_ended.set()
            return
        # {"seq":123,"ts":1700000000000000000,"pad":"..."}
        comma = buf.index(b",", start)
        seq = int(buf[start + 7 : comma])
        if self.expect >= 0 and seq != self.expect:
            self.gaps += 1
        self.expect = seq + 1
        owner.received += 1
        if owner.sample and self is owner.conns[0]:
            ts_end = buf.index(b",", comma + 1)
            owner.latencies.append((time.time_ns() - int(buf[comma + 6 : ts_end])) / 1e6)


class Clients:
    def __init__(self, n: int) -> None:
        self.conns: list[Conn] = []
        self.n = n
        self.upgraded = self.refused = self.lost = self.ended = self.received = 0
        self.all_ended = asyncio.Event()
        self.sample = True
        self.latencies: list[float] = []


async def client_main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    owner = Clients(args.n)
    t0 = time.monotonic()
    batch = 200
    for i in range(0, args.n, batch):  # connect in bounded batches, so the accept queue never overflows
        k = min(batch, args.n - i)
        results = await asyncio.gather(*(
            loop.create_connection(lambda: Conn(owner), "127.0.0.1", args.port, local_addr=(args.source, 0))
            for _ in range(k)), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
            owner.conns.append(r[1])
        async with asyncio.timeout(30):
            while owner.upgraded + owner.refused < len(owner.conns):
                await asyncio.sleep(0.005)
    emit(ready=owner.upgraded, refused=owner.refused, connect_s=time.monotonic() - t0)
    c0 = cpu_s()
    # wait for "END" on every connection (the parent bounds the run; this is the backstop)
    try:
        async with asyncio.timeout(args.deadline):
            await owner.all_ended.wait()
    except TimeoutError:
        pass
    missed = [c for c in owner.conns if c.gaps or not c.ended]
    lat = owner.latencies
    emit(
        report=True, source=args.source, connections=len(owner.conns), upgraded=owner.upgraded,
        ended=owner.ended, received=owner.received, lost_early=owner.lost,
        conns_with_gaps=sum(1 for c in owner.conns if c.gaps), conns_without_end=sum(1 for c in owner.conns if not c.ended),
        missed_conns=len(missed), first_seq_min=min((c.expect for c in owner.conns), default=-1),
        pings=sum(c.pings for c in owner.conns), cpu_s=cpu_s() - c0,
        latency_ms={"p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat, default=None),
                    "n": len(lat)},
        received_per_conn=sorted({c.expect for c in owner.conns}),
    )
    for c in owner.conns:
        if not c.transport.is_closing():
            c.transport.write(CLOSE)
            c.transport.close()
    await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._soak_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True, help="connections to open")
    p.add_argument("--source", default="127.0.0.2", help="local address to connect from")
    p.add_argument("--deadline", type=float, required=True, help="seconds to wait for END at most")
    args = p.parse_args(argv)
    raise_nofile()
    run_role(client_main(args))


if __name__ == "__main__":
    main()
