"""Helpers every benchmark process shares: the message, statistics, /proc readings, env, JSON lines.

Standard library only at import time: the server role also runs under other
interpreters (a venv with socketify) that have neither fastws nor msgspec.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: JSON payload size of every benchmark message, and its unmasked frame size.
PAYLOAD_LEN = 100
FRAME_LEN = PAYLOAD_LEN + 2
#: ``{"seq":,"ts":,"pad":""}`` without the values.
SKELETON_LEN = 23
#: Fixed Sec-WebSocket-Key of the load generators (the server's answer is not checked).
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def make_message(seq: int, extra: int = 0) -> dict[str, Any]:
    """A dict whose compact JSON encoding is exactly PAYLOAD_LEN bytes (``extra`` bytes fewer of pad)."""
    ts = time.time_ns()
    pad = PAYLOAD_LEN - SKELETON_LEN - extra - len(str(seq)) - len(str(ts))
    return {"seq": seq, "ts": ts, "pad": "x" * pad}


def upgrade_request(port: int | None = None) -> bytes:
    host = "127.0.0.1" if port is None else f"127.0.0.1:{port}"
    return (
        f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def csv_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def csv(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


# --------------------------------------------------------------------------- statistics
def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(out)


# --------------------------------------------------------------------------- process readings
def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def proc_cpu_s(pids: list[int]) -> float:
    """user+system CPU seconds of these processes (from /proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def cpu_s() -> float:
    """user+system CPU seconds of this process so far (getrusage)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


async def settled_rss(settle: float, interval: float = 0.2) -> tuple[float, list[int]]:
    """VmRSS after ``gc.collect()`` and ``settle`` seconds: the median of 5 samples ``interval``
    apart, and the samples."""
    gc.collect()
    await asyncio.sleep(settle)
    samples = []
    for _ in range(5):
        samples.append(rss_kib())
        await asyncio.sleep(interval)
    return float(statistics.median(samples)), samples


# --------------------------------------------------------------------------- environment
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
    peers = "".join(f", {k} {env[k]}" for k in ("bun", "socketify") if k in env)
    return (
        f"fastws {env['fastws']}, picows {env['picows']} (aiofastnet {env['aiofastnet']}), "
        f"msgspec {env['msgspec']}, websockets {env['websockets']}, uvloop {env['uvloop']}, "
        f"Python {env['python']}, loop {env['loop']}{peers}\n"
        f"CPU: {env['cpu']} x{env['cpus']} {env['virt']}, kernel {env['kernel']}, {env['date']}"
    )


# --------------------------------------------------------------------------- child side of the control channel
def emit(**msg: Any) -> None:
    """One JSON line to the parent (stdout)."""
    os.write(1, (json.dumps(msg) + "\n").encode())


def log(msg: str) -> None:
    emit(event="log", msg=msg)


async def stdin_commands() -> AsyncIterator[dict[str, Any]]:
    """The parent's commands, one JSON object per line on stdin, until EOF."""
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


def run_role(main: Coroutine[Any, Any, None]) -> None:
    """Run a role's main coroutine on uvloop, as every benchmark process does; Ctrl-C ends it quietly."""
    import uvloop  # noqa: PLC0415

    try:
        uvloop.run(main)
    except KeyboardInterrupt:
        pass
