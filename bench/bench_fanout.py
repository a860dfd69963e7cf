"""Fan-out benchmark: server CPU per delivered message, deliveries/s and latency.

For every N (clients) one server process per implementation is started, pinned to
core 0, and one load-generator process per server, pinned to core 1. The load
generator opens N WebSocket connections (raw TCP, hand-written upgrade, uvloop).
Then, for every repetition (implementations interleaved, order rotated) and
every burst size K, the server broadcasts M messages of 100 bytes of JSON
(``{"seq":i,"ts":time_ns,"pad":"xx…"}``), K per loop turn with
``await asyncio.sleep(0)`` between turns. The phase ends when every client has
received all M frames. The server reports its own CPU time (getrusage
user+sys) and the busy time of its core (/proc/stat) over the phase.

Implementations: fastws, websockets, picows, and the optional uWebSockets peers
Bun and socketify (skipped with a message when absent). Roles: ``bench/_server.py``
(+ ``bench/bun_server.js``) and ``bench/_client.py``; tables in ``bench/_fanout_report.py``.

Run: ``python -m bench.bench_fanout [--quick] [--json out.json]``; see ``--help``
and bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from bench import _peers
from bench._child import Child, ChildError, run_phase, start_clients, wait_count
from bench._fanout_report import fmt, render_table, render_targets, summarize
from bench._util import FRAME_LEN, csv, csv_ints, env_info, format_env

SERVER_CORE = 0
CLIENT_CORE = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_fanout", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clients", type=csv_ints, default=[100, 1000, 5000], help="N values (default 100,1000,5000)"
    )
    p.add_argument(
        "--messages",
        type=int,
        default=0,
        help="messages per phase at one per turn (K times as many at bursts of K); "
             "default: enough for --deliveries",
    )
    p.add_argument(
        "--deliveries", type=int, default=None,
        help="target N*M per phase at one message per turn (default 250000, quick 60000); a burst of K "
             "has K times as many, so that every phase has as many loop turns (one write per client "
             "each) and lasts long enough to be measured",
    )
    p.add_argument("--burst", type=csv_ints, default=[1, 16], help="messages per loop turn (default 1,16)")
    p.add_argument("--impl", type=csv, default=list(_peers.IMPLS),
                   help="fastws,websockets,picows,bun,socketify (absent peers are skipped); also "
                        "fastws-component (await WebSocketComponent.process_item per message)")
    p.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions (default 5, quick 2); medians"
    )
    p.add_argument("--sample", type=int, default=16, help="connections per N that parse frames for latency")
    p.add_argument("--quick", action="store_true", help="~1-2 min: --reps 2 --deliveries 60000")
    p.add_argument("--json", metavar="PATH", help="write JSON lines (env, every phase, summary rows)")
    p.add_argument("--fastws-heartbeat", type=float, default=3600.0, help="fastws heartbeat_interval (s)")
    _peers.add_peer_args(p)
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.deliveries is None:
        args.deliveries = 60_000 if args.quick else 250_000
    bad = [i for i in args.impl if i not in _peers.IMPLS + _peers.EXTRA_IMPLS]
    if bad:
        p.error(f"unknown impl {bad}")
    return args


def messages_for(n: int, args: argparse.Namespace, burst: int) -> int:
    """M for a phase: the same number of loop turns at every burst size.

    A burst of 16 costs a server about 1/16 of the CPU per delivery; with the same M its
    phase would last a few tens of ms, a few ticks of the kernel's CPU accounting.
    """
    turns = args.messages or max(32, math.ceil(args.deliveries / n))
    return turns * burst


class Pair:
    """One server + its load generator, connected."""

    def __init__(self, impl: str, n: int, args: argparse.Namespace) -> None:
        self.impl = impl
        self.n = n
        role = ["--mode", "fanout", "--core", str(SERVER_CORE), "--fastws-heartbeat", str(args.fastws_heartbeat)]
        self.srv = Child(f"{impl}-server", _peers.server_argv(impl, role, args), core=SERVER_CORE)
        t0 = time.monotonic()
        try:
            self.port = self.srv.recv("ready", 30)["port"]
            self.cli = start_clients(f"{impl}-client", self.port, n, "--sample", str(args.sample),
                                     core=CLIENT_CORE, timeout=60 + n / 50)
        except ChildError:
            self.srv.close()
            raise
        wait_count(self.srv, n, 30)
        self.connect_s = time.monotonic() - t0

    def phase(self, m: int, burst: int) -> dict[str, Any]:
        n = self.n
        timeout = 20 + n * m / 10_000
        sent, done, cpu = run_phase(self.srv, self.cli, m, burst, timeout)
        deliveries = n * m
        elapsed = (done["t_done"] - sent["t_start"]) / 1e9
        loop_s = (sent["t_loop_end"] - sent["t_start"]) / 1e9
        r: dict[str, Any] = {
            "kind": "phase",
            "impl": self.impl,
            "n": n,
            "burst": burst,
            "messages": m,
            "frame_bytes": FRAME_LEN,
            "deliveries": deliveries,
            "ok": done["ok"],
            "elapsed_s": elapsed,
            "loop_s": loop_s,
            "rate": deliveries / elapsed if elapsed > 0 else None,
            "cpu_us": (cpu["user_s"] + cpu["sys_s"]) * 1e6 / deliveries,
            "user_us": cpu["user_s"] * 1e6 / deliveries,
            "sys_us": cpu["sys_s"] * 1e6 / deliveries,
            "core_us": cpu["core_busy_s"] * 1e6 / deliveries if "core_busy_s" in cpu else None,
            "client_cpu_us": done["client_cpu_s"] * 1e6 / deliveries,
            "vcsw": cpu["vcsw"],
            "ivcsw": cpu["ivcsw"],
            "queued": sent["queued"],
            "p50_us": done["p50_us"],
            "p90_us": done["p90_us"],
            "p99_us": done["p99_us"],
            "p999_us": done.get("p999_us"),
            "max_us": done["max_us"],
            "lat_samples": done["samples"],
        }
        for k in (
            "missing_bytes",
            "missing_frames",
            "extra_bytes",
            "gaps",
            "bad_frames",
            "closes",
            "other_frames",
            "pings",
            "lost",
            "conns_pending",
            "timed_out",
        ):
            if done.get(k):
                r[k] = done[k]
        return r

    def close(self) -> None:
        self.cli.close()
        self.srv.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = env_info()
    impls = _peers.available(list(args.impl), args)
    env.update(_peers.versions(impls, args))
    if (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {CLIENT_CORE})  # keep the orchestrator off the server's core
    cmdline = "python -m bench.bench_fanout " + " ".join(argv if argv is not None else sys.argv[1:])
    print(format_env(env))
    print(f"command: {cmdline}")
    print(
        f"server pinned to core {SERVER_CORE}, load generator to core {CLIENT_CORE}"
        f" (taskset {'yes' if env['taskset'] else 'NOT available'}); frame {FRAME_LEN} B; reps {args.reps}"
    )
    jf = open(args.json, "w") if args.json else None  # noqa: SIM115

    def out(rec: dict[str, Any]) -> None:
        if jf:
            jf.write(json.dumps(rec) + "\n")
            jf.flush()

    out({"kind": "env", "command": cmdline, **env, "impls": impls, "reps": args.reps})
    phases: list[dict[str, Any]] = []
    t_start = time.monotonic()
    for n in args.clients:
        pairs: dict[str, Pair] = {}
        try:
            for impl in impls:
                try:
                    pairs[impl] = Pair(impl, n, args)
                    print(f"N={n} {impl}: connected in {pairs[impl].connect_s:.2f}s", file=sys.stderr)
                except ChildError as exc:
                    print(f"N={n} {impl}: setup failed: {exc}", file=sys.stderr)
            for impl, pair in pairs.items():  # warm-up, not recorded
                try:
                    pair.phase(32, 1)
                except ChildError as exc:
                    print(f"N={n} {impl}: warm-up failed: {exc}", file=sys.stderr)
            names = list(pairs)
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)] if names else []
                for burst in args.burst:
                    for impl in order:
                        try:
                            r = pairs[impl].phase(messages_for(n, args, burst), burst)
                        except ChildError as exc:
                            print(f"N={n} {impl} burst={burst} rep={rep}: FAILED: {exc}", file=sys.stderr)
                            r = {
                                "kind": "phase",
                                "impl": impl,
                                "n": n,
                                "burst": burst,
                                "ok": False,
                                "error": str(exc),
                            }
                        r["rep"] = rep
                        phases.append(r)
                        out(r)
                        if r.get("rate"):
                            print(
                                f"  N={n:5d} K={burst:2d} rep={rep} {impl:10s} {r['rate']:12,.0f}/s "
                                f"cpu {r['cpu_us']:.3f} µs (u {r['user_us']:.3f} s {r['sys_us']:.3f}) "
                                f"core {fmt(r['core_us'], '.3f')} p50 {fmt(r['p50_us'], '.0f')} µs "
                                f"p99 {fmt(r['p99_us'], '.0f')} µs client {r['client_cpu_us']:.3f} µs"
                                + ("" if r["ok"] else f"  NOT OK {r}"),
                                file=sys.stderr,
                            )
        finally:
            for pair in pairs.values():
                pair.close()
    rows = summarize(phases, impls)
    for row in rows:
        out(row)
    if jf:
        jf.close()
    print()
    print(
        "M messages per phase: "
        + ", ".join(f"N={n} K={k}: {messages_for(n, args, k)}" for n in args.clients for k in args.burst)
        + f"; total time {time.monotonic() - t_start:.0f}s"
    )
    print(render_table(rows))
    print()
    print(render_targets(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
