"""Soak: hold many connections with the heartbeat on, broadcast for minutes, check every message.

    python -m bench.soak --connections 10000 --seconds 120 [--rate 5] [--per-tick 1]
                         [--procs 4] [--workers 1] [--heartbeat 5] [--json FILE]

This process runs the fastws server (uvloop); with ``--workers N`` it is the parent of N
worker processes sharing the port (``fastws.Server(workers=N)``, SO_REUSEPORT): it
frames every message once and pipes it to the workers, which hold the connections.
``--procs`` client processes each open
their share of the connections from their own source address (127.0.0.2, 127.0.0.3,
...), answer every PING with a PONG, and check the ``seq`` of every message on every
connection. The server broadcasts ``--rate`` messages per second (``--per-tick`` per
loop turn) for ``--seconds``, then ``"END"``.

Reported: server memory per connection (RSS delta / N after connecting, and after
the run; with workers the RSS of the parent and of every worker added up), server CPU
per delivery (over the broadcast phase, heartbeat included; with workers the parent's
and every worker's), how the kernel spread the connections over the workers, delivery latency from the timestamp in each message, heartbeat timeouts,
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
import math
import os
import sys
import time
from typing import Any

from bench._child import python_role
from bench._util import REPO_ROOT, cpu_s, machine_busy, proc_cpu_s, raise_nofile

PAD = "x" * 60


#: Ephemeral ports one source address has (net.ipv4.ip_local_port_range), less a margin.
def ports_per_source() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return hi - lo + 1 - 200
    except (OSError, ValueError):
        return 28_000


def proc_rss(pid: int) -> int:
    """VmRSS of one process, bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ServerProcs:
    """The server's processes: this one, and its workers when ``--workers`` > 1."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def worker_pids(self) -> list[int]:
        pool = self.server.workers
        return [p for p in pool.pids if p is not None] if pool is not None else []

    def rss_each(self) -> list[int]:
        return [proc_rss(os.getpid()), *(proc_rss(p) for p in self.worker_pids())]

    def rss(self) -> int:
        """Bytes resident in the parent and every worker, added up."""
        return sum(self.rss_each())

    def cpu_each(self) -> list[float]:
        return [cpu_s(), *(proc_cpu_s([p]) for p in self.worker_pids())]

    def cpu(self) -> float:
        return sum(self.cpu_each())


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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

    n, nw = args.connections, args.workers
    load_before = os.getloadavg()[0]
    limit = raise_nofile()
    # each process holds its share of the descriptors; SO_REUSEPORT spreads by a hash of the
    # 4-tuple, so a worker gets n/nw give or take a few sqrt(n): 5 % and 200 are a wide margin
    per_server = n + 200 if nw == 1 else math.ceil(n / nw * 1.05) + 200
    if limit < per_server:
        sys.exit(f"soak: RLIMIT_NOFILE is {limit}; {n} connections on {nw} server process(es) need about "
                 f"{per_server} each (use more --workers)")
    per_client = math.ceil(n / args.procs)
    if limit < per_client + 100:
        sys.exit(f"soak: RLIMIT_NOFILE is {limit}; {n} connections from {args.procs} client processes need "
                 f"{per_client + 100} in each (use more --procs)")
    if per_client > ports_per_source():
        sys.exit(f"soak: {per_client} connections from one source address exceed its {ports_per_source()} "
                 "ephemeral ports (use more --procs)")
    server = fastws.Server(host="127.0.0.1", port=0, max_connections=n + 100, backlog=4096,
                           heartbeat_interval=args.heartbeat, heartbeat_timeout=args.heartbeat,
                           max_queued_bytes=1 << 20, workers=nw)
    await server.start()
    sp = ServerProcs(server)
    rss = sp.rss
    print(f"soak: fastws on 127.0.0.1:{server.port} ({nw} worker(s): pids {sp.worker_pids() or [os.getpid()]}), "
          f"{n} connections from {args.procs} processes, heartbeat {args.heartbeat:g}s, "
          f"{args.rate:g} msg/s x {args.seconds:g}s", file=sys.stderr, flush=True)
    trim()
    await asyncio.sleep(1)
    rss0_each = sp.rss_each()
    rss0 = sum(rss0_each)

    # -- connect
    share = [n // args.procs + (1 if i < n % args.procs else 0) for i in range(args.procs)]
    deadline = args.seconds + 120
    procs = []
    for i, k in enumerate(share):
        argv = python_role("bench._soak_client", "--port", str(server.port), "--n", str(k),
                           "--source", f"127.0.0.{i + 2}", "--deadline", str(deadline))
        p = await asyncio.create_subprocess_exec(*argv, cwd=REPO_ROOT, stdin=asyncio.subprocess.PIPE,
                                                 stdout=asyncio.subprocess.PIPE, limit=1 << 24)
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
        await asyncio.sleep(2)  # also two stats reports of every worker
        rss_conn_each = sp.rss_each()
        rss_conn = sum(rss_conn_each)
        spread = [w["connections"] for w in server.stats().get("per_worker", [])]
        print(f"soak: {n} connected in {connect_s:.1f}s; RSS +{(rss_conn - rss0) / 2**20:.1f} MiB "
              f"({(rss_conn - rss0) / n / 1024:.2f} KiB per connection)"
              + (f"; per worker {spread}" if spread else ""), file=sys.stderr, flush=True)

        # -- broadcast
        s0, c0_each, t_start = server.stats(), sp.cpu_each(), time.monotonic()
        c0 = sum(c0_each)
        m0 = machine_busy()
        cpu_s_all = sp.cpu
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
                      f"cpu={100 * (cpu_s_all() - c0) / (now - t_start):.0f}%", file=sys.stderr, flush=True)
            if now - t_start > args.seconds + 60:
                raise TimeoutError("the broadcast phase overran by a minute")
        broadcast_s = time.monotonic() - t_start
        held = server.connection_count
        server.flush()
        drained = True
        try:
            async with asyncio.timeout(60):  # let the backlog drain before the CPU reading
                if nw == 1:
                    while any(c.write_buffer_size() for c in server.clients):
                        await asyncio.sleep(0.05)
                else:  # the workers' clients are not visible here: wait for their counts (reported every 0.5 s)
                    want = s0["deliveries"] + held * total
                    while server.stats()["deliveries"] < want:
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(1.0)
        except TimeoutError:  # reported (and the run fails), but the clients still get END and report
            drained = False
            print("soak: the backlog did not drain in 60 s", file=sys.stderr, flush=True)
        c1_each, s1 = sp.cpu_each(), server.stats()
        c1 = sum(c1_each)
        m1 = machine_busy()
        rss_end_each = sp.rss_each()
        rss_end = sum(rss_end_each)
        server.broadcast("END")
        reports = [await p.read(timeout=120) for p in procs]
        async with asyncio.timeout(60):
            while server.connection_count:
                await asyncio.sleep(0.05)
        if nw > 1:
            await asyncio.sleep(1.5)  # the workers' last stats reports
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
    mib = [round(x / 2**20, 1) for x in rss0_each]
    result = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m bench.soak " + " ".join(args.argv),
        "cpus": os.cpu_count(),
        "load_average_before": round(load_before, 2),
        "machine_cpu_busy_pct": round(100 * (m1[0] - m0[0]) / max(m1[1] - m0[1], 1), 1),
        "connections": n, "procs": args.procs, "workers": nw, "seconds": round(broadcast_s, 1),
        "rate": args.rate, "per_tick": args.per_tick, "heartbeat_s": args.heartbeat, "messages": total,
        "connect_s": round(connect_s, 1),
        "connections_held_at_end": held,
        "drained_in_60s": drained,
        "connections_per_worker": spread or [n],
        "rss_baseline_mib": round(rss0 / 2**20, 1),
        "rss_baseline_mib_each": mib,
        "rss_connected_mib_each": [round(x / 2**20, 1) for x in rss_conn_each],
        "rss_end_mib_each": [round(x / 2**20, 1) for x in rss_end_each],
        "kib_per_connection": round((rss_conn - rss0) / n / 1024, 2),
        "kib_per_connection_after_run": round((rss_end - rss0) / n / 1024, 2),
        "deliveries": deliveries,
        "expected_deliveries": n * total,
        "received_by_clients": received,
        "server_cpu_s": round(c1 - c0, 2),
        "server_cpu_s_each": [round(b - a, 2) for a, b in zip(c0_each, c1_each, strict=False)],
        "server_cpu_pct": round(100 * (c1 - c0) / broadcast_s, 1),
        "server_cpu_us_per_delivery": round((c1 - c0) / deliveries * 1e6, 3) if deliveries else None,
        "client_cpu_s": round(sum(r["cpu_s"] for r in reports), 2),
        "client_cpu_us_per_delivery": round(sum(r["cpu_s"] for r in reports) / max(received, 1) * 1e6, 3),
        "latency_ms_p50_max_over_procs": max((x["p50"] for x in lat), default=None),
        "latency_ms_p99_max_over_procs": max((x["p99"] for x in lat), default=None),
        "heartbeat_timeouts": final["heartbeat_timeouts"],
        "pings_answered": sum(r["pings"] for r in reports),
        "slow_disconnects": final["slow_disconnects"],
        "disconnects": final["disconnect_reasons"],
        "fd_limit_reached": final.get("fd_limit_reached", 0),
        "worker_restarts": final.get("worker_restarts", 0),
        "worker_frames_dropped": final.get("worker_frames_dropped", 0),
        "clients_lost_early": sum(r["lost_early"] for r in reports),
        "clients_with_gaps": sum(r["conns_with_gaps"] for r in reports),
        "clients_without_end": sum(r["conns_without_end"] for r in reports),
        "clients_that_missed_a_message": missed,
    }
    ok = (missed == 0 and received == n * total == deliveries and final["heartbeat_timeouts"] == 0
          and result["clients_lost_early"] == 0 and held == n and drained)
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
    p.add_argument("--workers", type=int, default=1,
                   help="server processes sharing the port (fastws workers: N; the RSS and CPU of all are added)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval and timeout, seconds")
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    import uvloop

    if not 0 < args.seconds <= 900:
        p.error("--seconds must be in (0, 900]")
    if not 1 <= args.procs <= 200:
        p.error("--procs must be 1-200")
    if not 1 <= args.workers <= 64:
        p.error("--workers must be 1-64")
    return uvloop.run(server_main(args))


if __name__ == "__main__":
    sys.exit(main())
