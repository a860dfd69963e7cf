"""Soak: hold many connections with the heartbeat on, broadcast for minutes, check every message.

    python -m bench.soak --connections 10000 --seconds 120 [--rate 5] [--per-tick 1]
                         [--procs 4] [--heartbeat 5] [--json FILE]

This process runs the fastws server (uvloop). ``--procs`` client processes each open
their share of the connections from their own source address (127.0.0.2, 127.0.0.3,
...), answer every PING with a PONG, and check the ``seq`` of every message on every
connection. The server broadcasts ``--rate`` messages per second (``--per-tick`` per
loop turn) for ``--seconds``, then ``"END"``.

Reported: server memory per connection (RSS delta / N after connecting, and after
the run), server CPU per delivery (getrusage over the broadcast phase, heartbeat
included), delivery latency from the timestamp in each message, heartbeat timeouts,
disconnects, and every connection that missed or reordered a message (there must be
none). Every phase is bounded in time; the run fails loudly if a phase overruns.
Exit status 0 only if nothing was missed and nothing was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import resource
import struct
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAD = "x" * 60


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def raise_nofile(need: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def emit(**msg: Any) -> None:
    print(json.dumps(msg), flush=True)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# == client process ===========================================================================

PONG = b"\x8a\x80\x00\x00\x00\x00"  # masked PONG, empty payload, zero mask
CLOSE = b"\x88\x82\x00\x00\x00\x00\x03\xe8"  # masked CLOSE 1000


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
        transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

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
        while n - pos >= 2:
            b0, ln = buf[pos], buf[pos + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                h = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = struct.unpack_from("!Q", buf, pos + 2)[0]
                h = 10
            if n - pos < h + ln:
                break
            op = b0 & 0x0F
            start = pos + h
            pos = start + ln
            if op == 0x1:
                self._message(buf, start, pos)
            elif op == 0x9:
                self.pings += 1
                self.transport.write(PONG)
            elif op == 0x8:
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
        seq = int(buf[start + 7:comma])
        if self.expect >= 0 and seq != self.expect:
            self.gaps += 1
        self.expect = seq + 1
        owner.received += 1
        if owner.sample and self is owner.conns[0]:
            ts_end = buf.index(b",", comma + 1)
            owner.latencies.append((time.time_ns() - int(buf[comma + 6:ts_end])) / 1e6)


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
    c0 = cpu()
    # wait for "END" on every connection (the parent bounds the run; this is the backstop)
    try:
        async with asyncio.timeout(args.deadline):
            await owner.all_ended.wait()
    except TimeoutError:
        pass
    # a short grace period for closes in flight, then report
    missed = [c for c in owner.conns if c.gaps or not c.ended]
    lat = sorted(owner.latencies)
    emit(
        report=True, source=args.source, connections=len(owner.conns), upgraded=owner.upgraded,
        ended=owner.ended, received=owner.received, lost_early=owner.lost,
        conns_with_gaps=sum(1 for c in owner.conns if c.gaps), conns_without_end=sum(1 for c in owner.conns if not c.ended),
        missed_conns=len(missed), first_seq_min=min((c.expect for c in owner.conns), default=-1),
        pings=sum(c.pings for c in owner.conns), cpu_s=cpu() - c0,
        latency_ms={"p50": _pct(lat, 50), "p99": _pct(lat, 99), "max": lat[-1] if lat else None, "n": len(lat)},
        received_per_conn=sorted({c.expect for c in owner.conns}),
    )
    for c in owner.conns:
        if not c.transport.is_closing():
            c.transport.write(CLOSE)
            c.transport.close()
    await asyncio.sleep(0.5)


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# == server (this process) =====================================================================


class ClientProc:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process exited with {await self.proc.wait()}")
        return json.loads(line)


async def server_main(args: argparse.Namespace) -> int:
    import fastws

    n = args.connections
    limit = raise_nofile(n + 1000)
    if limit < n + 200:
        sys.exit(f"soak: RLIMIT_NOFILE is {limit}; {n} connections need about {n + 200}")
    server = fastws.Server(host="127.0.0.1", port=0, max_connections=n + 100, backlog=4096,
                           heartbeat_interval=args.heartbeat, heartbeat_timeout=args.heartbeat,
                           max_queued_bytes=1 << 20)
    await server.start()
    print(f"soak: fastws on 127.0.0.1:{server.port}, {n} connections from {args.procs} processes, "
          f"heartbeat {args.heartbeat:g}s, {args.rate:g} msg/s x {args.seconds:g}s", file=sys.stderr, flush=True)
    trim()
    await asyncio.sleep(1)
    rss0 = rss()

    # -- connect
    share = [n // args.procs + (1 if i < n % args.procs else 0) for i in range(args.procs)]
    deadline = args.seconds + 120
    procs = []
    for i, k in enumerate(share):
        p = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.soak", "--role", "client", "--port", str(server.port), "--n", str(k),
            "--source", f"127.0.0.{i + 2}", "--deadline", str(deadline), cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24)
        procs.append(ClientProc(p))
    t0 = time.monotonic()
    try:
        readies = [await p.read(timeout=180) for p in procs]
        assert sum(r["ready"] for r in readies) == n, readies
        async with asyncio.timeout(30):
            while server.connection_count < n:
                await asyncio.sleep(0.05)
        connect_s = time.monotonic() - t0
        trim()
        await asyncio.sleep(2)
        rss_conn = rss()
        print(f"soak: {n} connected in {connect_s:.1f}s; RSS +{(rss_conn - rss0) / 2**20:.1f} MiB "
              f"({(rss_conn - rss0) / n / 1024:.2f} KiB per connection)", file=sys.stderr, flush=True)

        # -- broadcast
        s0, c0, t_start = server.stats(), cpu(), time.monotonic()
        interval = args.per_tick / args.rate
        seq, next_t, last_print = 0, t_start, t_start
        total = int(args.rate * args.seconds)
        while seq < total:
            for _ in range(min(args.per_tick, total - seq)):
                server.broadcast({"seq": seq, "ts": time.time_ns(), "pad": PAD})
                seq += 1
            next_t += interval
            delay = next_t - time.monotonic()
            await asyncio.sleep(max(0.0, delay))
            now = time.monotonic()
            if now - last_print >= 10:
                last_print = now
                st = server.stats()
                print(f"soak: t={now - t_start:5.0f}s seq={seq} connections={st['connections']} "
                      f"heartbeat_timeouts={st['heartbeat_timeouts']} rss={rss() / 2**20:.0f} MiB "
                      f"cpu={100 * (cpu() - c0) / (now - t_start):.0f}%", file=sys.stderr, flush=True)
            if now - t_start > args.seconds + 60:
                raise TimeoutError("the broadcast phase overran by a minute")
        broadcast_s = time.monotonic() - t_start
        server.flush()
        async with asyncio.timeout(60):  # let the backlog drain before the CPU reading
            while any(c.write_buffer_size() for c in server.clients):
                await asyncio.sleep(0.05)
        c1, s1 = cpu(), server.stats()
        rss_end = rss()
        server.broadcast("END")
        reports = [await p.read(timeout=120) for p in procs]
        async with asyncio.timeout(60):
            while server.connection_count:
                await asyncio.sleep(0.05)
    finally:
        for p in procs:
            if p.proc.returncode is None:
                try:
                    async with asyncio.timeout(10):
                        await p.proc.wait()
                except TimeoutError:
                    p.proc.kill()
                    await p.proc.wait()
        final = server.stats()
        await server.stop()

    deliveries = s1["deliveries"] - s0["deliveries"]
    missed = sum(r["missed_conns"] for r in reports)
    received = sum(r["received"] for r in reports)
    lat = [r["latency_ms"] for r in reports if r["latency_ms"]["n"]]
    result = {
        "connections": n, "procs": args.procs, "seconds": round(broadcast_s, 1), "rate": args.rate,
        "per_tick": args.per_tick, "heartbeat_s": args.heartbeat, "messages": total,
        "connect_s": round(connect_s, 1),
        "rss_baseline_mib": round(rss0 / 2**20, 1),
        "kib_per_connection": round((rss_conn - rss0) / n / 1024, 2),
        "kib_per_connection_after_run": round((rss_end - rss0) / n / 1024, 2),
        "deliveries": deliveries,
        "expected_deliveries": n * total,
        "received_by_clients": received,
        "server_cpu_s": round(c1 - c0, 2),
        "server_cpu_pct": round(100 * (c1 - c0) / broadcast_s, 1),
        "server_cpu_us_per_delivery": round((c1 - c0) / deliveries * 1e6, 3) if deliveries else None,
        "client_cpu_us_per_delivery": round(sum(r["cpu_s"] for r in reports) / max(received, 1) * 1e6, 3),
        "latency_ms_p50_max_over_procs": max((x["p50"] for x in lat), default=None),
        "latency_ms_p99_max_over_procs": max((x["p99"] for x in lat), default=None),
        "heartbeat_timeouts": final["heartbeat_timeouts"],
        "pings_answered": sum(r["pings"] for r in reports),
        "slow_disconnects": final["slow_disconnects"],
        "disconnects": final["disconnect_reasons"],
        "clients_lost_early": sum(r["lost_early"] for r in reports),
        "clients_with_gaps": sum(r["conns_with_gaps"] for r in reports),
        "clients_without_end": sum(r["conns_without_end"] for r in reports),
        "clients_that_missed_a_message": missed,
    }
    ok = (missed == 0 and received == n * total == deliveries and final["heartbeat_timeouts"] == 0
          and result["clients_lost_early"] == 0)
    result["ok"] = ok
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=120.0, help="broadcast phase length (bounded: <= 900)")
    p.add_argument("--rate", type=float, default=5.0, help="messages broadcast per second")
    p.add_argument("--per-tick", type=int, default=1, help="messages published per loop turn")
    p.add_argument("--procs", type=int, default=4, help="client processes (one source address each)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval and timeout, seconds")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    p.add_argument("--role", choices=("client",), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import uvloop

    if args.role == "client":
        raise_nofile(args.n + 100)
        uvloop.run(client_main(args))
        return 0
    if not 0 < args.seconds <= 900:
        p.error("--seconds must be in (0, 900]")
    if not 1 <= args.procs <= 200:
        p.error("--procs must be 1-200")
    return uvloop.run(server_main(args))


if __name__ == "__main__":
    sys.exit(main())
