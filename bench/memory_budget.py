"""Memory budget of one idle fastws connection: what it holds, item by item.

For each configuration a fresh process runs a real ``fastws.Server`` (uvloop, heartbeat on,
127.0.0.1 port 0) and drives a load client (``bench/_client.py``, a separate process:
raw connections, minimal upgrade headers, pongs answered). Sequence per configuration:

1. 20 warm-up connections opened and closed; ``gc.collect()``, settle, VmRSS baseline
   (median of 5 samples);
2. idle connections up to 1000, then up to N (default 5000); at each: wait until the
   server counts them, ``gc.collect()``, settle, VmRSS. Reported: (RSS_N - baseline) / N and
   the marginal (RSS_N - RSS_R) / (N - R), R = min(1000, N/2);
3. ``tracemalloc.start()``, then M more connections (default 1000): the snapshot difference
   per connection grouped by block size (what each connection mallocs) and by innermost
   Python line, and the ``gc`` objects gained per connection, by type (count, bytes);
4. the objects reachable from one ``Client`` and not from another (what belongs to one
   connection alone), by type, with the malloc'd buffers of picows' ``MemoryBuffer``.

RSS is measured before tracemalloc starts (its own tables would inflate it).

Run: ``python -m bench.memory_budget [--clients 5000] [--traced 1000]
[--configs aiofastnet-2048,aiofastnet,loop-2048,loop] [--json out.json]``.
A configuration is ``TRANSPORT[-READBUF]``: the ``transport`` config key (``loop`` or
``aiofastnet``) and ``Hub.idle_read_buffer`` (default: fastws' own, 512; 2048 = not cut).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from bench._child import Child, python_role
from bench._util import csv, env_info, format_env, markdown_table, raise_nofile, settled_rss

SETTLE = 2.0


async def _rss(settle: float) -> float:
    return (await settled_rss(settle))[0]


async def _connect(cli: Child, server: Any, total: int) -> None:
    r = await asyncio.to_thread(cli.request, "connected", 120 + total / 20, cmd="connect", total=total)
    if r["n"] != total:
        raise RuntimeError(f"only {r['n']}/{total} connected: {r.get('errors')}")
    deadline = time.monotonic() + 60
    while server.connection_count != total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"server counts {server.connection_count}, expected {total}")
        await asyncio.sleep(0.05)


def _type_counts() -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for o in gc.get_objects():
        e = out[type(o).__qualname__]
        e[0] += 1
        e[1] += sys.getsizeof(o)
    return {k: (v[0], v[1]) for k, v in out.items()}


_SKIP = (type, type(sys), type(_rss), type(len))


def _reachable(root: object, stop: set[int]) -> dict[int, object]:
    """Objects reachable from ``root`` through gc referents, not entering ``stop``."""
    seen: dict[int, object] = {}
    todo = [root]
    while todo:
        o = todo.pop()
        if id(o) in seen or id(o) in stop or isinstance(o, _SKIP):
            continue
        seen[id(o)] = o
        todo.extend(gc.get_referents(o))
    return seen


def _own_objects(server: Any) -> list[tuple[str, int, int]]:
    """(type, count, bytes) of what one Client reaches and another does not."""
    from picows.picows import MemoryBuffer  # noqa: PLC0415

    clients = server.clients
    a, b = clients[len(clients) // 3], clients[2 * len(clients) // 3]
    # what everything shares: the hub, the loop, the server, modules
    stop = {id(server), id(server.hub), id(asyncio.get_running_loop()), id(server._node)}
    stop.update(id(c) for c in clients if c is not a and c is not b)
    mine = _reachable(a, stop | {id(b)})
    theirs = _reachable(b, stop | {id(a)})
    own = [o for k, o in mine.items() if k not in theirs]
    rows: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for o in own:
        name = type(o).__module__ + "." + type(o).__qualname__
        rows[name][0] += 1
        rows[name][1] += sys.getsizeof(o)
        if type(o) is MemoryBuffer:
            cap = _buffer_capacity(o)
            rows["  malloc'd data of those MemoryBuffers"][0] += 1
            rows["  malloc'd data of those MemoryBuffers"][1] += cap
    return sorted(((k, v[0], v[1]) for k, v in rows.items()), key=lambda r: -r[2])


def _buffer_capacity(buf: object) -> int:
    from fastws._testing import memory_buffer_capacity  # noqa: PLC0415

    return int(memory_buffer_capacity(buf))


async def serve(args: argparse.Namespace) -> dict[str, Any]:
    import fastws  # noqa: PLC0415

    raise_nofile()
    transport, _, readbuf = args.serve.partition("-")
    n, m = args.clients, args.traced
    server = fastws.Server(host="127.0.0.1", port=0, max_connections=n + m + 100, transport=transport,
                           heartbeat_interval=30.0)
    await server.start()
    assert server.hub is not None
    if readbuf:
        server.hub.idle_read_buffer = 0 if int(readbuf) >= 2048 else int(readbuf)
    cli = Child("client", python_role("bench._client", "--port", str(server.port), "--clients", "0",
                                      "--sample", "-1"))
    res: dict[str, Any] = {"config": args.serve, "transport": transport,
                           "idle_read_buffer": server.hub.idle_read_buffer, "n": n, "traced": m}
    try:
        await asyncio.to_thread(cli.recv, "ready", 30)
        await _connect(cli, server, 20)
        await asyncio.to_thread(cli.request, "closed", 30, cmd="close_all")
        while server.connection_count:
            await asyncio.sleep(0.05)
        base = await _rss(args.settle)
        res["baseline_kib"] = base
        ref = min(1000, n // 2)  # the marginal cost is measured from here to n
        for k in (ref, n):
            await _connect(cli, server, k)
            res[f"rss_{k}_kib"] = await _rss(args.settle)
        res["per_conn_kib"] = (res[f"rss_{n}_kib"] - base) / n
        res["marginal_kib"] = (res[f"rss_{n}_kib"] - res[f"rss_{ref}_kib"]) / (n - ref)
        # what one connection allocates, traced
        tracemalloc.start(25)
        gc.collect()
        s1 = tracemalloc.take_snapshot()
        t1 = _type_counts()
        await _connect(cli, server, n + m)
        gc.collect()
        s2 = tracemalloc.take_snapshot()
        t2 = _type_counts()
        filt = [tracemalloc.Filter(False, tracemalloc.__file__)]
        s1, s2 = s1.filter_traces(filt), s2.filter_traces(filt)
        sizes1 = collections.Counter(t.size for t in s1.traces)
        sizes2 = collections.Counter(t.size for t in s2.traces)
        blocks = [(size, (sizes2[size] - sizes1.get(size, 0)) / m) for size in sizes2]
        blocks = sorted((b for b in blocks if b[1] >= 0.5), key=lambda b: -b[0] * b[1])
        res["traced_kib"] = (sum(t.size for t in s2.traces) - sum(t.size for t in s1.traces)) / m / 1024
        res["blocks"] = [(size, round(per, 2), round(size * per)) for size, per in blocks[:30]]
        res["lines"] = [(str(st.traceback[0]), round(st.size_diff / m), round(st.count_diff / m, 2))
                        for st in s2.compare_to(s1, "lineno")[:15]]
        types = []
        for k, (c2, b2) in t2.items():
            c1, b1 = t1.get(k, (0, 0))
            if (c2 - c1) / m >= 0.5:
                types.append((k, round((c2 - c1) / m, 2), round((b2 - b1) / m)))
        res["gc_types"] = sorted(types, key=lambda r: -r[2])[:25]
        res["own_objects"] = _own_objects(server)
        tracemalloc.stop()
    finally:
        cli.close()
        await server.stop()
    return res


def run_config(config: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.memory_budget", "--serve", config, "--clients", str(args.clients),
            "--traced", str(args.traced), "--settle", str(args.settle)]
    p = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=900, env=os.environ.copy())
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"config": config, "error": f"exit {p.returncode}"}
    return dict(json.loads(lines[-1]))


def report(r: dict[str, Any]) -> None:
    print(f"\n### {r['config']}: {r['per_conn_kib']:.2f} KiB/conn at N={r['n']} "
          f"(marginal {r['marginal_kib']:.2f}; traced {r['traced_kib']:.2f} KiB/conn over {r['traced']} more)")
    print("\nmalloc'd blocks per connection (tracemalloc, by block size):\n")
    print(markdown_table(["block bytes", "per conn", "bytes/conn"], [list(map(str, b)) for b in r["blocks"]]))
    print("\nby innermost Python line:\n")
    print(markdown_table(["line", "bytes/conn", "blocks/conn"], [list(map(str, b)) for b in r["lines"]]))
    print("\ngc objects gained per connection:\n")
    print(markdown_table(["type", "per conn", "bytes/conn"], [list(map(str, b)) for b in r["gc_types"]]))
    print("\nreachable from one Client and not from another:\n")
    print(markdown_table(["type", "count", "bytes"], [list(map(str, b)) for b in r["own_objects"]]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory_budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=5000, help="N idle connections (default 5000)")
    p.add_argument("--traced", type=int, default=1000, help="connections opened under tracemalloc (default 1000)")
    p.add_argument("--configs", type=csv, default=["aiofastnet-2048", "aiofastnet", "loop-2048", "loop"],
                   help="TRANSPORT[-READBUF], comma-separated")
    p.add_argument("--settle", type=float, default=SETTLE, help="seconds after gc before sampling RSS")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON lines")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.clients < 10 or args.traced < 1:
        p.error("--clients must be at least 10 and --traced at least 1")
    if args.serve:
        import uvloop  # noqa: PLC0415

        print(json.dumps(uvloop.run(serve(args))), flush=True)
        return 0
    env = env_info()
    print(format_env(env))
    cmdline = "python -m bench.memory_budget " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: {cmdline}")
    results = [run_config(c, args) for c in args.configs]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["config"], "failed: " + r["error"], "", "", "", ""])
            continue
        rows.append([r["config"], r["transport"], str(r["idle_read_buffer"] or 2048),
                     f"{r['per_conn_kib']:.2f}", f"{r['marginal_kib']:.2f}", f"{r['traced_kib']:.2f}"])
    for r in results:
        if "error" not in r:
            report(r)
    print()
    print(markdown_table(["config", "transport", "idle read buffer", f"KiB/conn @{args.clients}",
                          "marginal", "traced KiB/conn"], rows))
    if args.json:
        with open(args.json, "w") as f:
            for rec in [{"kind": "env", "command": cmdline, **env}, *results]:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
