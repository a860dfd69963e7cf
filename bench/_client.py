"""Load client role: ``python -m bench._client --port P [--clients N] [--sample S] [--cafile CA]``.

A cheap load generator: N raw TCP (or TLS) connections on uvloop with a hand-written
upgrade request. Most connections only count bytes; "sample" connections parse every
frame (``fastws.frames``), check ``seq`` continuity, record the delivery latency from
the ``ts`` embedded in each message and answer pings. Commands on stdin (JSON lines):

* ``connect`` (``total``) -> ``connected``: open connections up to ``total``;
* ``close_all`` -> ``closed``;
* ``expect`` (``messages``, ``timeout``) -> ``armed``; then ``done`` when every connection
  has all M frames (or at the timeout), with missing/extra bytes, gaps and latency percentiles;
* ``quit`` -> ``bye``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import ssl
import time
from typing import Any

from bench._util import FRAME_LEN, emit, percentile, raise_nofile, run_role, stdin_commands, upgrade_request
from fastws.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, encode_client_frame, read_frames

#: Pongs are masked with a zero key: the server unmasks them all the same.
ZERO_KEY = bytes(4)


class Conn(asyncio.Protocol):
    """One client connection. Counts bytes, or (sample) parses frames and records latency."""

    __slots__ = ("client", "sample", "tr", "hs", "upgraded", "got", "target", "buf", "last_seq", "done")

    def __init__(self, client: LoadClient, sample: bool) -> None:
        self.client = client
        self.sample = sample
        self.tr: asyncio.Transport | None = None
        self.hs: bytearray | None = bytearray()
        self.upgraded: asyncio.Future[None] = client.loop.create_future()
        self.got = 0  # bytes (counting) or data frames (sample), cumulative
        self.target = 0
        self.buf = bytearray()
        self.last_seq = -1
        self.done = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        self.tr.write(self.client.handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hs is None:
            self.client.lost += 1
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.hs is not None:
            self.hs += data
            end = self.hs.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.hs[:end])
            data = bytes(self.hs[end + 4 :])
            self.hs = None
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(
                    ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                )
                return
            self.upgraded.set_result(None)
            if not data:
                return
        if not self.sample:
            self.got += len(data)
            if not self.done and self.got >= self.target:
                self.done = True
                self.client.conn_done()
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.time_ns()
        client = self.client
        frames, pos = read_frames(buf)
        for f in frames:
            if f.opcode in (OP_TEXT, OP_BINARY):
                try:
                    msg = client.decode(f.payload)
                    client.latencies.append(now - msg.ts)
                    if self.last_seq >= 0 and msg.seq != self.last_seq + 1:
                        client.gaps += 1
                    self.last_seq = msg.seq
                except Exception:  # noqa: BLE001
                    client.bad_frames += 1
                self.got += 1
            elif f.opcode == OP_PING:
                assert self.tr is not None
                self.tr.write(encode_client_frame(OP_PONG, f.payload, key=ZERO_KEY))
                client.pings += 1
            elif f.opcode == OP_CLOSE:
                client.closes += 1
            else:
                client.other_frames += 1
        if pos:
            del buf[:pos]
        if not self.done and self.got >= self.target:
            self.done = True
            client.conn_done()


class LoadClient:
    def __init__(self, args: argparse.Namespace) -> None:
        import msgspec  # noqa: PLC0415

        class Msg(msgspec.Struct):
            seq: int
            ts: int

        self.loop = asyncio.get_running_loop()
        self.args = args
        self.ssl = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
        self.handshake = upgrade_request(args.port)
        self.decode = msgspec.json.Decoder(Msg).decode
        self.conns: list[Conn] = []
        self.sample_idx: set[int] | None = None  # None = all
        self.latencies: list[int] = []
        self.gaps = self.bad_frames = self.pings = self.closes = self.other_frames = self.lost = 0
        self.pending = 0
        self.phase_active = False
        self.t_done = 0
        self.timer: asyncio.TimerHandle | None = None
        self.ru0: Any = None

    def set_sampling(self, n_total: int, n_sample: int) -> None:
        if n_sample < 0 or n_sample >= n_total:
            self.sample_idx = None
        else:
            step = n_total / max(n_sample, 1)
            self.sample_idx = {int(i * step) for i in range(n_sample)}

    async def connect(self, total: int) -> dict[str, Any]:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(self.args.concurrency)
        errors: list[str] = []
        tls = {"ssl": self.ssl, "server_hostname": "127.0.0.1"} if self.ssl else {}

        async def one(i: int) -> None:
            sample = self.sample_idx is None or i in self.sample_idx
            async with sem:
                for attempt in range(3):
                    conn = Conn(self, sample)
                    try:
                        await asyncio.wait_for(
                            self.loop.create_connection(lambda c=conn: c, "127.0.0.1", self.args.port, **tls), 20
                        )
                        await asyncio.wait_for(conn.upgraded, 20)
                    except Exception as exc:  # noqa: BLE001
                        if conn.tr is not None:
                            conn.tr.abort()
                        if attempt == 2:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    self.conns.append(conn)
                    return

        await asyncio.gather(*(one(i) for i in range(len(self.conns), total)))
        return {"n": len(self.conns), "seconds": time.monotonic() - t0, "errors": errors[:5], "n_errors": len(errors)}

    async def close_all(self) -> None:
        for c in self.conns:
            if c.tr is not None:
                c.tr.close()
        self.conns.clear()
        await asyncio.sleep(0.2)

    def arm(self, messages: int, timeout: float) -> None:
        self.latencies = []
        self.gaps = self.bad_frames = self.closes = self.other_frames = 0
        self.pending = 0
        for c in self.conns:
            c.target += messages if c.sample else messages * FRAME_LEN
            c.done = c.got >= c.target
            if not c.done:
                self.pending += 1
        self.phase_active = True
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.timer = self.loop.call_later(timeout, self.finish, True)
        if self.pending == 0:
            self.loop.call_soon(self.finish, False)

    def conn_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.phase_active:
            self.t_done = time.monotonic_ns()
            self.finish(False)

    def finish(self, timed_out: bool) -> None:
        if not self.phase_active:
            return
        self.phase_active = False
        if self.timer is not None:
            self.timer.cancel()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        lat_us = [x / 1000.0 for x in self.latencies]
        counting = [c for c in self.conns if not c.sample]
        missing = sum(max(0, c.target - c.got) for c in counting)
        extra = sum(max(0, c.got - c.target) for c in counting)
        emit(
            event="done",
            ok=not timed_out and missing == 0 and extra == 0 and self.gaps == 0 and self.bad_frames == 0,
            timed_out=timed_out,
            t_done=self.t_done if not timed_out else time.monotonic_ns(),
            conns_pending=self.pending,
            missing_bytes=missing,
            missing_frames=sum(max(0, c.target - c.got) for c in self.conns if c.sample),
            extra_bytes=extra,
            gaps=self.gaps,
            bad_frames=self.bad_frames,
            closes=self.closes,
            other_frames=self.other_frames,
            pings=self.pings,
            lost=self.lost,
            samples=len(lat_us),
            p50_us=percentile(lat_us, 50),
            p90_us=percentile(lat_us, 90),
            p99_us=percentile(lat_us, 99),
            p999_us=percentile(lat_us, 99.9),
            max_us=max(lat_us) if lat_us else None,
            client_cpu_s=(ru1.ru_utime - self.ru0.ru_utime) + (ru1.ru_stime - self.ru0.ru_stime),
        )


async def client_main(args: argparse.Namespace) -> None:
    raise_nofile()
    client = LoadClient(args)
    client.set_sampling(args.clients, args.sample)
    if args.clients:
        emit(event="connected", **await client.connect(args.clients))
    else:
        emit(event="ready")
    async for cmd in stdin_commands():
        c = cmd["cmd"]
        if c == "connect":
            emit(event="connected", **await client.connect(int(cmd["total"])))
        elif c == "close_all":
            await client.close_all()
            emit(event="closed")
        elif c == "expect":
            client.arm(int(cmd["messages"]), float(cmd["timeout"]))
            emit(event="armed")
        elif c == "quit":
            for conn in client.conns:
                if conn.tr is not None:
                    conn.tr.abort()
            emit(event="bye")
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._client", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=0, help="connections to open at start")
    p.add_argument("--sample", type=int, default=16, help="connections that parse frames (-1: all)")
    p.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    p.add_argument("--cafile", help="connect with TLS, trusting this CA (PEM)")
    args = p.parse_args(argv)
    run_role(client_main(args))


if __name__ == "__main__":
    main()
