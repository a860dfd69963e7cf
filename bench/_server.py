"""Server role: ``python -m bench._server --impl fastws|websockets|picows|socketify [...]``.

One WebSocket server implementation (``bench/_impls.py``) driven by JSON-line
commands on stdin; it measures its own CPU (getrusage) and RSS and answers on stdout:

* ``count`` -> ``{"event": "count", "count": n}``: connected clients;
* ``run`` (``messages``, ``burst``, optional ``rate``) -> ``sent``: broadcast M messages of
  PAYLOAD_LEN bytes, ``burst`` per loop turn, then ``await asyncio.sleep(0)`` (or, with a
  ``rate``, sleep until the next tick); the CPU window opens before the first message;
* ``stop`` -> ``cpu``: closes the window (sent once the load client has everything);
* ``mem`` (``settle``) -> ``mem``: ``gc.collect()``, settle, median of 5 VmRSS samples;
* ``stats`` -> ``stats``: fastws' flushes and deliveries (workers report every 0.5 s);
* ``quit`` -> ``bye``, then the process exits.

``bench/bun_server.js`` implements the same protocol for Bun.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import time
from typing import Any

from bench._impls import IMPLS, Impl
from bench._util import (
    cpu_jiffies,
    emit,
    log,
    make_message,
    raise_nofile,
    rss_kib,
    run_role,
    settled_rss,
    stdin_commands,
)


class Phase:
    """The CPU window of one ``run`` ... ``stop``."""

    def __init__(self, core: int) -> None:
        self.core = core
        gc.collect()
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.j0 = cpu_jiffies(core)
        self.t0 = time.monotonic_ns()

    def cpu(self) -> dict[str, Any]:
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        j1 = cpu_jiffies(self.core)
        ru0, j0 = self.ru0, self.j0
        res: dict[str, Any] = {
            "user_s": ru1.ru_utime - ru0.ru_utime,
            "sys_s": ru1.ru_stime - ru0.ru_stime,
            "vcsw": ru1.ru_nvcsw - ru0.ru_nvcsw,
            "ivcsw": ru1.ru_nivcsw - ru0.ru_nivcsw,
            "maxrss_kib": ru1.ru_maxrss,
        }
        if j0 and j1:
            res["core_busy_s"] = (j1[0] - j0[0]) / os.sysconf("SC_CLK_TCK")
        return res


class Broadcaster:
    """Runs phases; ``seq`` goes on across phases so the clients can check continuity."""

    def __init__(self, impl: Impl) -> None:
        self.impl = impl
        self.seq = 0

    async def run(self, m: int, burst: int, rate: float) -> tuple[int, int]:
        """Broadcast m messages; returns (clients queued to, summed over messages; loop end ns)."""
        bcast = self.impl.broadcast
        abcast = self.impl.abroadcast if self.impl.is_async else None
        sleep = asyncio.sleep
        tick = burst / rate if rate else 0.0
        start = time.monotonic()
        seq = self.seq
        sent = queued = ticks = 0
        while sent < m:
            k = min(burst, m - sent)
            for _ in range(k):
                r = await abcast(make_message(seq)) if abcast is not None else bcast(make_message(seq))
                if r is not None:
                    queued += r
                seq += 1
            sent += k
            ticks += 1
            await sleep(max(start + ticks * tick - time.monotonic(), 0.0) if tick else 0)
        self.seq = seq
        return queued, time.monotonic_ns()


async def mem_sample(impl: Impl, settle: float) -> dict[str, Any]:
    rss, samples = await settled_rss(settle)
    return {"rss_kib": rss, "samples": samples, "count": impl.count()}


async def serve(args: argparse.Namespace) -> None:
    raise_nofile()
    impl = IMPLS[args.impl](args)
    try:
        await impl.start()
    except Exception as exc:  # noqa: BLE001
        emit(event="error", msg=f"start failed: {type(exc).__name__}: {exc}")
        return
    pids = [os.getpid(), *impl.worker_pids()]
    emit(event="ready", port=impl.port, pid=os.getpid(), pids=pids, rss_kib=rss_kib())
    runner = Broadcaster(impl)
    phase: Phase | None = None
    async for cmd in stdin_commands():
        c = cmd["cmd"]
        if c == "count":
            emit(event="count", count=impl.count())
        elif c == "run":
            phase = Phase(args.core)
            queued, t1 = await runner.run(int(cmd["messages"]), int(cmd["burst"]), float(cmd.get("rate") or 0))
            emit(event="sent", t_start=phase.t0, t_loop_end=t1, queued=queued)
        elif c == "stop":
            assert phase is not None, "stop before run"
            emit(event="cpu", **phase.cpu())
        elif c == "mem":
            emit(event="mem", **await mem_sample(impl, float(cmd.get("settle", 3.0))))
        elif c == "stats":
            await asyncio.sleep(0.7)  # fastws workers report every 0.5 s
            emit(event="stats", **impl.stats())
        elif c == "quit":
            t = time.monotonic()
            try:
                await asyncio.wait_for(impl.stop(), 10)
                if time.monotonic() - t > 1:
                    log(f"stop() took {time.monotonic() - t:.3f}s")
            except Exception as exc:  # noqa: BLE001
                log(f"stop() failed after {time.monotonic() - t:.1f}s: {type(exc).__name__}: {exc}")
            emit(event="bye")
            os._exit(0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench._server", description=__doc__.split("\n\n")[0])
    p.add_argument("--impl", choices=sorted(IMPLS), required=True)
    p.add_argument("--mode", choices=("fanout", "memory"), default="fanout",
                   help="fanout: keepalive off; memory: every implementation's defaults")
    p.add_argument("--core", type=int, default=0, help="CPU whose /proc/stat busy time is reported")
    p.add_argument("--fastws-heartbeat", type=float, default=3600.0, help="fastws heartbeat_interval, fanout mode")
    p.add_argument("--max-connections", type=int, default=10000, help="fastws max_connections")
    p.add_argument("--max-queued-bytes", type=int, default=0, help="fastws max_queued_bytes (0: default)")
    p.add_argument("--workers", type=int, default=1, help="fastws worker processes")
    p.add_argument("--certfile", help="fastws: serve wss:// with this certificate (PEM)")
    p.add_argument("--keyfile", help="fastws: private key of --certfile")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_role(serve(args))


if __name__ == "__main__":
    main()
