"""Worker processes on one machine: N servers sharing one port (SO_REUSEPORT).

``Server(workers=N)`` (or ``workers: N`` in a config, ``fastws serve --workers N``)
makes the server a *parent*: it does not accept connections itself, it starts N
worker processes (multiprocessing, spawn) that each listen on the same host:port
with SO_REUSEPORT, and the kernel spreads new connections over them.

* Broadcasting: the parent serializes and frames every item once and writes the
  frames of each loop turn to every worker in one write, over a Unix socket pair;
  each worker queues them to its own clients (``Hub.publish_frame``, coalesced per
  loop turn as usual). No broker is needed.
* Topics: a topic broadcast goes down as a topic record (``fastws.frames``: the frame
  with its topic, offset and epoch). The parent numbers each topic (one epoch per
  parent, offsets from 1), so every worker gives a message the same offset and a
  client recovers on any worker (from that worker's history). A frame a shared
  history already numbered (Redis, through the relay) keeps its offset and epoch.
* ``max_connections`` holds for the whole server: a counter per worker in shared
  memory, checked and incremented under a lock at the handshake. Over the limit a
  connection is accepted and closed with 1008 "Max connections reached", as with
  one process.
* A worker that dies is replaced (its clients reconnect to the others or to the
  new one); the parent stops every worker on ``stop()`` (clients get 1001) and
  workers stop by themselves if the parent goes away.
* ``stats()`` of the parent adds up the workers' counters (pushed every
  ``STATS_INTERVAL`` seconds) and lists them in ``per_worker``.

As with any multiprocessing program, a script that starts a ``Server(workers=N)``
must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol

import msgspec

from ._cliutil import plural
from ._types import Item, Stats
from .config import ServerConfig
from .exceptions import ServerError
from .fanout import Publisher
from .fdlimit import check_fd_limit
from .frames import encode_topic_record, new_epoch, split_records

if TYPE_CHECKING:  # pragma: no cover
    import ctypes
    from multiprocessing.context import BaseContext, SpawnProcess

    from ._core import Client

__all__ = ["WorkerPool", "ConnectionSlots", "WorkerServer", "LogSetup", "resolve_workers", "worker_main",
           "GAUGES"]

logger = logging.getLogger("fastws.workers")

#: Seconds between two stats reports of a worker to the parent.
STATS_INTERVAL = 0.5
#: A worker whose socket from the parent holds more than this is skipped (frames counted as dropped).
MAX_WORKER_BACKLOG = 64 * 1024 * 1024
#: Seconds a worker has to start listening.
START_TIMEOUT = 20.0
#: Keys of a worker's stats that are levels, not counters: not carried over when it exits.
GAUGES = frozenset({"connections", "dropping_clients", "uptime"})
#: Disconnect reason of the clients a worker had when it exited.
WORKER_EXIT = "worker_exit"


class LogSetup(NamedTuple):
    """The parent's logging, repeated in each worker process."""

    level: int  #: root level
    levels: dict[str, int]  #: loggers the parent gave a level of their own (e.g. ``fastws.picows``)


def log_setup(level: int | None = None) -> LogSetup | None:
    """The logging of this process (``None`` if it has no handler), for :func:`worker_main`."""
    root = logging.getLogger()
    if level is None:
        if not root.handlers:
            return None
        level = root.getEffectiveLevel()
    levels = {
        name: lg.level for name, lg in list(logging.Logger.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET
    }
    return LogSetup(level, levels)


def _add_counters(total: Stats, stats: Stats, skip: frozenset[str] = frozenset()) -> None:
    """Add the numbers of ``stats`` (one level of dicts deep) into ``total``."""
    for k, v in stats.items():
        if isinstance(v, bool) or k in skip:
            continue
        if isinstance(v, (int, float)):
            total[k] = total.get(k, 0) + v
        elif isinstance(v, dict):
            d = total.setdefault(k, {})
            for kk, vv in v.items():
                if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                    d[kk] = d.get(kk, 0) + vv


def resolve_workers(value: int | str) -> int:
    """``workers`` as a number: ``"auto"`` is the number of CPU cores this process may use."""
    if value == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return int(value)


class ConnectionSlots:
    """``max_connections`` over all workers: a count per worker in shared memory.

    A worker takes a slot at the handshake (``acquire``: total under the limit,
    checked and incremented under one lock) and gives it back when the client goes
    (``release``). The parent zeroes the count of a worker that died.
    """

    def __init__(self, ctx: BaseContext, n: int, limit: int) -> None:
        self.counts: ctypes.Array[ctypes.c_longlong] = ctx.Array("q", n, lock=False)
        self.lock = ctx.Lock()
        self.limit = limit
        self.index = -1

    def acquire(self) -> bool:
        counts = self.counts
        # a worker killed inside the lock must not stop the others: give up waiting
        locked = self.lock.acquire(timeout=0.1)
        try:
            if sum(counts) >= self.limit:
                return False
            counts[self.index] += 1
            return True
        finally:
            if locked:
                self.lock.release()

    def release(self) -> None:
        self.counts[self.index] -= 1

    def check_connected(self, client: Client) -> None:
        """Called one loop turn after ``acquire``: a handshake that failed gives the slot back."""
        if client.transport is None:
            self.release()

    def total(self) -> int:
        return sum(self.counts)

    def reset(self, index: int) -> None:
        self.counts[index] = 0


class _Worker:
    __slots__ = ("index", "process", "transport", "ready", "pid", "stats", "started", "dropped", "rest")

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: SpawnProcess | None = None
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[int] | None = None
        self.pid: int | None = None
        self.stats: Stats = {}
        self.started = 0.0
        self.dropped = 0
        self.rest = b""


class _ParentSide(asyncio.Protocol):
    """The parent's end of a worker's socket: JSON lines come up (ready, stats)."""

    def __init__(self, pool: WorkerPool, worker: _Worker) -> None:
        self.pool = pool
        self.worker = worker

    def data_received(self, data: bytes) -> None:
        w = self.worker
        data = w.rest + data
        *lines, w.rest = data.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "stats" in msg:
                w.stats = msg["stats"]
            elif "ready" in msg and w.ready is not None and not w.ready.done():
                w.pid = msg.get("pid")
                w.ready.set_result(int(msg["ready"]))
            elif "error" in msg and w.ready is not None and not w.ready.done():
                w.ready.set_exception(ServerError(msg.get("errno"), msg["error"]))

    def connection_lost(self, exc: Exception | None) -> None:
        w = self.worker
        if w.ready is not None and not w.ready.done():
            w.ready.set_exception(ServerError(None, f"worker {w.index} exited before it listened"))


class WorkerPool:
    """N worker processes serving one host:port; the parent side (see the module docstring)."""

    def __init__(
        self,
        config: ServerConfig,
        n: int,
        *,
        target: Callable[[ServerConfig, int, socket.socket, ConnectionSlots, LogSetup | None], None],
        encode: Callable[[Item], bytes],
        log_level: int | None = None,
    ) -> None:
        """``target`` runs in each worker process (it calls :func:`worker_main`);
        ``encode`` frames an item once in the parent."""
        self.config = config
        self._target = target
        self._encode = encode
        self.n = n
        self.port = config.port
        self.restarts = 0
        self._ctx = multiprocessing.get_context("spawn")
        self._workers = [_Worker(i) for i in range(n)]
        self._holders: list[socket.socket] = []
        self._pending: list[bytes] = []
        self._flush_scheduled = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self.slots = ConnectionSlots(self._ctx, n, config.max_connections)
        # each worker logs as this process does: a connection logs what it logs with one process
        self._log_setup = log_setup(log_level)
        # counters of workers that exited, so that the totals never go backwards (see stats())
        self._retired: Stats = {"disconnects": 0, "disconnect_reasons": {WORKER_EXIT: 0}}
        self.messages = 0
        self.frames_dropped = 0
        # topic numbering, so that every worker agrees: topic -> (its epoch, latest offset). A topic
        # takes the current epoch when it is first numbered; after a sweep has forgotten idle
        # topics (topic_idle_ttl) the epoch changes, so a topic numbered again from 1 is told apart
        self._offsets: dict[str, tuple[str, int]] = {}
        self._quiet: dict[str, tuple[int, float]] = {}  # topic -> (offset, since when unchanged)
        self._sweep_handle: asyncio.TimerHandle | None = None
        self.epoch = new_epoch()
        self.topics_evicted = 0

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # raised here, the limit is inherited by every worker; warn once here, not in each
        check_fd_limit(self.config.max_connections, processes=self.n)
        self._hold_port()
        c = self.config
        self._worker_config = msgspec.structs.replace(
            c, workers=1, reuse_port=True, backplane=None, port=self.port, metrics_port=None
        )
        try:
            await asyncio.gather(*(self._spawn(w) for w in self._workers))
        except BaseException:
            await self.stop()
            raise
        logger.info("fastws: %d workers listening on %s:%d", self.n, c.host, self.port)
        self._schedule_sweep()

    # -- idle topics: the parent forgets their numbering as the workers' hubs do -------------

    def _schedule_sweep(self) -> None:
        ttl = self.config.topic_idle_ttl
        if ttl > 0 and self._loop is not None and not self._stopping:
            self._sweep_handle = self._loop.call_later(self.config.topic_sweep_interval, self._sweep_topics)

    def _sweep_topics(self) -> None:
        self._schedule_sweep()
        self.evict_idle_topics()

    def evict_idle_topics(self) -> int:
        """Forget the numbering of topics not published for ``topic_idle_ttl`` (seen by two
        sweeps that far apart); return how many. The workers keep their own topics as long as
        a client subscribes to them; the next message of a forgotten topic is numbered 1 under
        a new epoch, which they adopt."""
        assert self._loop is not None
        now, ttl = self._loop.time(), self.config.topic_idle_ttl
        quiet, gone = self._quiet, []
        for topic, (_, offset) in self._offsets.items():
            q = quiet.get(topic)
            if q is None or q[0] != offset:
                quiet[topic] = (offset, now)
            elif now - q[1] >= ttl:
                gone.append(topic)
        for topic in gone:
            del self._offsets[topic], quiet[topic]
        if gone:
            self.topics_evicted += len(gone)
            self.epoch = new_epoch()
        return len(gone)

    def _hold_port(self) -> None:
        """Bind (not listen) host:port with SO_REUSEPORT: fixes the port when it is 0, and keeps it."""
        c = self.config
        try:
            infos = socket.getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, type_, proto, _, addr = infos[0]
            s = socket.socket(family, type_, proto)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind(addr)
            except OSError:
                s.close()
                raise
        except OSError as exc:
            raise ServerError(exc.errno, f"cannot listen on {c.host}:{c.port}: {exc.strerror or exc}") from None
        self._holders.append(s)
        self.port = s.getsockname()[1]

    async def _spawn(self, w: _Worker) -> None:
        assert self._loop is not None
        parent_sock, child_sock = socket.socketpair()
        w.rest = b""
        w.stats = {}
        w.ready = self._loop.create_future()
        p = self._ctx.Process(
            target=self._target,
            args=(self._worker_config, w.index, child_sock, self.slots, self._log_setup),
            name=f"fastws-worker-{w.index}",
            daemon=True,
        )
        p.start()
        child_sock.close()
        w.process = p
        w.started = time.monotonic()
        w.transport, _ = await self._loop.create_unix_connection(lambda: _ParentSide(self, w), sock=parent_sock)
        self._loop.add_reader(p.sentinel, self._on_exit, w)
        async with asyncio.timeout(START_TIMEOUT):
            await w.ready

    def _on_exit(self, w: _Worker) -> None:
        p = w.process
        assert self._loop is not None and p is not None  # the reader is removed before process is cleared
        self._loop.remove_reader(p.sentinel)
        # The sentinel is readable once the child has closed its end, which the kernel does a
        # moment before the exit status can be waited for: join(0) could miss it (exit code
        # None, and a zombie left behind). The child is exiting, so this returns at once.
        p.join(1.0)
        if w.transport is not None:
            w.transport.close()
            w.transport = None
        lost = self._retire(w)
        if self._stopping:
            return
        ran = time.monotonic() - w.started
        delay = 0.0 if ran > 10 else min(5.0, 0.1 * 2 ** min(self.restarts, 6))
        logger.warning("worker %d (pid %s) exited with code %s after %.1fs with %s (counted as "
                       "disconnects, reason worker_exit); starting a replacement", w.index, p.pid, p.exitcode,
                       ran, plural(lost, "client"))
        self.restarts += 1
        task = self._loop.create_task(self._respawn(w, delay))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    def _retire(self, w: _Worker) -> int:
        """Keep the counters of a worker that exited; its clients count as disconnects.

        Its last report (at most ``STATS_INTERVAL`` old) is added to the totals, so a
        replacement that starts from zero never makes a counter go backwards. Returns
        the number of clients it had (its slots, given back).
        """
        lost = int(self.slots.counts[w.index])
        self.slots.reset(w.index)
        _add_counters(self._retired, w.stats, GAUGES)
        w.stats = {}
        if lost > 0:
            self._retired["disconnects"] = self._retired.get("disconnects", 0) + lost
            reasons = self._retired.setdefault("disconnect_reasons", {})
            reasons[WORKER_EXIT] = reasons.get(WORKER_EXIT, 0) + lost
        return lost

    async def _respawn(self, w: _Worker, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping:
            return
        try:
            await self._spawn(w)
        except Exception as exc:  # it exits; _on_exit tries again
            logger.error("worker %d did not start: %s", w.index, exc)
        else:
            logger.info("worker %d replaced (pid %s)", w.index, w.pid)

    async def stop(self, code: int = 1001, reason: str = "server shutting down", timeout: float | None = None) -> None:
        """SIGTERM every worker (each closes its clients with 1001), wait, kill what remains."""
        if self._stopping:
            return
        self._stopping = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self.flush()
        for t in list(self._respawns):
            t.cancel()
        await asyncio.gather(*self._respawns, return_exceptions=True)
        procs = [w.process for w in self._workers if w.process is not None]
        for p in procs:
            if p.is_alive():
                p.terminate()
        wait = (self.config.close_timeout + 3.0) if timeout is None else timeout
        deadline = time.monotonic() + wait
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for p in procs:
            if p.is_alive():
                logger.warning("worker pid %s did not stop in %.1fs; killing it", p.pid, wait)
                p.kill()
            p.join(1.0)
        assert self._loop is not None
        for w in self._workers:
            if w.process is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(w.process.sentinel)
                w.process.close()
                w.process = None
            if w.transport is not None:
                w.transport.close()
                w.transport = None
        for s in self._holders:
            s.close()
        self._holders.clear()

    # -- broadcasting (the fan-out target of a parent: fastws.fanout.FanOut) -----------

    def publish(self, item: Item, topic: str | None = None) -> int:
        """Frame ``item`` once and queue it for every worker."""
        return self.publish_frame(self._encode(item), topic)

    def publisher(self) -> Publisher:
        return self.publish

    def subscribers(self, topic: str) -> int:
        """Every client over all workers (a worker's topics are not known to the parent)."""
        return self.connection_count

    def publish_frame(self, frame: bytes, topic: str | None = None, offset: int = 0,
                      epoch: str | None = None) -> int:
        """Queue one frame for every worker; return the clients connected over all workers.

        A topic frame is numbered here unless ``offset`` > 0 (a shared history numbered
        it: its offset and epoch are kept).
        """
        if topic is not None:
            if offset <= 0:
                epoch, offset = self._offsets.get(topic) or (self.epoch, 0)
                offset += 1
                self._offsets[topic] = (epoch, offset)
            frame = encode_topic_record(frame, topic, offset, epoch)
        self._pending.append(frame)
        self.messages += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self.flush)
        return self.slots.total()

    def flush(self) -> int:
        """Write what was queued in this turn to every worker; return the workers written to."""
        self._flush_scheduled = False
        if not self._pending:
            return 0
        frames = len(self._pending)
        data = b"".join(self._pending) if frames > 1 else self._pending[0]
        self._pending = []
        n = 0
        for w in self._workers:
            t = w.transport
            if t is None or t.is_closing():
                continue
            if t.get_write_buffer_size() > MAX_WORKER_BACKLOG:
                w.dropped += frames
                self.frames_dropped += frames
                continue
            t.write(data)
            n += 1
        return n

    # -- introspection -----------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return self.slots.total()

    @property
    def disconnect_count(self) -> int:
        """Clients that left, over all workers (as of their last report), including the
        clients of workers that exited (monotonic)."""
        return int(self._retired.get("disconnects", 0)) + sum(int(w.stats.get("disconnects", 0))
                                                               for w in self._workers)

    @property
    def pids(self) -> list[int | None]:
        return [w.process.pid if w.process is not None else None for w in self._workers]

    def stats(self) -> Stats:
        """The workers' counters added up (as of their last report), and each worker's."""
        total: Stats = {}
        _add_counters(total, self._retired)  # workers that exited: counters stay monotonic
        for w in self._workers:
            _add_counters(total, w.stats, frozenset({"uptime"}))
        total["connections"] = self.slots.total()
        total["messages"] = self.messages
        total.update(
            workers=self.n,
            worker_restarts=self.restarts,
            worker_frames_dropped=self.frames_dropped,
            per_worker=[
                {"index": w.index, "pid": w.process.pid if w.process is not None else None,
                 "connections": self.slots.counts[w.index], "dropped_from_parent": w.dropped,
                 **{k: w.stats.get(k, 0) for k in ("deliveries", "flushes", "messages")}}
                for w in self._workers
            ],
        )
        return total


# -- the worker process -----------------------------------------------------------------


class WorkerServer(Protocol):
    """What a worker process runs: a server that accepts connections itself."""

    @property
    def is_serving(self) -> bool: ...

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def stats(self) -> Stats: ...

    def broadcast_frame(self, frame: bytes, topic: str | None = None, offset: int = 0,
                        epoch: str | None = None) -> int: ...


class _WorkerSide(asyncio.Protocol):
    """A worker's end of the parent's socket: frames and topic records come down, each
    queued to the clients (a topic frame with the offset and epoch the parent gave it)."""

    def __init__(self, server: WorkerServer, stop: asyncio.Event) -> None:
        self.server = server
        self.stop = stop
        self.rest = b""

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
        records, end = split_records(data)
        self.rest = data[end:]
        if not self.server.is_serving:
            return
        publish_frame = self.server.broadcast_frame
        for frame, topic, offset, epoch in records:
            if topic is None:
                publish_frame(frame)
            else:
                publish_frame(frame, topic, offset, epoch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop.set()  # the parent is gone


def worker_main(make_server: Callable[[ServerConfig, ConnectionSlots], WorkerServer], config: ServerConfig,
                index: int, sock: socket.socket, slots: ConnectionSlots, log: LogSetup | None) -> None:
    """The body of a worker process: serve ``make_server(config, slots)`` until the parent says stop."""
    if log is not None:
        logging.basicConfig(level=log.level,
                            format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
        for name, level in log.levels.items():
            logging.getLogger(name).setLevel(level)
    # Ctrl-C reaches the whole process group: the parent decides, and sends SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slots.index = index
    from .loop import run

    sys.exit(run(_worker(make_server(config, slots), sock)))


async def _worker(server: WorkerServer, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    transport, _ = await loop.create_unix_connection(lambda: _WorkerSide(server, stop), sock=sock)
    try:
        await server.start()
    except ServerError as exc:
        transport.write(json.dumps({"error": str(exc), "errno": exc.errno}).encode() + b"\n")
        transport.close()
        return 1
    transport.write(json.dumps({"ready": server.port, "pid": os.getpid()}).encode() + b"\n")

    async def report() -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            if not transport.is_closing():
                transport.write(json.dumps({"stats": server.stats()}, default=str).encode() + b"\n")

    reporter = asyncio.create_task(report())
    try:
        await stop.wait()
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        await server.stop()
        transport.close()
    return 0
