"""Idle memory per WebSocket connection: server RSS delta / N.

For each implementation a fresh server process is started (default settings;
pinned to core 0) and a client process (core 1) opens idle connections in
batches. Sequence, as in /work/shared/notes/picows-memory.md: open and close 20
warm-up connections, ``gc.collect()``, settle, baseline VmRSS; open up to each
N (default 1000, then 5000), wait until the server counts N, ``gc.collect()``,
settle, VmRSS. Reported: (RSS_N - baseline) / N, the marginal
(RSS_5000 - RSS_1000) / 4000, and the Δ/N after one 100-byte broadcast to
everyone (buffers that grow on first use show up there).

The client answers pings (every connection parses frames), so servers with a
heartbeat keep their clients. Kernel socket memory is not in RSS.

Run: ``python -m bench.bench_memory [--clients 1000,5000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench import _peers
from bench._child import Child, ChildError, python_role, run_phase, wait_count
from bench._util import csv, csv_ints, env_info, format_env, markdown_table

TARGET_KIB = 4.0  # issue 13


def measure(impl: str, ns: list[int], settle: float, args: argparse.Namespace) -> dict[str, Any]:
    srv = Child(f"{impl}-server", _peers.server_argv(impl, ["--mode", "memory", "--core", "0"], args), core=0)
    cli: Child | None = None
    try:
        port = srv.recv("ready", 30)["port"]
        cli_args = ["--port", str(port), "--clients", "0", "--sample", "-1"]
        cli = Child(f"{impl}-client", python_role("bench._client", *cli_args), core=1)
        cli.recv("ready", 30)
        # warm-up: 20 connections opened and closed
        cli.request("connected", 60, cmd="connect", total=20)
        wait_count(srv, 20, 30)
        cli.request("closed", 30, cmd="close_all")
        wait_count(srv, 0, 30)
        base = srv.request("mem", settle + 30, cmd="mem", settle=settle)["rss_kib"]
        res: dict[str, Any] = {"kind": "memory", "impl": impl, "baseline_kib": base, "settle_s": settle}
        for n in ns:
            c = cli.request("connected", 120 + n / 20, cmd="connect", total=n)
            if c["n"] != n:
                raise ChildError(f"only {c['n']}/{n} connected: {c['errors']}")
            wait_count(srv, n, 60)
            rss = srv.request("mem", settle + 30, cmd="mem", settle=settle)["rss_kib"]
            res[f"rss_{n}_kib"] = rss
            res[f"per_conn_{n}_kib"] = (rss - base) / n
            res[f"connect_{n}_s"] = c["seconds"]
        if len(ns) >= 2:
            a, b = ns[-2], ns[-1]
            res["marginal_kib"] = (res[f"rss_{b}_kib"] - res[f"rss_{a}_kib"]) / (b - a)
        # one 100-byte broadcast to everyone, then measure again
        n = ns[-1]
        _, done, _ = run_phase(srv, cli, 1, 1, 60)
        res["broadcast_ok"] = done["ok"]
        rss = srv.request("mem", settle + 30, cmd="mem", settle=settle)["rss_kib"]
        res["per_conn_after_broadcast_kib"] = (rss - base) / n
        res["pings_answered"] = done["pings"]
        return res
    finally:
        if cli is not None:
            cli.close()
        srv.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_memory", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--clients", type=csv_ints, default=[1000, 5000], help="N values, ascending (default 1000,5000)"
    )
    p.add_argument("--impl", type=csv, default=list(_peers.IMPLS),
                   help="fastws,websockets,picows,bun,socketify (absent peers are skipped)")
    p.add_argument(
        "--settle", type=float, default=None, help="seconds after gc before sampling (default 3, quick 1)"
    )
    p.add_argument("--quick", action="store_true", help="settle 1 s")
    p.add_argument("--json", metavar="PATH", help="write JSON lines")
    _peers.add_peer_args(p)
    args = p.parse_args(argv)
    settle = args.settle if args.settle is not None else (1.0 if args.quick else 3.0)
    ns = sorted(args.clients)
    env = env_info()
    impls = _peers.available(list(args.impl), args)
    env.update(_peers.versions(impls, args))
    cmdline = "python -m bench.bench_memory " + " ".join(argv if argv is not None else sys.argv[1:])
    print(format_env(env))
    print(f"command: {cmdline}")
    print(
        "settings: fastws ServerConfig(host, port=0, max_connections=10000) (other fields default); "
        "websockets serve(handler, backlog=4096) (defaults); picows ws_create_server(factory, backlog=4096) "
        "(defaults); bun Bun.serve (defaults, every client subscribed to one topic); socketify App().ws "
        "(defaults, compression off)"
    )
    records: list[dict[str, Any]] = [{"kind": "env", "command": cmdline, **env}]
    t0 = time.monotonic()
    for impl in impls:
        try:
            r = measure(impl, ns, settle, args)
        except ChildError as exc:
            print(f"{impl}: FAILED: {exc}", file=sys.stderr)
            r = {"kind": "memory", "impl": impl, "error": str(exc)}
        records.append(r)
        print(f"  {impl}: {json.dumps(r)}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            for rec in records:
                f.write(json.dumps(rec) + "\n")
    headers = ["impl", "baseline MiB", *(f"KiB/conn @{n}" for n in ns)]
    if len(ns) >= 2:
        headers.append(f"marginal {ns[-2]}→{ns[-1]}")
    headers.append(f"KiB/conn @{ns[-1]} after 1 broadcast")
    rows = []
    for r in records[1:]:
        if "error" in r:
            rows.append([r["impl"], "failed", *([""] * (len(headers) - 2))])
            continue
        row = [r["impl"], f"{r['baseline_kib'] / 1024:.1f}", *(f"{r[f'per_conn_{n}_kib']:.2f}" for n in ns)]
        if len(ns) >= 2:
            row.append(f"{r['marginal_kib']:.2f}")
        row.append(f"{r['per_conn_after_broadcast_kib']:.2f}")
        rows.append(row)
    print()
    print(
        f"total time {time.monotonic() - t0:.0f}s; VmRSS delta / N after gc.collect() and a {settle:g}s settle"
    )
    print(markdown_table(headers, rows))
    for r in records[1:]:
        if r.get("impl") == "fastws" and "error" not in r:
            v = r[f"per_conn_{ns[-1]}_kib"]
            print(
                f"\nTarget: fastws idle memory per connection at N={ns[-1]} ≤ {TARGET_KIB} KiB: {v:.2f} → "
                f"{'PASS' if v <= TARGET_KIB else 'FAIL'}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
