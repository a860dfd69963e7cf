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

from bench._common import (
    FRAME_LEN,
    IMPLS,
    Child,
    ChildError,
    env_info,
    fastws_status,
    format_env,
    markdown_table,
    median,
    wait_count,
)

SERVER_CORE = 0
CLIENT_CORE = 1


def _csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_fanout", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clients", type=_csv_ints, default=[100, 1000, 5000], help="N values (default 100,1000,5000)"
    )
    p.add_argument(
        "--messages",
        type=int,
        default=0,
        help="messages per phase; default: enough for --deliveries deliveries per phase",
    )
    p.add_argument(
        "--deliveries", type=int, default=None, help="target N*M per phase (default 250000, quick 60000)"
    )
    p.add_argument("--burst", type=_csv_ints, default=[1, 16], help="messages per loop turn (default 1,16)")
    p.add_argument("--impl", type=_csv, default=list(IMPLS), help="fastws,websockets,picows")
    p.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions (default 5, quick 2); medians"
    )
    p.add_argument("--sample", type=int, default=16, help="connections per N that parse frames for latency")
    p.add_argument("--quick", action="store_true", help="~1-2 min: --reps 2 --deliveries 60000")
    p.add_argument("--json", metavar="PATH", help="write JSON lines (env, every phase, summary rows)")
    p.add_argument("--fastws-heartbeat", type=float, default=3600.0, help="fastws heartbeat_interval (s)")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.deliveries is None:
        args.deliveries = 60_000 if args.quick else 250_000
    bad = [i for i in args.impl if i not in IMPLS]
    if bad:
        p.error(f"unknown impl {bad}")
    return args


def messages_for(n: int, args: argparse.Namespace) -> int:
    if args.messages:
        return args.messages
    step = max(args.burst)
    m = max(32, math.ceil(args.deliveries / n))
    return math.ceil(m / step) * step


class Pair:
    """One server + its load generator, connected."""

    def __init__(self, impl: str, n: int, args: argparse.Namespace) -> None:
        self.impl = impl
        self.n = n
        self.srv = Child(
            f"{impl}-server",
            [
                "server",
                "--impl",
                impl,
                "--mode",
                "fanout",
                "--core",
                str(SERVER_CORE),
                "--fastws-heartbeat",
                str(args.fastws_heartbeat),
            ],
            core=SERVER_CORE,
        )
        self.port = self.srv.recv("ready", 30)["port"]
        t0 = time.monotonic()
        self.cli = Child(
            f"{impl}-client",
            ["client", "--port", str(self.port), "--clients", str(n), "--sample", str(args.sample)],
            core=CLIENT_CORE,
        )
        c = self.cli.recv("connected", 60 + n / 50)
        if c["n"] != n:
            raise ChildError(f"{impl}: only {c['n']}/{n} connected: {c['errors']}")
        wait_count(self.srv, n, 30)
        self.connect_s = time.monotonic() - t0

    def phase(self, m: int, burst: int) -> dict[str, Any]:
        n = self.n
        timeout = 20 + n * m / 10_000
        self.cli.request("armed", 10, cmd="expect", messages=m, timeout=timeout)
        sent = self.srv.request("sent", timeout + 10, cmd="run", messages=m, burst=burst)
        done = self.cli.recv("done", timeout + 10)
        cpu = self.srv.request("cpu", 10, cmd="stop")
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


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def summarize(phases: list[dict[str, Any]], impls: list[str]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(p["n"], p["burst"]) for p in phases})
    for n, burst in keys:
        cell = {
            i: [p for p in phases if p["impl"] == i and p["n"] == n and p["burst"] == burst and p["ok"]]
            for i in impls
        }
        meds = {
            i: {
                k: median([p[k] for p in ps])
                for k in (
                    "rate",
                    "cpu_us",
                    "user_us",
                    "sys_us",
                    "core_us",
                    "p50_us",
                    "p99_us",
                    "client_cpu_us",
                )
            }
            for i, ps in cell.items()
        }

        def paired(i: str, ref: str, cell: dict[str, list[dict[str, Any]]] = cell) -> float | None:
            # median over reps of the per-rep CPU ratio (reps are interleaved, so pairs share conditions)
            a = {p["rep"]: p["cpu_us"] for p in cell.get(i, [])}
            b = {p["rep"]: p["cpu_us"] for p in cell.get(ref, [])}
            return median([a[r] / b[r] for r in a if r in b and b[r]])

        for i in impls:
            m = meds[i]
            ps = cell[i]
            failed = len(
                [p for p in phases if p["impl"] == i and p["n"] == n and p["burst"] == burst and not p["ok"]]
            )
            row = {
                "kind": "summary",
                "impl": i,
                "n": n,
                "burst": burst,
                "reps_ok": len(ps),
                "reps_failed": failed,
                **{f"median_{k}": v for k, v in m.items()},
            }
            for ref in ("websockets", "picows"):
                if ref in meds and m["cpu_us"] and meds[ref]["cpu_us"]:
                    row[f"cpu_vs_{ref}"] = m["cpu_us"] / meds[ref]["cpu_us"]
                    row[f"cpu_vs_{ref}_paired"] = paired(i, ref)
                if ref in meds and m["core_us"] and meds[ref]["core_us"]:
                    row[f"core_vs_{ref}"] = m["core_us"] / meds[ref]["core_us"]
            if ps:
                row["cpu_us_range"] = [min(p["cpu_us"] for p in ps), max(p["cpu_us"] for p in ps)]
                row["rate_range"] = [min(p["rate"] for p in ps), max(p["rate"] for p in ps)]
            rows.append(row)
    return rows


def render_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "impl",
        "N",
        "burst",
        "deliveries/s",
        "server CPU µs/deliv (user/sys)",
        "core0 µs/deliv",
        "CPU ×websockets",
        "CPU ×picows",
        "p50 ms",
        "p99 ms",
        "reps",
    ]
    out = []
    for r in rows:
        out.append(
            [
                r["impl"],
                str(r["n"]),
                str(r["burst"]),
                _fmt(r["median_rate"], ",.0f"),
                f"{_fmt(r['median_cpu_us'], '.3f')} ({_fmt(r['median_user_us'], '.3f')}/{_fmt(r['median_sys_us'], '.3f')})",
                _fmt(r["median_core_us"], ".3f"),
                _fmt(r.get("cpu_vs_websockets"), ".3f"),
                _fmt(r.get("cpu_vs_picows"), ".3f"),
                _fmt(r["median_p50_us"] / 1000 if r["median_p50_us"] is not None else None, ".2f"),
                _fmt(r["median_p99_us"] / 1000 if r["median_p99_us"] is not None else None, ".2f"),
                f"{r['reps_ok']}" + (f" (+{r['reps_failed']} failed)" if r["reps_failed"] else ""),
            ]
        )
    return markdown_table(headers, out)


def render_targets(rows: list[dict[str, Any]]) -> str:
    def get(n: int, burst: int, key: str) -> tuple[float | None, float | None]:
        for r in rows:
            if r["impl"] == "fastws" and r["n"] == n and r["burst"] == burst:
                return r.get(key), r.get(key + "_paired")
        return None, None

    lines = ["Targets (server CPU per delivery, ratio of medians; paired = median of per-rep ratios):"]
    checks = [
        (1000, 1, "cpu_vs_websockets", 0.6, "fastws ≤ 0.6 × websockets.broadcast()"),
        (1000, 1, "cpu_vs_picows", 1.05, "fastws ≤ 1.05 × naive picows loop"),
        (1000, 16, "cpu_vs_websockets", 1 / 15, "fastws ≤ 1/15 × websockets (bursts of 16)"),
    ]
    for n, burst, key, limit, text in checks:
        v, pv = get(n, burst, key)
        if v is None:
            lines.append(f"  N={n} burst={burst}: {text}: not measured")
            continue
        verdict = "PASS" if v <= limit else "FAIL"
        lines.append(
            f"  N={n} burst={burst}: {text}: {v:.3f} (paired {_fmt(pv, '.3f')}), limit {limit:.3f} → {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = env_info()
    impls = list(args.impl)
    if "fastws" in impls and (st := fastws_status()) != "ok":
        print(f"fastws skipped: {st}", file=sys.stderr)
        impls.remove("fastws")
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
        m = messages_for(n, args)
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
                    pair.phase(min(m, 32), 1)
                except ChildError as exc:
                    print(f"N={n} {impl}: warm-up failed: {exc}", file=sys.stderr)
            names = list(pairs)
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)] if names else []
                for burst in args.burst:
                    for impl in order:
                        try:
                            r = pairs[impl].phase(m, burst)
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
                                f"core {_fmt(r['core_us'], '.3f')} p50 {_fmt(r['p50_us'], '.0f')} µs "
                                f"p99 {_fmt(r['p99_us'], '.0f')} µs client {r['client_cpu_us']:.3f} µs"
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
        + ", ".join(f"N={n}: {messages_for(n, args)}" for n in args.clients)
        + f"; total time {time.monotonic() - t_start:.0f}s"
    )
    print(render_table(rows))
    print()
    print(render_targets(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
