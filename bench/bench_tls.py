"""Fan-out over TLS vs plain TCP: server CPU per delivery, and the ratio.

    python -m bench.bench_tls --clients 200 --messages 2000 --per-tick 1,10 --reps 3 [--json]

Server and clients run in separate processes (pinned to different CPUs when there
are two or more). The server (fastws on uvloop, ``ssl=`` from a trustme certificate
made at start) waits for N clients, then broadcasts M messages of 100 bytes, K per
loop turn, and measures its own CPU time (getrusage, user+sys) from the first
broadcast until every client has received every byte. The client process counts
bytes per connection and tells the orchestrator when all have everything.

Roles (internal): ``--role server|client`` talk JSON lines over stdin/stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import FRAME_LEN, env_info, format_env, make_message, raise_nofile

REPO = Path(__file__).resolve().parents[1]


# -- server role -----------------------------------------------------------------------------------


async def server_role(args: argparse.Namespace) -> None:
    import fastws

    settings: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_connections": args.clients + 10,
                                "heartbeat_interval": 3600, "max_queued_bytes": 64 << 20}
    if args.certfile:
        settings["ssl"] = {"certfile": args.certfile, "keyfile": args.keyfile}
    server = fastws.Server(**settings)
    await server.start()
    emit(port=server.port)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "wait":
            async with asyncio.timeout(60):
                while server.connection_count < cmd["n"]:
                    await asyncio.sleep(0.01)
            emit(connected=server.connection_count)
        elif cmd["cmd"] == "run":
            m, k = cmd["messages"], cmd["per_tick"]
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            d0 = server.stats()["deliveries"]
            for i in range(0, m, k):
                for j in range(i, min(i + k, m)):
                    server.broadcast(make_message(j))
                await asyncio.sleep(0)
            t_loop = time.perf_counter() - t0
            done = await reader.readline()  # the orchestrator says: the clients have it all
            assert json.loads(done)["cmd"] == "done"
            r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            emit(user=r1.ru_utime - r0.ru_utime, sys=r1.ru_stime - r0.ru_stime, elapsed=t1 - t0,
                 loop=t_loop, deliveries=server.stats()["deliveries"] - d0)
        elif cmd["cmd"] == "quit":
            break
    await server.stop()


# -- client role -----------------------------------------------------------------------------------


class Counter(asyncio.Protocol):
    def __init__(self, owner: Clients) -> None:
        self.owner = owner
        self.got = 0
        self.upgraded = False
        self.head = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        transport.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            assert b" 101 " in head.split(b"\r\n", 1)[0], head
            self.upgraded = True
            self.owner.upgraded += 1
        before = self.got
        self.got += len(data)
        want = self.owner.want
        if want and before < want <= self.got:
            self.owner.complete += 1
            if self.owner.complete == len(self.owner.conns):
                self.owner.all_done.set()


class Clients:
    def __init__(self) -> None:
        self.conns: list[Counter] = []
        self.upgraded = 0
        self.complete = 0
        self.want = 0
        self.all_done = asyncio.Event()


async def client_role(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ctx = None
    if args.cafile:
        ctx = ssl.create_default_context(cafile=args.cafile)
    owner = Clients()
    for i in range(args.clients):
        _, proto = await loop.create_connection(lambda: Counter(owner), "127.0.0.1", args.port, ssl=ctx,
                                                server_hostname="127.0.0.1" if ctx else None)
        owner.conns.append(proto)
        if i % 50 == 49:
            await asyncio.sleep(0)
    async with asyncio.timeout(60):
        while owner.upgraded < args.clients:
            await asyncio.sleep(0.01)
    owner.want = args.messages * FRAME_LEN
    emit(ready=args.clients)
    t0 = time.perf_counter()
    async with asyncio.timeout(300):
        await owner.all_done.wait()
    bad = [c.got for c in owner.conns if c.got != owner.want]
    emit(done=True, elapsed=time.perf_counter() - t0, wrong_byte_counts=len(bad))
    for c in owner.conns:
        c.transport.close()


# -- orchestrator ------------------------------------------------------------------------------------


def emit(**msg: Any) -> None:
    print(json.dumps(msg), flush=True)


class Child:
    def __init__(self, argv: list[str], cpu: int | None) -> None:
        pre = ["taskset", "-c", str(cpu)] if cpu is not None else []
        self.p = subprocess.Popen(pre + [sys.executable, "-m", "bench.bench_tls", *argv], cwd=REPO,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, **cmd: Any) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited ({self.p.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def run_once(tls: bool, n: int, m: int, k: int, files: dict[str, str]) -> dict[str, Any]:
    two_cpus = (os.cpu_count() or 1) >= 2
    sargs = ["--role", "server"] + (["--certfile", files["cert"], "--keyfile", files["key"]] if tls else [])
    srv = Child(sargs, 0 if two_cpus else None)
    try:
        port = srv.read()["port"]
        cargs = ["--role", "client", "--port", str(port), "--clients", str(n), "--messages", str(m)]
        cli = Child(cargs + (["--cafile", files["ca"]] if tls else []), 1 if two_cpus else None)
        try:
            srv.send(cmd="wait", n=n)
            srv.read()
            cli.read()  # ready
            srv.send(cmd="run", messages=m, per_tick=k)
            done = cli.read()
            srv.send(cmd="done")
            res = srv.read()
            srv.send(cmd="quit")
        finally:
            cli.close()
    finally:
        srv.close()
    deliveries = res["deliveries"]
    assert deliveries == n * m and done["wrong_byte_counts"] == 0, (res, done)
    return {
        "tls": tls, "clients": n, "messages": m, "per_tick": k,
        "server_cpu_us_per_delivery": (res["user"] + res["sys"]) / deliveries * 1e6,
        "server_user_us": res["user"] / deliveries * 1e6,
        "server_sys_us": res["sys"] / deliveries * 1e6,
        "deliveries_per_s": deliveries / done["elapsed"],
    }


def make_cert(tmp: str) -> dict[str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = {"ca": f"{tmp}/ca.pem", "cert": f"{tmp}/cert.pem", "key": f"{tmp}/key.pem"}
    ca.cert_pem.write_to_path(files["ca"])
    cert.cert_chain_pems[0].write_to_path(files["cert"])
    cert.private_key_pem.write_to_path(files["key"])
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_tls", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--per-tick", default="1,10", help="messages per loop turn, comma-separated")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    # internal roles
    p.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--certfile", help=argparse.SUPPRESS)
    p.add_argument("--keyfile", help=argparse.SUPPRESS)
    p.add_argument("--cafile", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        import uvloop

        raise_nofile()
        uvloop.run(server_role(args) if args.role == "server" else client_role(args))
        return 0

    raise_nofile()
    env = env_info()
    ks = [int(x) for x in args.per_tick.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = make_cert(tmp)
        for k in ks:
            runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for _ in range(args.reps):  # interleaved: this VM is noisy over time
                for tls in (False, True):
                    r = run_once(tls, args.clients, args.messages, k, files)
                    runs[tls].append(r)
                    if args.json:
                        print(json.dumps({**r, "env": env}), flush=True)
            med = {tls: {key: statistics.median(r[key] for r in rs) for key in
                         ("server_cpu_us_per_delivery", "server_user_us", "server_sys_us", "deliveries_per_s")}
                   for tls, rs in runs.items()}
            rows.append((k, med))
    if not args.json:
        print(format_env(env))
        print(f"N={args.clients} clients, M={args.messages} messages of {FRAME_LEN - 2} B, "
              f"median of {args.reps} interleaved runs; server pinned to CPU0, clients to CPU1\n")
        print("| per tick | transport | server CPU µs/delivery (user / sys) | deliveries/s | TLS / plain CPU |")
        print("|---|---|---|---|---|")
        for k, med in rows:
            for tls in (False, True):
                m = med[tls]
                ratio = m["server_cpu_us_per_delivery"] / med[False]["server_cpu_us_per_delivery"]
                print(f"| {k} | {'TLS' if tls else 'plain'} | {m['server_cpu_us_per_delivery']:.3f} "
                      f"({m['server_user_us']:.3f} / {m['server_sys_us']:.3f}) | {m['deliveries_per_s']:,.0f} "
                      f"| {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
