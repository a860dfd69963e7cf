"""Blueprint runner overhead: items/s through ``Source -> Transformer -> WebSocket`` vs. the core direct.

One server (this process, uvloop, pinned to core 0) runs a blueprint system
``src (Source) -> shape (Transformer, set: {t: 1}) -> ws (WebSocket)``; one
load-generator process (``bench._client``, pinned to core 1) opens N
connections to it. Then, repetitions interleaved, each phase delivers M
messages of 100 bytes of JSON to every client, either

* ``pipeline``: the Source emits M items (its ``data_delay: 0`` path), the
  Transformer adds ``"t": 1``, the WebSocket component broadcasts them; or
* ``direct``: the same (already transformed) items go to ``Server.broadcast``
  of the same WebSocket component, ``--burst`` per loop turn.

A phase ends when every client has received all M frames. Reported: items/s
(M / wall time), server CPU µs per item (getrusage), p50/p99 delivery latency
(16 sampled connections), the average number of items per core flush, and the
runner's overhead per item (pipeline minus direct, wall and CPU).

Run: ``python -m bench.bench_pipeline [--clients 1000] [--messages 2000] [--reps 3] [--json out.jsonl]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from bench._child import Child, python_role
from bench._util import PAYLOAD_LEN, cpu_s, env_info, format_env, make_message, markdown_table, median
from fastws.blueprint import System
from fastws.components import Source, register_component

SERVER_CORE = 0
CLIENT_CORE = 1
_T_FIELD_LEN = len(',"t":1')  # what the Transformer adds to each item


def source_message(seq: int) -> dict[str, Any]:
    """``{"seq", "ts", "pad"}`` sized so that, with ``"t": 1`` added, it encodes to PAYLOAD_LEN bytes."""
    return make_message(seq, extra=_T_FIELD_LEN)


class BenchSource(Source):
    """The built-in Source's fast path (``data_delay: 0``), one phase per ``go`` value."""

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(name, {"data_count": None, "data_delay": 0})
        self.go: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    def messages(self, seq0: int, count: int) -> Iterator[dict[str, Any]]:
        return (source_message(seq) for seq in range(seq0, seq0 + count))

    async def process(self) -> None:
        try:
            while True:
                seq0, count = await self.go.get()
                if count == 0:
                    return
                await self._emit_fast(self.messages(seq0, count))
        finally:
            await self.close_outputs()


def blueprint(clients: int) -> dict[str, Any]:
    return {
        "system": {
            "name": "bench_pipeline",
            "components": [
                {"name": "src", "type": "BenchSource"},
                {"name": "shape", "type": "Transformer", "config": {"set": {"t": 1}}},
                {
                    "name": "ws",
                    "type": "WebSocket",
                    "config": {
                        "host": "127.0.0.1",
                        "port": 0,
                        "max_connections": clients + 100,
                        "heartbeat_interval": 3600,
                        "max_queued_bytes": 64 * 1024 * 1024,
                    },
                },
            ],
            "bindings": [
                {"from": "src.output", "to": "shape.input"},
                {"from": "shape.output", "to": "ws.input"},
            ],
        }
    }


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    register_component("BenchSource", BenchSource)
    system = System.from_dict(blueprint(args.clients))
    await system.start()
    ws: Any = system["ws"]
    src: Any = system["src"]
    flushes = {"n": 0, "items": 0}
    original = ws._broadcast

    def counting_broadcast(items: list[Any]) -> Any:
        flushes["n"] += 1
        flushes["items"] += len(items)
        return original(items)

    ws._broadcast = counting_broadcast
    server = ws.server
    client = Child(
        "client",
        python_role("bench._client", "--port", str(system.port("ws")), "--clients", str(args.clients)),
        core=CLIENT_CORE,
    )
    phases: list[dict[str, Any]] = []
    try:
        conn = await asyncio.to_thread(client.recv, "connected", 120)
        if conn["n"] != args.clients:
            raise RuntimeError(f"only {conn['n']} of {args.clients} clients connected: {conn['errors']}")
        async with asyncio.timeout(30):
            while ws.connection_count < args.clients:
                await asyncio.sleep(0.05)
        seq = 0
        m = args.messages
        for rep in range(args.reps + 1):  # rep 0 warms up
            for mode in ("pipeline", "direct") if rep % 2 == 0 else ("direct", "pipeline"):
                await asyncio.to_thread(client.request, "armed", 30, cmd="expect", messages=m, timeout=120)
                flushes.update(n=0, items=0)
                done = asyncio.ensure_future(asyncio.to_thread(client.recv, "done", 180))
                c0, t0 = cpu_s(), time.monotonic_ns()
                if mode == "pipeline":
                    src.go.put_nowait((seq, m))
                else:
                    for start in range(seq, seq + m, args.burst):
                        for s in range(start, min(seq + m, start + args.burst)):
                            item = source_message(s)
                            item["t"] = 1
                            server.broadcast(item)
                        await asyncio.sleep(0)
                result = await done
                c1 = cpu_s()
                seq += m
                if not result["ok"]:
                    raise RuntimeError(f"{mode} phase failed: {result}")
                wall = (result["t_done"] - t0) / 1e9
                phase = {
                    "mode": mode,
                    "rep": rep,
                    "clients": args.clients,
                    "messages": m,
                    "items_per_s": m / wall,
                    "wall_us_per_item": wall * 1e6 / m,
                    "cpu_us_per_item": (c1 - c0) * 1e6 / m,
                    "p50_ms": (result["p50_us"] or 0) / 1000,
                    "p99_ms": (result["p99_us"] or 0) / 1000,
                    "items_per_flush": flushes["items"] / flushes["n"]
                    if mode == "pipeline" and flushes["n"]
                    else float(args.burst),
                }
                if rep > 0:
                    phases.append(phase)
                if args.json:
                    print(json.dumps({"event": "phase", **phase}), file=args.json, flush=True)
    finally:
        client.close()
        src.go.put_nowait((0, 0))
        await system.stop()
    return phases


def summarize(phases: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for mode in ("direct", "pipeline"):
        rows = [p for p in phases if p["mode"] == mode]
        out[mode] = {
            k: median([r[k] for r in rows]) or 0.0
            for k in (
                "items_per_s",
                "wall_us_per_item",
                "cpu_us_per_item",
                "p50_ms",
                "p99_ms",
                "items_per_flush",
            )
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1000, help="connected clients (default 1000)")
    p.add_argument("--messages", type=int, default=2000, help="items per phase (default 2000)")
    p.add_argument(
        "--reps", type=int, default=3, help="measured repetitions per mode, after one warm-up (default 3)"
    )
    p.add_argument(
        "--burst", type=int, default=256, help="direct mode: items broadcast per loop turn (default 256)"
    )
    p.add_argument("--json", type=argparse.FileType("w"), metavar="PATH", help="also write JSON lines here")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {SERVER_CORE})
    import uvloop

    env = env_info()
    if args.json:
        print(json.dumps({"event": "env", **env}), file=args.json, flush=True)
    phases = uvloop.run(run(args))
    s = summarize(phases)
    d, pl = s["direct"], s["pipeline"]
    rows = []
    for mode, r in (("direct (Server.broadcast)", d), ("Source -> Transformer -> WebSocket", pl)):
        rows.append(
            [
                mode,
                f"{r['items_per_s']:,.0f}",
                f"{r['wall_us_per_item']:.1f}",
                f"{r['cpu_us_per_item']:.1f}",
                f"{r['items_per_flush']:.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
            ]
        )
    print(format_env(env))
    print(
        f"\n{args.clients} clients, {args.messages} items of {PAYLOAD_LEN} bytes per phase, median of {args.reps} reps\n"
    )
    print(
        markdown_table(
            ["path", "items/s", "wall µs/item", "server CPU µs/item", "items/flush", "p50 ms", "p99 ms"], rows
        )
    )
    overhead_wall = pl["wall_us_per_item"] - d["wall_us_per_item"]
    overhead_cpu = pl["cpu_us_per_item"] - d["cpu_us_per_item"]
    print(
        f"\nrunner overhead per item: {overhead_wall:+.2f} µs wall, {overhead_cpu:+.2f} µs server CPU "
        f"({pl['items_per_s'] / d['items_per_s']:.0%} of direct throughput)"
    )
    if args.json:
        print(json.dumps({"event": "summary", **{f"{m}_{k}": v for m, r in s.items() for k, v in r.items()},
                          "overhead_wall_us": overhead_wall, "overhead_cpu_us": overhead_cpu}), file=args.json)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
