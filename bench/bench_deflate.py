"""permessage-deflate: compressors, and fastws vs websockets with compression on.

``python -m bench.bench_deflate compressors`` times one compression of realistic
dashboard items (300 B - 2 KB JSON) per compressor and level.

``python -m bench.bench_deflate run [--clients 1000] [--messages 100] [--repeats 3]``
(``--batch K``: K items per loop turn) starts, per implementation, a server process (core 0) and a client process (core 1)
with N raw connections that offer ``permessage-deflate; client_max_window_bits`` (as
browsers do) or nothing; the server broadcasts M items, one per loop turn; clients
count frames and bytes. Reported: server CPU (getrusage user+sys, from the first
publish until every client has every message) per delivery, bytes on the wire per
delivery, and idle server RSS per connection before any broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import select
import shutil
import subprocess
import sys
import time
import zlib
from statistics import median
from typing import Any

from bench._util import REPO_ROOT, cpu_s, env_info, format_env, markdown_table, rss_kib, run_role

IMPLS = {  # name: (server, client offer)
    "fastws deflate": ("fastws", "permessage-deflate; client_max_window_bits"),
    "fastws plain": ("fastws", ""),
    "fastws, deflate off": ("fastws-off", "permessage-deflate; client_max_window_bits"),
    "websockets deflate": ("websockets", "permessage-deflate; client_max_window_bits"),
}


def dashboard_item(i: int) -> dict[str, Any]:
    """A dashboard update of 300 B - 2 KB of JSON (same items for every implementation)."""
    rnd = random.Random(i)
    rows = [{"sensor": f"line-{k}", "value": round(rnd.uniform(0, 100), 3), "status": rnd.choice(["ok", "warn"])}
            for k in range(rnd.randint(5, 36))]
    return {"seq": i, "ts": 1764500000.0 + i / 10, "kind": "metrics", "rows": rows}


# -- compressors --------------------------------------------------------------------------------


def compressors() -> None:
    from fastws._deflate import ZLIB_VERSION, Deflater

    payloads = [json.dumps(dashboard_item(i), separators=(",", ":")).encode() for i in range(500)]
    raw = sum(map(len, payloads))
    fns: dict[str, Any] = {}

    def timeit(name: str, fn: Any) -> None:
        fns[name] = fn

    for level in (1, 6, 9):
        d = Deflater(level)
        timeit(f"fastws._deflate (zlib {ZLIB_VERSION} C API, reset per message), level {level}",
               lambda p, d=d: d.compress_message(p))

    def py_zlib(p: bytes, level: int = 6) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        return (c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]

    timeit("stdlib zlib.compressobj per message (Python calls), level 6", py_zlib)
    try:
        import deflate  # libdeflate; not a dependency of fastws

        for level in (1, 6):
            timeit(f"libdeflate ({deflate.__name__} package) one-shot, level {level}",
                   lambda p, level=level: deflate.deflate_compress(p, level))
    except ImportError:
        print("libdeflate (the `deflate` package) is not installed: left out")
    best = {name: 1e9 for name in fns}
    for _ in range(7):  # interleaved rounds, best of each
        for name, fn in fns.items():
            t = time.perf_counter()
            for p in payloads:
                fn(p)
            best[name] = min(best[name], (time.perf_counter() - t) / len(payloads))
    rows = [[name, f"{best[name] * 1e6:.1f}", f"{raw / sum(len(fn(p)) for p in payloads):.2f}"]
            for name, fn in fns.items()]
    print(f"{len(payloads)} items, {raw / len(payloads):.0f} B of JSON on average (300 B - 2 KB)\n")
    print(markdown_table(["compressor", "µs per message", "ratio"], rows))


# -- server and client roles ----------------------------------------------------------------


def _say(**msg: Any) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


async def _server(kind: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    if kind.startswith("fastws"):
        import fastws

        srv = fastws.Server(host="127.0.0.1", port=0, compression="off" if kind == "fastws-off" else "deflate",
                            max_connections=n + 10, heartbeat_interval=3600, max_queued_bytes=256 << 20)
        await srv.start()
        port, count, publish = srv.port, (lambda: srv.connection_count), srv.broadcast
    else:
        from websockets.asyncio.server import broadcast, serve

        conns: set[Any] = set()

        async def handler(ws: Any) -> None:
            conns.add(ws)
            try:
                await ws.wait_closed()
            finally:
                conns.discard(ws)

        ws_srv = await serve(handler, "127.0.0.1", 0, compression="deflate", ping_interval=None, max_queue=None,
                             write_limit=256 << 20)
        port = ws_srv.sockets[0].getsockname()[1]
        count = conns.__len__

        def publish(item: Any) -> None:
            broadcast(conns, json.dumps(item, separators=(",", ":")))

    _say(port=port)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    t0 = 0.0
    while line := (await reader.readline()).decode().split():
        if line[0] == "count":
            _say(count=count())
        elif line[0] == "mem":
            gc.collect()
            await asyncio.sleep(0.5)
            _say(rss_kib=rss_kib())
        elif line[0] == "run":
            items = [dashboard_item(i) for i in range(int(line[1]))]
            batch = int(line[2])
            t0 = cpu_s()
            for i in range(0, len(items), batch):  # ``batch`` items per loop turn
                for item in items[i:i + batch]:
                    publish(item)
                await asyncio.sleep(0)
            _say(published=len(items))
        elif line[0] == "cpu":
            _say(cpu=cpu_s() - t0)


class _Conn(asyncio.Protocol):
    def __init__(self, offer: str, expect: int, done: Any) -> None:
        self.offer, self.expect, self.done = offer, expect, done
        self.buf = b""
        self.upgraded = asyncio.get_running_loop().create_future()
        self.frames = self.bytes = 0

    def connection_made(self, transport: Any) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {self.offer}\r\n" if self.offer else ""
        transport.write(f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode())

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.buf += data
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            self.upgraded.set_result(b"permessage-deflate" in head)
            self.buf, data = b"", rest
        self.bytes += len(data)
        buf = self.buf + data if self.buf else data
        pos, end = 0, len(buf)
        while pos + 2 <= end:  # count whole frames
            n, h = buf[pos + 1] & 0x7F, 2
            if n == 126:
                if pos + 4 > end:
                    break
                n, h = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if pos + 10 > end:
                    break
                n, h = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if pos + h + n > end:
                break
            pos += h + n
            self.frames += 1
            if self.frames == self.expect:
                self.done()
        self.buf = buf[pos:]


async def _client(port: int, n: int, offer: str, expect: int) -> None:
    loop = asyncio.get_running_loop()
    left = [n]
    finished = loop.create_future()

    def done() -> None:
        left[0] -= 1
        if left[0] == 0:
            finished.set_result(None)

    conns = []
    for _ in range(n):
        _, c = await loop.create_connection(lambda: _Conn(offer, expect, done), "127.0.0.1", port)
        conns.append(c)
    negotiated = sum([await c.upgraded for c in conns])
    _say(connected=n, negotiated=negotiated)
    await asyncio.wait_for(finished, 600)
    _say(done=sum(c.bytes for c in conns), frames=sum(c.frames for c in conns))


# -- the measurement --------------------------------------------------------------------------


class _Child:
    def __init__(self, argv: list[str], core: int) -> None:
        cmd = [sys.executable, "-m", "bench.bench_deflate", *argv]
        if shutil.which("taskset") and (os.cpu_count() or 1) > core:
            cmd = ["taskset", "-c", str(core), *cmd]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT, env=env)

    def ask(self, cmd: str | None, timeout: float = 120) -> dict[str, Any]:
        assert self.p.stdin is not None and self.p.stdout is not None
        if cmd:
            self.p.stdin.write(cmd.encode() + b"\n")
            self.p.stdin.flush()
        if not select.select([self.p.stdout], [], [], timeout)[0]:
            raise TimeoutError(f"no answer to {cmd!r} in {timeout}s")
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"child exited (rc={self.p.wait()}) on {cmd!r}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def measure(name: str, n: int, m: int, batch: int) -> dict[str, Any]:
    kind, offer = IMPLS[name]
    srv = _Child(["_server", kind, str(n)], core=0)
    cli = None
    try:
        port = srv.ask(None, 30)["port"]
        base = srv.ask("mem")["rss_kib"]
        cli = _Child(["_client", str(port), str(n), offer, str(m)], core=1)
        negotiated = cli.ask(None, 120)["negotiated"]
        deadline = time.monotonic() + 60
        while srv.ask("count")["count"] < n and time.monotonic() < deadline:
            time.sleep(0.05)
        idle = srv.ask("mem")["rss_kib"]
        srv.ask(f"run {m} {batch}", 600)
        got = cli.ask(None, 600)
        cpu = srv.ask("cpu")["cpu"]
    finally:
        srv.close()
        if cli is not None:
            cli.close()
    assert got["frames"] == n * m, got
    return {"impl": name, "negotiated": negotiated, "cpu_us": cpu / (n * m) * 1e6, "bytes": got["done"] / (n * m),
            "idle_kib": (idle - base) / n}


def run(n: int, m: int, repeats: int, batch: int) -> None:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in IMPLS}
    for r in range(repeats):  # interleaved
        for name in IMPLS:
            res = measure(name, n, m, batch)
            results[name].append(res)
            print(f"run {r + 1}: {json.dumps(res)}", file=sys.stderr)
    rows = []
    base = median(x["cpu_us"] for x in results["fastws plain"])
    ws = median(x["cpu_us"] for x in results["websockets deflate"])
    for name, rs in results.items():
        cpu = median(x["cpu_us"] for x in rs)
        rows.append([name, f"{rs[0]['negotiated']}/{n}", f"{cpu:.2f}", f"{cpu / base:.2f}x", f"{cpu / ws:.3f}x",
                     f"{median(x['bytes'] for x in rs):.0f}", f"{median(x['idle_kib'] for x in rs):.2f}"])
    print(format_env(env_info()))
    print(f"N={n} clients, M={m} items (300 B - 2 KB JSON), {batch} per loop turn, "
          f"median of {repeats} interleaved runs; load average before: {os.getloadavg()[0]:.1f}\n")
    print(markdown_table(["server", "deflate", "CPU µs/delivery", "vs fastws plain", "vs websockets deflate",
                          "bytes/delivery", "idle KiB/conn"], rows))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        run_role(_server(sys.argv[2], int(sys.argv[3])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        run_role(_client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("what", choices=("compressors", "run"))
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1, help="items broadcast per loop turn (fastws: one write per turn)")
    a = p.parse_args()
    compressors() if a.what == "compressors" else run(a.clients, a.messages, a.repeats, a.batch)


if __name__ == "__main__":
    main()
