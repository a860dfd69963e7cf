"""Scaling benchmark: 1 worker against 2 workers at N clients, and the latency of a backplane hop.

**Workers.** A server process (``python -m bench._server --impl fastws --workers W``: a
``fastws.Server(workers=W)``; with W > 1 that process is the parent and the clients are
served by W worker processes) and the load generator ``bench/_client.py`` (N raw
connections, 16 of them parse every frame, check ``seq`` and record the latency from
the ``ts`` in each message) run side by side, *not* pinned: with 2 workers the server
needs both cores, and so does the load generator. For every phase the server
broadcasts M messages of 100 bytes of JSON, B per loop turn; the phase ends when every
client has all M. Reported: deliveries/s (N*M over the phase), server CPU (parent and
workers, from /proc/<pid>/stat) per delivery, the load generator's CPU, and the
machine's busy time over the phase, so that the load generator's share is visible.

**Backplane hop.** Two ``fastws serve --backplane URL`` processes A and B; one client on
each (in this process). A's standard input gets ``{"seq":i,"ts":time_ns}`` lines at a
fixed rate; both clients record the arrival time of every message. The hop is what B's
client sees on top of A's client, message by message (p50/p99 of the difference), for
Redis and for NATS.

Run: ``python -m bench.bench_scale [--clients 5000] [--workers 1,2] [--backplanes redis,nats]
[--json out.json]``; ``--quick`` for a short run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any

from bench._child import Child, ChildError, python_role, start_clients, wait_count
from bench._util import (
    FRAME_LEN,
    env_info,
    format_env,
    machine_busy,
    markdown_table,
    median,
    percentile,
    proc_cpu_s,
)

HZ = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- workers
def run_workers(n: int, workers: int, messages: int, burst: int, reps: int, rate: float = 0.0) -> list[dict[str, Any]]:
    role = ["--impl", "fastws", "--workers", str(workers), "--max-connections", "20000"]
    srv = Child(f"server-w{workers}", python_role("bench._server", *role))
    ready = srv.recv("ready", 60)
    port, pids = ready["port"], ready["pids"]
    try:
        cli = start_clients("client", port, n, "--sample", "16", "--concurrency", "200", timeout=180)
    except ChildError:
        srv.close()
        raise
    results = []
    try:
        wait_count(srv, n, 60)
        for rep in range(reps):
            cli.request("armed", 10, cmd="expect", messages=messages, timeout=120)
            st0 = srv.request("stats", 10, cmd="stats")
            cpu0, busy0 = proc_cpu_s(pids), machine_busy()
            sent = srv.request("sent", 300, cmd="run", messages=messages, burst=burst, rate=rate)
            done = cli.recv("done", 300)
            cpu1, busy1 = proc_cpu_s(pids), machine_busy()
            st1 = srv.request("stats", 10, cmd="stats")
            writes = (st1["flushes"] - st0["flushes"]) or 1
            if not done["ok"]:
                raise RuntimeError(f"phase failed: {done}")
            wall = (done["t_done"] - sent["t_start"]) / 1e9
            deliveries = n * messages
            server_cpu = cpu1 - cpu0
            busy = (busy1[0] - busy0[0]) / HZ
            cores = (busy1[1] - busy0[1]) / HZ  # wall x cores
            results.append({
                "workers": workers, "clients": n, "messages": messages, "burst": burst, "rep": rep,
                "mode": f"paced {rate:g}/s" if rate else "max", "frames_per_write": workers * messages / writes,
                "wall_s": wall, "deliveries_per_s": deliveries / wall,
                "server_cpu_s": server_cpu, "server_cpu_ns_per_delivery": server_cpu / deliveries * 1e9,
                "client_cpu_s": done["client_cpu_s"], "machine_busy_s": busy,
                "machine_capacity_s": cores,
                "client_share_of_busy": done["client_cpu_s"] / busy if busy else None,
                "p50_us": done["p50_us"], "p99_us": done["p99_us"],
            })
            print(f"  workers={workers} rep {rep}: {deliveries / wall / 1e6:.2f} M deliveries/s, "
                  f"server {server_cpu / deliveries * 1e9:.0f} ns CPU/delivery, load generator "
                  f"{done['client_cpu_s']:.2f}s CPU of {busy:.2f}s busy ({cores:.2f}s capacity)", file=sys.stderr)
    finally:
        cli.close()
        srv.close()
    return results


# --------------------------------------------------------------------------- backplane hop
async def _hop(broker_url: str, messages: int, rate: float) -> dict[str, Any]:
    from websockets.asyncio.client import connect  # noqa: PLC0415

    channel = f"bench-{os.getpid()}-{time.monotonic_ns()}"

    async def node() -> tuple[asyncio.subprocess.Process, int]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "--log-level", "WARNING", "serve", "--host", "127.0.0.1", "--port", "0",
            "--backplane", broker_url, "--backplane-channel", channel, "--heartbeat-interval", "3600",
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("fastws serve exited")
                m = re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", line)
                if m:
                    return proc, int(m.group(1))

    (pa, port_a), (pb, port_b) = await asyncio.gather(node(), node())
    arrivals: dict[str, dict[int, int]] = {"a": {}, "b": {}}
    try:
        async with connect(f"ws://127.0.0.1:{port_a}/") as wa, connect(f"ws://127.0.0.1:{port_b}/") as wb:
            async def reader(ws: Any, key: str) -> None:
                out = arrivals[key]
                async for msg in ws:
                    now = time.time_ns()
                    if msg.startswith("{"):
                        out[json.loads(msg)["seq"]] = now

            tasks = [asyncio.create_task(reader(wa, "a")), asyncio.create_task(reader(wb, "b"))]
            # both clients registered: warm-up lines until both get one
            async with asyncio.timeout(20):
                while not (arrivals["a"] and arrivals["b"]):
                    pa.stdin.write(b'{"seq":-1,"ts":0}\n')
                    await pa.stdin.drain()
                    await asyncio.sleep(0.05)
            sent_at: dict[int, int] = {}
            t0 = time.monotonic()
            for i in range(messages):
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent_at[i] = time.time_ns()
                pa.stdin.write(b'{"seq":%d,"ts":%d}\n' % (i, sent_at[i]))
                await pa.stdin.drain()
            async with asyncio.timeout(20):
                while len(arrivals["b"]) < messages + 1 or len(arrivals["a"]) < messages + 1:
                    await asyncio.sleep(0.05)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for p in (pa, pb):
            if p.returncode is None:
                p.terminate()
            p.stdin.close()
            await p.wait()
            await p.stderr.read()
    hop = [(arrivals["b"][i] - arrivals["a"][i]) / 1000 for i in range(messages)]
    direct = [(arrivals["a"][i] - sent_at[i]) / 1000 for i in range(messages)]
    via = [(arrivals["b"][i] - sent_at[i]) / 1000 for i in range(messages)]
    return {
        "broker": broker_url, "messages": messages, "rate": rate,
        "hop_p50_us": percentile(hop, 50), "hop_p99_us": percentile(hop, 99),
        "direct_p50_us": percentile(direct, 50), "direct_p99_us": percentile(direct, 99),
        "via_backplane_p50_us": percentile(via, 50), "via_backplane_p99_us": percentile(via, 99),
    }


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--burst", type=int, default=10, help="messages per loop turn (default 10)")
    p.add_argument("--deliveries", type=int, default=2_500_000, help="deliveries per phase (default 2.5M)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--paced-rate", type=float, default=100.0,
                   help="also run paced: this many messages/s, one per loop turn, for --paced-seconds (0: skip)")
    p.add_argument("--paced-seconds", type=float, default=5.0)
    p.add_argument("--backplanes", default="redis://127.0.0.1:6379/0,nats://127.0.0.1:4222",
                   help="broker URLs for the hop latency ('' to skip)")
    p.add_argument("--hop-messages", type=int, default=3000)
    p.add_argument("--hop-rate", type=float, default=1000.0, help="messages/s for the hop latency")
    p.add_argument("--quick", action="store_true", help="reps 1, 1M deliveries, 1000 hop messages")
    p.add_argument("--json", help="write the results as JSON lines to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.deliveries, args.hop_messages = 1, 1_000_000, 1000
    env = env_info()
    print(format_env(env), file=sys.stderr)
    rows: list[dict[str, Any]] = []
    messages = max(32, math.ceil(args.deliveries / args.clients / args.burst) * args.burst)
    for w in [int(x) for x in args.workers.split(",") if x]:
        print(f"workers={w}: N={args.clients}, M={messages}, burst {args.burst}, frame {FRAME_LEN} B",
              file=sys.stderr)
        rows += run_workers(args.clients, w, messages, args.burst, args.reps)
        if args.paced_rate:
            pm = int(args.paced_rate * args.paced_seconds)
            print(f"workers={w}: paced {args.paced_rate:g} messages/s x {pm}", file=sys.stderr)
            rows += run_workers(args.clients, w, pm, 1, args.reps, args.paced_rate)
    hops = []
    for broker in [b for b in args.backplanes.split(",") if b]:
        print(f"backplane hop: {broker}, {args.hop_messages} messages at {args.hop_rate:g}/s", file=sys.stderr)
        try:
            hops.append(asyncio.run(_hop(broker, args.hop_messages, args.hop_rate)))
        except Exception as exc:  # noqa: BLE001 - a missing broker skips its row
            print(f"  skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    table = []
    for mode, w in sorted({(r["mode"], r["workers"]) for r in rows}):
        rs = [r for r in rows if r["workers"] == w and r["mode"] == mode]
        table.append([
            mode, str(w), f"{median([r['frames_per_write'] for r in rs]):.1f}",
            f"{median([r['deliveries_per_s'] for r in rs]) / 1e6:.2f}",
            f"{median([r['server_cpu_ns_per_delivery'] for r in rs]):.0f}",
            f"{median([r['server_cpu_s'] / r['wall_s'] for r in rs]):.2f}",
            f"{median([r['client_cpu_s'] / r['wall_s'] for r in rs]):.2f}",
            f"{median([r['machine_busy_s'] / r['machine_capacity_s'] for r in rs]) * 100:.0f}%",
            f"{median([r['p50_us'] for r in rs]) / 1000:.1f}", f"{median([r['p99_us'] for r in rs]) / 1000:.1f}",
        ])
    print()
    print(f"N={args.clients} clients, {FRAME_LEN} B frames; max: {messages} messages, {args.burst} per loop turn "
          f"of the producer; median of {args.reps}")
    print(markdown_table(["mode", "workers", "frames/write", "M deliveries/s", "server CPU ns/delivery", "server cores used",
                          "load-gen cores used", "machine busy", "p50 ms", "p99 ms"], table))
    if hops:
        print()
        print(markdown_table(
            ["backplane", "hop p50 us", "hop p99 us", "direct p50 us", "via broker p50 us", "via broker p99 us"],
            [[h["broker"], f"{h['hop_p50_us']:.0f}", f"{h['hop_p99_us']:.0f}", f"{h['direct_p50_us']:.0f}",
              f"{h['via_backplane_p50_us']:.0f}", f"{h['via_backplane_p99_us']:.0f}"] for h in hops]))
    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps({"env": env}) + "\n")
            for r in rows + hops:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
