"""Topics benchmark (issue 15): server CPU per delivery with topics, and memory per subscription
and per history entry.

One run, N clients (default 1000), each scenario in a server process of its own pinned to core 0
with its own load generator (``bench/_client.py``'s connections, one upgrade path per
connection) pinned to core 1; the phases of the scenarios are interleaved, repetitions rotate
their order, and the medians are compared:

* **a** today's broadcast: clients without ``?topics=``, ``broadcast(item)``; 16 and 1 per turn;
* **b** one topic: every client on ``?topics=t0``, ``broadcast(item, topic="t0")``; same rates.
  Target: CPU per delivery <= 1.05 x (a) at the same rate;
* **c** 100 topics of 10 clients (client i on ``t{i % 100}``), 16 messages per turn, topics taken
  round-robin. Target: <= 1.5 x (b) at 16/turn. Each client then gets ~0.16 messages per turn
  (one frame per write), so the ratio to (b) at 1/turn is also printed: the like-for-like one;
* **d** memory (fresh server processes, VmRSS medians after ``gc.collect()``): per subscription
  (N clients with 10 topics each against N clients without, each process's own delta), and per
  history entry (100 topics x 1000 entries of ~200 B published with no client connected).

Every phase is verified: each connection must receive exactly the bytes of its topic's frames,
and the server's ``broadcast`` return values must add up to the deliveries. Every wait is
bounded. Run: ``python -m bench.bench_topics [--quick] [--json out.json]``; bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import sys
import time
from typing import Any

from bench._child import Child, ChildError, python_role, run_phase, wait_count
from bench._client import Conn, LoadClient
from bench._util import (
    FRAME_LEN,
    WS_KEY,
    csv,
    emit,
    env_info,
    format_env,
    make_message,
    markdown_table,
    raise_nofile,
    run_role,
    settled_rss,
    stdin_commands,
)

SERVER_CORE = 0
CLIENT_CORE = 1
SPREAD_TOPICS = 100
SUBS_PER_CLIENT = 10  # scenario d: topics per client
HISTORY_TOPICS = 100
HISTORY_PER_TOPIC = 1000
HISTORY_ITEM_BYTES = 200
MODULE = "bench.bench_topics"


# --------------------------------------------------------------------------- who subscribes to what
def client_topics(mode: str, i: int) -> list[str]:
    """The topics of connection ``i`` in a scenario ([]: no ``?topics=``)."""
    if mode == "one":
        return ["t0"]
    if mode == "spread":
        return [f"t{i % SPREAD_TOPICS}"]
    if mode == "subs":
        return [f"m{(i * SUBS_PER_CLIENT + j) % 1000}" for j in range(SUBS_PER_CLIENT)]
    return []


def expected_messages(mode: str, i: int, m: int) -> int:
    """Messages connection ``i`` receives of a phase of ``m`` (the server numbers topics per phase)."""
    if mode == "spread":
        k = i % SPREAD_TOPICS
        return m // SPREAD_TOPICS + (1 if k < m % SPREAD_TOPICS else 0)
    return m


def upgrade(port: int, topics: list[str]) -> bytes:
    path = "/?topics=" + ",".join(topics) if topics else "/"
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------- load client role
class TopicConn(Conn):
    """A byte-counting connection with its own upgrade request (its topics)."""

    __slots__ = ("request",)

    def __init__(self, client: LoadClient, request: bytes) -> None:
        super().__init__(client, False)
        self.request = request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        self.tr.write(self.request)


class TopicLoadClient(LoadClient):
    async def connect_mode(self, mode: str, total: int) -> dict[str, Any]:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(self.args.concurrency)
        errors: list[str] = []
        conns: list[TopicConn | None] = [None] * total

        async def one(i: int) -> None:
            request = upgrade(self.args.port, client_topics(mode, i))
            async with sem:
                for attempt in range(3):
                    conn = TopicConn(self, request)
                    try:
                        await asyncio.wait_for(
                            self.loop.create_connection(lambda c=conn: c, "127.0.0.1", self.args.port), 20)
                        await asyncio.wait_for(conn.upgraded, 20)
                    except Exception as exc:  # noqa: BLE001
                        if conn.tr is not None:
                            conn.tr.abort()
                        if attempt == 2:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    conns[i] = conn
                    return

        await asyncio.gather(*(one(i) for i in range(total)))
        self.conns = [c for c in conns if c is not None]
        self.mode = mode
        return {"n": len(self.conns), "seconds": time.monotonic() - t0, "errors": errors[:5], "n_errors": len(errors)}

    def arm_mode(self, messages: int, timeout: float) -> None:
        """Like ``arm``, with each connection expecting its own topic's share of the phase."""
        self.latencies = []
        self.gaps = self.bad_frames = self.closes = self.other_frames = 0
        self.pending = 0
        for i, c in enumerate(self.conns):
            c.target += expected_messages(self.mode, i, messages) * FRAME_LEN
            c.done = c.got >= c.target
            if not c.done:
                self.pending += 1
        self.phase_active = True
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.timer = self.loop.call_later(timeout, self.finish, True)
        if self.pending == 0:
            self.loop.call_soon(self.finish, False)


async def client_main(args: argparse.Namespace) -> None:
    raise_nofile()
    client = TopicLoadClient(args)
    emit(event="connected", **await client.connect_mode(args.mode, args.clients))
    async for cmd in stdin_commands():
        c = cmd["cmd"]
        if c == "expect":
            client.arm_mode(int(cmd["messages"]), float(cmd["timeout"]))
            emit(event="armed")
        elif c == "quit":
            for conn in client.conns:
                if conn.tr is not None:
                    conn.tr.abort()
            emit(event="bye")
            os._exit(0)


# --------------------------------------------------------------------------- server role
async def rss_after(settle: float) -> float:
    return (await settled_rss(settle, 0.1))[0]


def history_item(seq: int) -> dict[str, Any]:
    """~HISTORY_ITEM_BYTES of JSON: ``{"seq":N,"pad":"xx…"}``."""
    return {"seq": seq, "pad": "x" * (HISTORY_ITEM_BYTES - 18 - len(str(seq)))}


async def server_main(args: argparse.Namespace) -> None:
    raise_nofile()
    import fastws  # noqa: PLC0415
    from bench._server import Phase  # noqa: PLC0415

    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_connections": 10000,
                              "heartbeat_interval": 3600.0}
    if args.history_size:
        kwargs["history_size"] = args.history_size
    server = fastws.Server(**kwargs)
    await server.start()
    emit(event="ready", port=server.port, pid=os.getpid(), rss_kib=await rss_after(0.5))
    mode = args.mode
    topics = [f"t{i}" for i in range(SPREAD_TOPICS)]
    broadcast = server.broadcast
    phase: Phase | None = None
    seq = 0
    async for cmd in stdin_commands():
        c = cmd["cmd"]
        if c == "count":
            emit(event="count", count=server.connection_count)
        elif c == "run":
            m, burst = int(cmd["messages"]), int(cmd["burst"])
            # the items exist before the clock starts: the phase measures the server, not the item factory
            items = [make_message(seq + k) for k in range(m)]
            seq += m
            phase = Phase(args.core)
            queued = sent = 0
            sleep = asyncio.sleep
            while sent < m:  # bounded: m messages
                for j in range(sent, min(sent + burst, m)):
                    item = items[j]
                    if mode == "none":
                        queued += broadcast(item)
                    elif mode == "one":
                        queued += broadcast(item, topic="t0")
                    else:
                        queued += broadcast(item, topic=topics[j % SPREAD_TOPICS])
                sent = min(sent + burst, m)
                await sleep(0)
            emit(event="sent", t_start=phase.t0, t_loop_end=time.monotonic_ns(), queued=queued)
        elif c == "stop":
            assert phase is not None, "stop before run"
            emit(event="cpu", **phase.cpu())
        elif c == "mem":
            rss = await rss_after(float(cmd.get("settle", 1.0)))
            emit(event="mem", rss_kib=rss, count=server.connection_count, topics=server.stats().get("topics"))
        elif c == "history":
            before = await rss_after(0.5)
            n, published, size = int(cmd["entries"]), 0, 0
            deadline = time.monotonic() + 120
            while published < n and time.monotonic() < deadline:  # bounded in count and time
                for _ in range(min(1000, n - published)):
                    item = history_item(published)
                    size += len(json.dumps(item, separators=(",", ":")))
                    broadcast(item, topic=f"h{published % HISTORY_TOPICS}")
                    published += 1
                await asyncio.sleep(0)
            after = await rss_after(1.0)
            emit(event="history", before_kib=before, after_kib=after, published=published,
                 mean_bytes=size / max(published, 1), topics=server.stats().get("topics"))
        elif c == "quit":
            await asyncio.wait_for(server.stop(), 10)
            emit(event="bye")
            os._exit(0)


# --------------------------------------------------------------------------- orchestrator
class Scenario:
    """One server process and its load generator, connected."""

    def __init__(self, name: str, mode: str, n: int, history_size: int = 0, clients: bool = True) -> None:
        self.name, self.mode, self.n = name, mode, n
        argv = python_role(MODULE, "--role", "server", "--mode", mode, "--core", str(SERVER_CORE),
                           "--history-size", str(history_size))
        self.srv = Child(f"{name}-server", argv, core=SERVER_CORE)
        self.cli: Child | None = None
        try:
            ready = self.srv.recv("ready", 30)
            self.port, self.rss0 = ready["port"], ready["rss_kib"]
            if clients:
                self.cli = Child(f"{name}-client", python_role(
                    MODULE, "--role", "client", "--mode", mode, "--port", str(self.port), "--clients", str(n)),
                    core=CLIENT_CORE)
                c = self.cli.recv("connected", 60 + n / 50)
                if c["n"] != n:
                    raise ChildError(f"{name}: only {c['n']}/{n} connected: {c['errors']}")
                wait_count(self.srv, n, 30)
        except ChildError:
            self.close()
            raise

    def deliveries(self, m: int) -> int:
        return sum(expected_messages(self.mode, i, m) for i in range(self.n))

    def phase(self, m: int, burst: int) -> dict[str, Any]:
        assert self.cli is not None
        want = self.deliveries(m)
        sent, done, cpu = run_phase(self.srv, self.cli, m, burst, 30 + want / 20_000)
        ok = bool(done["ok"]) and sent["queued"] == want
        return {"kind": "phase", "scenario": self.name, "burst": burst, "messages": m, "deliveries": want,
                "queued": sent["queued"], "ok": ok, "missing_bytes": done["missing_bytes"],
                "extra_bytes": done["extra_bytes"], "elapsed_s": (done["t_done"] - sent["t_start"]) / 1e9,
                "cpu_us": (cpu["user_s"] + cpu["sys_s"]) * 1e6 / want,
                "core_us": cpu["core_busy_s"] * 1e6 / want if "core_busy_s" in cpu else None}

    def close(self) -> None:
        if self.cli is not None:
            self.cli.close()
        self.srv.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_topics", description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=("orchestrator", "server", "client"), default="orchestrator",
                   help=argparse.SUPPRESS)
    p.add_argument("--mode", default="none", help=argparse.SUPPRESS)
    p.add_argument("--core", type=int, default=SERVER_CORE, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--history-size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--cafile", default=None, help=argparse.SUPPRESS)
    p.add_argument("--clients", type=int, default=1000, help="N (default 1000)")
    p.add_argument("--deliveries", type=int, default=None, help="deliveries per phase (default 200000, quick 50000)")
    p.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 5, quick 2); medians")
    p.add_argument("--scenarios", type=csv, default=["a", "b", "c", "e", "d"],
                   help="a,b,c,e,d (default all; 'a' alone needs no topic support)")
    p.add_argument("--quick", action="store_true", help="--reps 2 --deliveries 50000")
    p.add_argument("--json", metavar="PATH", help="write JSON lines (env, phases, summary)")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 2 if args.quick else 5
    if args.deliveries is None:
        args.deliveries = 50_000 if args.quick else 200_000
    bad = [s for s in args.scenarios if s not in "abcde"]
    if bad:
        p.error(f"unknown scenario {bad}")
    return args


def messages_for(scenario: Scenario, burst: int, deliveries: int) -> int:
    """Messages per phase: about ``deliveries`` deliveries, a multiple of the burst (and of the
    topic count for the spread scenario, so that every topic gets the same number)."""
    per_message = scenario.deliveries(SPREAD_TOPICS) / SPREAD_TOPICS
    step = math.lcm(burst, SPREAD_TOPICS) if scenario.mode == "spread" else burst
    return max(step, math.ceil(deliveries / per_message / step) * step)


def measure_memory(n: int) -> dict[str, Any]:
    """Scenario d: bytes per subscription and per history entry (fresh processes, RSS deltas)."""
    out: dict[str, Any] = {}
    deltas = {}
    for mode in ("none", "subs"):
        s = Scenario(f"mem-{mode}", mode, n)
        try:
            mem = s.srv.request("mem", 30, cmd="mem", settle=1.0)
            deltas[mode] = (mem["rss_kib"] - s.rss0) * 1024
            if mode == "subs":
                out["subscriptions"] = (mem.get("topics") or {}).get("subscriptions")
        finally:
            s.close()
    subs = n * SUBS_PER_CLIENT
    out["per_subscription_bytes"] = (deltas["subs"] - deltas["none"]) / subs
    out["per_connection_bytes"] = deltas["none"] / n
    out["subscriptions_expected"] = subs
    entries = HISTORY_TOPICS * HISTORY_PER_TOPIC
    s = Scenario("mem-history", "none", 0, history_size=HISTORY_PER_TOPIC, clients=False)
    try:
        h = s.srv.request("history", 180, cmd="history", entries=entries)
    finally:
        s.close()
    held = (h.get("topics") or {}).get("history_entries")
    out.update(history_entries=held, history_published=h["published"], history_item_bytes=h["mean_bytes"],
               per_history_entry_bytes=(h["after_kib"] - h["before_kib"]) * 1024 / max(held or entries, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "server":
        run_role(server_main(args))
        return 0
    if args.role == "client":
        run_role(client_main(args))
        return 0
    env = env_info()
    if (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {CLIENT_CORE})  # keep the orchestrator off the server's core
    cmdline = "python -m bench.bench_topics " + " ".join(argv if argv is not None else sys.argv[1:])
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(format_env(env))
    print(f"command: {cmdline}; load average before: {' '.join(load)}")
    print(f"N={args.clients}; server on core {SERVER_CORE}, load generators on core {CLIENT_CORE}; "
          f"frame {FRAME_LEN} B; reps {args.reps}; ~{args.deliveries} deliveries per phase")
    jf = open(args.json, "w") if args.json else None  # noqa: SIM115

    def out(rec: dict[str, Any]) -> None:
        if jf:
            jf.write(json.dumps(rec) + "\n")
            jf.flush()

    out({"kind": "env", "command": cmdline, **env, "load": load})
    n = args.clients
    # e: the clients of c, 16 messages per turn to *every* topic (1600 per turn): each client gets 16
    # per write, as in b at 16: what choosing its frames among 100 topics costs, at equal writes
    plan = {"a": ("none", (16, 1)), "b": ("one", (16, 1)), "c": ("spread", (16,)),
            "e": ("spread", (16 * SPREAD_TOPICS,))}
    scenarios: dict[str, Scenario] = {}
    phases: list[dict[str, Any]] = []
    t_start = time.monotonic()
    try:
        for name in [s for s in args.scenarios if s in plan]:
            scenarios[name] = Scenario(name, plan[name][0], n)
            print(f"{name}: {n} clients connected", file=sys.stderr)
        for s in scenarios.values():  # warm-up, not recorded
            s.phase(messages_for(s, 16, args.deliveries // 10), 16)
        names = list(scenarios)
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[: rep % len(names)] if names else []
            for burst in sorted({b for _, bs in plan.values() for b in bs}, reverse=True):
                for name in order:
                    if burst not in plan[name][1]:
                        continue
                    s = scenarios[name]
                    r = s.phase(messages_for(s, burst, args.deliveries), burst)
                    r["rep"] = rep
                    phases.append(r)
                    out(r)
                    print(f"  rep {rep} {name} K={burst:2d}: {r['deliveries']:,} deliveries, cpu {r['cpu_us']:.3f} µs"
                          f"/delivery{'' if r['ok'] else '  NOT OK: ' + json.dumps(r)}", file=sys.stderr)
    finally:
        for s in scenarios.values():
            s.close()

    med: dict[tuple[str, int], float] = {}
    rows = []
    for name, (_, bursts) in plan.items():
        for burst in bursts:
            got = [p for p in phases if p["scenario"] == name and p["burst"] == burst]
            if not got:
                continue
            cpu = statistics.median(p["cpu_us"] for p in got)
            med[(name, burst)] = cpu
            ok = all(p["ok"] for p in got)
            rows.append([name, str(burst), f"{got[0]['messages']:,}", f"{got[0]['deliveries']:,}", f"{cpu:.3f}",
                         "yes" if ok else "NO"])
            out({"kind": "summary", "scenario": name, "burst": burst, "cpu_us": cpu, "ok": ok})
    print()
    if rows:
        print(markdown_table(["scenario", "msgs/turn", "messages", "deliveries", "cpu µs/delivery", "all delivered"],
                             rows))
    print()

    def ratio(what: str, x: tuple[str, int], y: tuple[str, int], target: float | None) -> None:
        if x in med and y in med:
            r = med[x] / med[y]
            verdict = "" if target is None else f" (target <= {target:.2f}: {'met' if r <= target else 'MISSED'})"
            print(f"{what}: {r:.3f}{verdict}")
            out({"kind": "ratio", "what": what, "ratio": r, "target": target})

    ratio("b/a one topic vs no topic, 16/turn", ("b", 16), ("a", 16), 1.05)
    ratio("b/a one topic vs no topic, 1/turn", ("b", 1), ("a", 1), 1.05)
    ratio("c16/b16 100 topics vs one topic, 16/turn", ("c", 16), ("b", 16), 1.5)
    ratio("c16/b1  100 topics at 16/turn vs one topic at 1/turn (like for like: each client of c gets "
          f"~{16 / SPREAD_TOPICS:.2f} msg/turn, one frame per write)", ("c", 16), ("b", 1), 1.5)
    ratio("e/b16   100 topics, 16 per topic per turn, vs one topic at 16/turn (16 frames per write in both; "
          "per-message work shared by 10 clients instead of 1000)", ("e", 16 * SPREAD_TOPICS), ("b", 16), None)

    if "d" in args.scenarios:
        mem = measure_memory(n)
        out({"kind": "memory", **mem})
        print(f"memory: {mem['per_subscription_bytes']:.0f} B per subscription ({n} clients x {SUBS_PER_CLIENT} topics, "
              f"stats subscriptions {mem['subscriptions']}; {mem['per_connection_bytes']:.0f} B per plain connection), "
              f"{mem['per_history_entry_bytes']:.0f} B per history entry ({mem['history_entries']} held of "
              f"{mem['history_published']} published, items of {mem['history_item_bytes']:.0f} B JSON)")
    with open("/proc/loadavg") as f:
        print(f"total time {time.monotonic() - t_start:.0f}s; load average after: {' '.join(f.read().split()[:3])}")
    if jf:
        jf.close()
    return 0 if all(p["ok"] for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
