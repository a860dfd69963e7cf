"""Shared pieces of the fastws benchmarks.

This module has two halves:

* the **orchestrator side** (``Child``, ``env_info``, ``percentile`` ...), used by
  ``bench_fanout`` and ``bench_memory`` in the parent process;
* the **child roles**, run as ``python -m bench._common server|client ...``:

  - ``server``: one WebSocket server implementation (``fastws``, ``websockets``,
    ``picows``) driven by JSON-line commands on stdin (``count``, ``run``,
    ``stop``, ``mem``, ``quit``); it measures its own CPU (getrusage) and RSS.
  - ``client``: a cheap load generator: N raw TCP connections on uvloop with a
    hand-written upgrade request. Most connections only count bytes; "sample"
    connections parse every frame, check ``seq`` continuity and record the
    delivery latency from the ``ts`` embedded in each message.

Children talk to the parent with one JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: JSON payload size of every benchmark message, and its unmasked frame size.
PAYLOAD_LEN = 100
FRAME_LEN = PAYLOAD_LEN + 2
#: ``{"seq":,"ts":,"pad":""}`` without the values.
_SKELETON_LEN = 23
IMPLS = ("fastws", "websockets", "picows")


# --------------------------------------------------------------------------- helpers
def make_message(seq: int) -> dict[str, Any]:
    """A dict whose compact JSON encoding is exactly PAYLOAD_LEN bytes."""
    ts = time.time_ns()
    pad = PAYLOAD_LEN - _SKELETON_LEN - len(str(seq)) - len(str(ts))
    return {"seq": seq, "ts": ts, "pad": "x" * pad}


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_jiffies(core: int) -> tuple[int, int] | None:
    """(busy, total) jiffies of one CPU from /proc/stat (busy excludes idle+iowait)."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{core} "):
                    vals = [int(x) for x in line.split()[1:]]
                    total = sum(vals[:8])
                    return total - vals[3] - vals[4], total
    except OSError:
        pass
    return None


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def fastws_status() -> str:
    """'ok' if ``fastws.Server`` is importable, else the reason."""
    try:
        import fastws  # noqa: PLC0415

        fastws.Server  # noqa: B018
        fastws.ServerConfig  # noqa: B018
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def env_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fastws_version = "not importable"
    if fastws_status() == "ok":
        import fastws  # noqa: PLC0415

        fastws_version = getattr(fastws, "__version__", _version("fastws"))
    virt = ""
    if shutil.which("systemd-detect-virt"):
        virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip()
    return {
        "fastws": fastws_version,
        "picows": _version("picows"),
        "aiofastnet": _version("aiofastnet"),
        "msgspec": _version("msgspec"),
        "websockets": _version("websockets"),
        "uvloop": _version("uvloop"),
        "python": platform.python_version(),
        "loop": "uvloop",
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "virt": virt,
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "taskset": bool(shutil.which("taskset")),
    }


def format_env(env: dict[str, Any]) -> str:
    return (
        f"fastws {env['fastws']}, picows {env['picows']} (aiofastnet {env['aiofastnet']}), "
        f"msgspec {env['msgspec']}, websockets {env['websockets']}, uvloop {env['uvloop']}, "
        f"Python {env['python']}, loop {env['loop']}\n"
        f"CPU: {env['cpu']} x{env['cpus']} {env['virt']}, kernel {env['kernel']}, {env['date']}"
    )


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------- orchestrator side
class ChildError(RuntimeError):
    pass


class Child:
    """A child role process with a JSON-lines control channel."""

    def __init__(self, name: str, role_args: list[str], core: int | None = None) -> None:
        self.name = name
        argv = [sys.executable, "-m", "bench._common", *role_args]
        if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > core:
            argv = ["taskset", "-c", str(core), *argv]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
            text=True,
            bufsize=1,
        )
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                print(f"[{self.name}] {line}", file=sys.stderr)
                continue
            if msg.get("event") == "log":
                print(f"[{self.name}] {msg.get('msg')}", file=sys.stderr)
                continue
            self._q.put(msg)
        self._q.put(None)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ChildError(f"{self.name}: cannot send {cmd}: {exc}") from exc

    def recv(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            msg = self._q.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.name}: no {event!r} within {timeout:.0f}s") from None
        if msg is None:
            self.proc.wait(timeout=5)
            raise ChildError(f"{self.name}: exited (rc={self.proc.returncode}) while waiting for {event!r}")
        if msg.get("event") == "error":
            raise ChildError(f"{self.name}: {msg.get('msg')}")
        if msg.get("event") != event:
            raise ChildError(f"{self.name}: expected {event!r}, got {msg}")
        return msg

    def request(self, event: str, wait: float, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.recv(event, wait)

    def close(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
            except ChildError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"[{self.name}] did not quit in {timeout}s, killing pid {self.proc.pid}", file=sys.stderr
                )
                self.proc.kill()
                self.proc.wait(timeout=5)
        # drain the reader so the last lines are printed
        self._t.join(timeout=2)


def wait_count(srv: Child, n: int, timeout: float) -> int:
    """Poll the server's connection count until it reaches n."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = srv.request("count", 10, cmd="count")["count"]
        if count == n:
            return count
        time.sleep(0.05)
    raise ChildError(f"{srv.name}: connection_count={count}, expected {n} after {timeout:.0f}s")


# --------------------------------------------------------------------------- child plumbing
def emit(**msg: Any) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def log(msg: str) -> None:
    emit(event="log", msg=msg)


async def stdin_commands():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        line = line.strip()
        if line:
            yield json.loads(line)


# --------------------------------------------------------------------------- server impls
class _Impl:
    port: int

    async def start(self, mode: str) -> None: ...
    def count(self) -> int: ...
    def broadcast(self, obj: Any) -> int: ...
    async def stop(self) -> None: ...


class WebsocketsImpl(_Impl):
    """``websockets`` asyncio server + ``websockets.asyncio.server.broadcast``."""

    async def start(self, mode: str) -> None:
        import msgspec  # noqa: PLC0415
        from websockets.asyncio.server import broadcast, serve  # noqa: PLC0415
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415

        self._enc = msgspec.json.Encoder().encode
        self._broadcast = broadcast
        self.conns: set[Any] = set()
        conns = self.conns

        async def handler(ws: Any) -> None:
            conns.add(ws)
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            finally:
                conns.discard(ws)

        kwargs: dict[str, Any] = {"backlog": 4096}
        if mode == "fanout":
            kwargs["ping_interval"] = None  # no keepalive traffic during the measurement
        self.server = await serve(handler, "127.0.0.1", 0, **kwargs)
        self.port = self.server.sockets[0].getsockname()[1]

    def count(self) -> int:
        return len(self.conns)

    def broadcast(self, obj: Any) -> int:
        self._broadcast(self.conns, self._enc(obj), text=True)
        return len(self.conns)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class PicowsImpl(_Impl):
    """picows defaults; broadcast = plain Python loop of ``transport.send``."""

    async def start(self, mode: str) -> None:
        import msgspec  # noqa: PLC0415
        from picows import WSListener, WSMsgType, ws_create_server  # noqa: PLC0415

        self._enc = msgspec.json.Encoder().encode
        self._text = WSMsgType.TEXT
        self.transports: set[Any] = set()
        transports = self.transports

        class Listener(WSListener):
            def on_ws_connected(self, transport: Any) -> None:
                transports.add(transport)

            def on_ws_disconnected(self, transport: Any) -> None:
                transports.discard(transport)

        self.server = await ws_create_server(lambda request: Listener(), "127.0.0.1", 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]

    def count(self) -> int:
        return len(self.transports)

    def broadcast(self, obj: Any) -> int:
        payload = self._enc(obj)
        text = self._text
        for t in self.transports:
            t.send(text, payload)
        return len(self.transports)

    async def stop(self) -> None:
        self.server.close()
        for t in list(self.transports):
            t.disconnect()
        await self.server.wait_closed()


class FastwsImpl(_Impl):
    """``fastws.Server``; gets the dict and serializes it itself."""

    heartbeat_interval: float = 3600.0

    async def start(self, mode: str) -> None:
        import fastws  # noqa: PLC0415

        kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_connections": 10000}
        if mode == "fanout":
            # no heartbeat traffic during the measurement (byte-counting clients)
            kwargs["heartbeat_interval"] = self.heartbeat_interval
        self.server = fastws.Server(fastws.ServerConfig(**kwargs))
        await self.server.start()
        self.port = self.server.port
        self._broadcast = self.server.broadcast

    def count(self) -> int:
        return self.server.connection_count

    def broadcast(self, obj: Any) -> int:
        return self._broadcast(obj)

    async def stop(self) -> None:
        await self.server.stop()


IMPL_CLASSES = {"fastws": FastwsImpl, "websockets": WebsocketsImpl, "picows": PicowsImpl}


async def server_main(args: argparse.Namespace) -> None:
    raise_nofile()
    impl: _Impl = IMPL_CLASSES[args.impl]()
    if args.impl == "fastws" and args.fastws_heartbeat:
        FastwsImpl.heartbeat_interval = args.fastws_heartbeat
    try:
        await impl.start(args.mode)
    except Exception as exc:  # noqa: BLE001
        emit(event="error", msg=f"start failed: {type(exc).__name__}: {exc}")
        return
    emit(event="ready", port=impl.port, pid=os.getpid(), rss_kib=rss_kib())
    seq = 0
    phase: tuple[Any, Any, int, int] | None = None
    async for cmd in stdin_commands():
        c = cmd["cmd"]
        if c == "count":
            emit(event="count", count=impl.count())
        elif c == "run":
            m, burst = int(cmd["messages"]), int(cmd["burst"])
            bcast = impl.broadcast
            sleep = asyncio.sleep
            gc.collect()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            j0 = cpu_jiffies(args.core)
            t0 = time.monotonic_ns()
            sent = 0
            queued = 0
            while sent < m:
                k = min(burst, m - sent)
                for _ in range(k):
                    r = bcast(make_message(seq))
                    if r is not None:
                        queued += r
                    seq += 1
                sent += k
                await sleep(0)
            t1 = time.monotonic_ns()
            phase = (ru0, j0, t0, t1)
            emit(event="sent", t_start=t0, t_loop_end=t1, queued=queued)
        elif c == "stop":
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            j1 = cpu_jiffies(args.core)
            assert phase is not None
            ru0, j0, t0, t1 = phase
            res: dict[str, Any] = {
                "user_s": ru1.ru_utime - ru0.ru_utime,
                "sys_s": ru1.ru_stime - ru0.ru_stime,
                "vcsw": ru1.ru_nvcsw - ru0.ru_nvcsw,
                "ivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
                "maxrss_kib": ru1.ru_maxrss,
            }
            if j0 and j1:
                hz = os.sysconf("SC_CLK_TCK")
                res["core_busy_s"] = (j1[0] - j0[0]) / hz
            emit(event="cpu", **res)
        elif c == "mem":
            settle = float(cmd.get("settle", 3.0))
            gc.collect()
            await asyncio.sleep(settle)
            samples = []
            for _ in range(5):
                samples.append(rss_kib())
                await asyncio.sleep(0.2)
            emit(event="mem", rss_kib=statistics.median(samples), samples=samples, count=impl.count())
        elif c == "quit":
            t = time.monotonic()
            try:
                await asyncio.wait_for(impl.stop(), 10)
                log(f"stop() took {time.monotonic() - t:.3f}s") if time.monotonic() - t > 1 else None
            except Exception as exc:  # noqa: BLE001
                log(f"stop() failed after {time.monotonic() - t:.1f}s: {type(exc).__name__}: {exc}")
            emit(event="bye")
            os._exit(0)


# --------------------------------------------------------------------------- load generator
def _handshake(port: int) -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Conn(asyncio.Protocol):
    """One client connection. Counts bytes, or (sample) parses frames and records latency."""

    __slots__ = (
        "client",
        "sample",
        "tr",
        "hs",
        "upgraded",
        "got",
        "target",
        "buf",
        "frames",
        "last_seq",
        "done",
    )

    def __init__(self, client: LoadClient, sample: bool) -> None:
        self.client = client
        self.sample = sample
        self.tr: asyncio.Transport | None = None
        self.hs: bytearray | None = bytearray()
        self.upgraded: asyncio.Future[None] = client.loop.create_future()
        self.got = 0  # bytes (counting) or data frames (sample), cumulative
        self.target = 0
        self.buf = bytearray()
        self.frames = 0
        self.last_seq = -1
        self.done = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.tr = transport  # type: ignore[assignment]
        self.tr.write(self.client.handshake)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.on_lost(self, exc)
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.hs is not None:
            self.hs += data
            end = self.hs.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.hs[:end])
            data = bytes(self.hs[end + 4 :])
            self.hs = None
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(
                    ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                )
                return
            self.upgraded.set_result(None)
            if not data:
                return
        if not self.sample:
            self.got += len(data)
            if not self.done and self.got >= self.target:
                self.done = True
                self.client.conn_done()
            return
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        now = time.time_ns()
        client = self.client
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            b0 = buf[pos]
            ln = buf[pos + 1] & 0x7F
            hdr = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = (buf[pos + 2] << 8) | buf[pos + 3]
                hdr = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            end = pos + hdr + ln
            if end > n:
                break
            op = b0 & 0x0F
            if op in (1, 2):
                try:
                    msg = client.decode(buf[pos + hdr : end])
                    client.latencies.append(now - msg.ts)
                    if self.last_seq >= 0 and msg.seq != self.last_seq + 1:
                        client.gaps += 1
                    self.last_seq = msg.seq
                except Exception:  # noqa: BLE001
                    client.bad_frames += 1
                self.got += 1
            elif op == 9:  # ping -> masked pong (zero mask key)
                payload = bytes(buf[pos + hdr : end])
                self.tr.write(bytes((0x8A, 0x80 | len(payload), 0, 0, 0, 0)) + payload)
                client.pings += 1
            elif op == 8:
                client.closes += 1
            else:
                client.other_frames += 1
            pos = end
        if pos:
            del buf[:pos]
        if not self.done and self.got >= self.target:
            self.done = True
            client.conn_done()


class LoadClient:
    def __init__(self, args: argparse.Namespace) -> None:
        import msgspec  # noqa: PLC0415

        class Msg(msgspec.Struct):
            seq: int
            ts: int

        self.loop = asyncio.get_running_loop()
        self.args = args
        self.handshake = _handshake(args.port)
        self.decode = msgspec.json.Decoder(Msg).decode
        self.conns: list[Conn] = []
        self.sample_idx: set[int] | None = None  # None = all
        self.latencies: list[int] = []
        self.gaps = self.bad_frames = self.pings = self.closes = self.other_frames = self.lost = 0
        self.pending = 0
        self.phase_active = False
        self.t_done = 0
        self.timer: asyncio.TimerHandle | None = None
        self.ru0: Any = None
        self.expect_messages = 0

    def set_sampling(self, n_total: int, n_sample: int) -> None:
        if n_sample < 0 or n_sample >= n_total:
            self.sample_idx = None
        else:
            step = n_total / max(n_sample, 1)
            self.sample_idx = {int(i * step) for i in range(n_sample)}

    async def connect(self, total: int) -> dict[str, Any]:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(self.args.concurrency)
        errors: list[str] = []

        async def one(i: int) -> None:
            sample = self.sample_idx is None or i in self.sample_idx
            async with sem:
                for attempt in range(3):
                    conn = Conn(self, sample)
                    try:
                        await asyncio.wait_for(
                            self.loop.create_connection(lambda c=conn: c, "127.0.0.1", self.args.port), 20
                        )
                        await asyncio.wait_for(conn.upgraded, 20)
                    except Exception as exc:  # noqa: BLE001
                        if conn.tr is not None:
                            conn.tr.abort()
                        if attempt == 2:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        continue
                    self.conns.append(conn)
                    return

        start = len(self.conns)
        await asyncio.gather(*(one(i) for i in range(start, total)))
        return {
            "n": len(self.conns),
            "seconds": time.monotonic() - t0,
            "errors": errors[:5],
            "n_errors": len(errors),
        }

    async def close_all(self) -> None:
        for c in self.conns:
            if c.tr is not None:
                c.tr.close()
        self.conns.clear()
        await asyncio.sleep(0.2)

    def on_lost(self, conn: Conn, exc: Exception | None) -> None:
        if conn.hs is None:
            self.lost += 1

    def arm(self, messages: int, timeout: float) -> None:
        self.latencies = []
        self.gaps = self.bad_frames = self.closes = self.other_frames = 0
        self.pending = 0
        self.expect_messages = messages
        for c in self.conns:
            c.target += messages if c.sample else messages * FRAME_LEN
            c.done = c.got >= c.target
            if not c.done:
                self.pending += 1
        self.phase_active = True
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.timer = self.loop.call_later(timeout, self.finish, True)
        if self.pending == 0:
            self.loop.call_soon(self.finish, False)

    def conn_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.phase_active:
            self.t_done = time.monotonic_ns()
            self.finish(False)

    def finish(self, timed_out: bool) -> None:
        if not self.phase_active:
            return
        self.phase_active = False
        if self.timer is not None:
            self.timer.cancel()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        lat_us = [x / 1000.0 for x in self.latencies]
        missing = sum(max(0, c.target - c.got) for c in self.conns if not c.sample)
        missing_frames = sum(max(0, c.target - c.got) for c in self.conns if c.sample)
        extra = sum(max(0, c.got - c.target) for c in self.conns if not c.sample)
        emit(
            event="done",
            ok=not timed_out and missing == 0 and extra == 0 and self.gaps == 0 and self.bad_frames == 0,
            timed_out=timed_out,
            t_done=self.t_done if not timed_out else time.monotonic_ns(),
            conns_pending=self.pending,
            missing_bytes=missing,
            missing_frames=missing_frames,
            extra_bytes=extra,
            gaps=self.gaps,
            bad_frames=self.bad_frames,
            closes=self.closes,
            other_frames=self.other_frames,
            pings=self.pings,
            lost=self.lost,
            samples=len(lat_us),
            p50_us=percentile(lat_us, 50),
            p90_us=percentile(lat_us, 90),
            p99_us=percentile(lat_us, 99),
            max_us=max(lat_us) if lat_us else None,
            client_cpu_s=(ru1.ru_utime - self.ru0.ru_utime) + (ru1.ru_stime - self.ru0.ru_stime),
        )


async def client_main(args: argparse.Namespace) -> None:
    raise_nofile()
    client = LoadClient(args)
    client.set_sampling(args.clients, args.sample)
    if args.clients:
        emit(event="connected", **await client.connect(args.clients))
    else:
        emit(event="ready")
    async for cmd in stdin_commands():
        c = cmd["cmd"]
        if c == "connect":
            emit(event="connected", **await client.connect(int(cmd["total"])))
        elif c == "close_all":
            await client.close_all()
            emit(event="closed")
        elif c == "expect":
            client.arm(int(cmd["messages"]), float(cmd["timeout"]))
            emit(event="armed")
        elif c == "quit":
            for conn in client.conns:
                if conn.tr is not None:
                    conn.tr.abort()
            emit(event="bye")
            os._exit(0)


def _child_main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._common")
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("server")
    s.add_argument("--impl", choices=IMPLS, required=True)
    s.add_argument("--mode", choices=("fanout", "memory"), default="fanout")
    s.add_argument("--core", type=int, default=0, help="CPU whose /proc/stat busy time is reported")
    s.add_argument("--fastws-heartbeat", type=float, default=0.0)
    c = sub.add_parser("client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--clients", type=int, default=0, help="connections to open at start")
    c.add_argument("--sample", type=int, default=16, help="connections that parse frames (-1: all)")
    c.add_argument("--concurrency", type=int, default=100, help="connects in flight")
    args = p.parse_args(argv)
    import uvloop  # noqa: PLC0415

    try:
        uvloop.run(server_main(args) if args.role == "server" else client_main(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    _child_main()
