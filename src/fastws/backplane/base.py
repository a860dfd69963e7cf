"""Cross-node fan-out over an existing broker (Redis pub/sub, NATS core), in-process by default.

Every node publishes the frames its inputs broadcast to one channel (a Redis channel,
a NATS subject) and writes what it receives from the other nodes to its own clients.

Wire format of one broker message (all nodes of a channel must run the same format)::

    b"FWS1" + kind (b"F" frames | b"T" topic frames | b"S" stats) + node id (16 ASCII bytes) + body

``F``: the body is one or more complete, unmasked WebSocket frames, exactly as the
publishing node wrote them to its own clients (serialized and framed once, on the
publishing node): broadcasts without a topic. A batch with no topic frame is always
sent as ``F`` (the format of nodes that predate topics).

``T``: the body is a sequence of plain frames (broadcasts without a topic) and topic
records, in publish order; a topic record is ::

    b"T" + topic length (u16) + topic (UTF-8) + offset (u64) + epoch length (u8) + epoch + frame

(big-endian; the codec is :func:`fastws.frames.encode_topic_record` /
:func:`~fastws.frames.split_records`, the same one the parent uses towards its worker
processes). Offset 0 and no epoch: the publisher had no shared history, and each node
numbers the topic itself (``Hub.publish_frame(frame, topic)``; offsets and epochs are
then per node). Offset > 0: a shared history (Redis, ``fastws.backplane.redis``)
numbered it, and every node adopts that offset and epoch, so a client may recover on
any node.

``S``: the body is a small JSON object with the node's counters, sent every
``stats_interval`` seconds, from which every node builds the cluster totals.

Delivery: in publish order per publishing node (one connection and one sending task
per node), at most once. A node drops its own messages when they come back, except the
numbered topic records (offset > 0): with a shared history the publisher's own clients
get a topic broadcast only when it comes back numbered, so that every node delivers
the topic's messages in the one order the history gave them. While the broker is
unreachable, what a node broadcasts without a shared history still reaches its own
clients; what could not be handed to the broker is counted in ``publish_failed``; the
node reconnects with capped exponential backoff and carries on.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

from .._types import Stats
from ..frames import RECORD_OVERHEAD, encode_topic_record, split_frames, split_records

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["Backplane", "BackplaneOptions", "split_frames"]

logger = logging.getLogger("fastws.backplane")
#: Seconds a broker connection has to close when the backplane stops.
CLOSE_TIMEOUT = 1.0

MAGIC = b"FWS1"
KIND_FRAMES = ord("F")
KIND_TOPICS = ord("T")
KIND_STATS = ord("S")
HEADER_LEN = len(MAGIC) + 1 + 16

#: Counters each node shares with the others (from ``Server.stats()``).
SHARED_STATS = ("connections", "messages", "deliveries", "bytes_out", "dropped", "slow_disconnects")


class BackplaneOptions(TypedDict, total=False):
    """The keyword arguments of :class:`Backplane` after ``url`` and ``channel``."""

    node_id: str | None
    max_pending_bytes: int
    reconnect_min: float
    reconnect_max: float
    stats_interval: float
    history_size: int
    history_ttl: float


#: A queued broadcast: a frame without a topic, or (topic, frame).
Queued = bytes | tuple[str, bytes]
#: ``on_topic_frame(frame, topic, offset, epoch)``: a topic frame from the broker.
TopicFrameCallback = Callable[[bytes, str, int, str | None], object]


class Backplane:
    """One node's connection to a broker channel (subclasses: Redis, NATS, in-process).

    >>> bp = create_backplane("redis://127.0.0.1:6379/0", "prices")
    >>> await bp.start(on_frame=hub.publish_frame,              # frames from the other nodes
    ...                on_topic_frame=hub.publish_frame)        # (frame, topic, offset, epoch)
    >>> bp.publish(frame)                             # never waits, never raises
    >>> bp.publish_topic(frame, "prices")             # the same, with a topic
    >>> await bp.stop()

    ``Server`` does this for you when ``backplane`` is set.

    ``shared_history`` is True when the broker numbers topic broadcasts and keeps
    their history (Redis with ``history_size`` > 0): then :meth:`history` reads it,
    and a node delivers its own topic broadcasts when they come back numbered.
    """


    #: Cut outgoing batches at this size (the broker's own limit may be lower).
    max_batch_bytes = 256 * 1024

    def __init__(
        self,
        url: str,
        channel: str = "fastws",
        *,
        node_id: str | None = None,
        max_pending_bytes: int = 16 * 1024 * 1024,
        reconnect_min: float = 0.05,
        reconnect_max: float = 5.0,
        stats_interval: float = 1.0,
        history_size: int = 0,
        history_ttl: float = 0.0,
    ) -> None:
        self.url = url
        self.channel = channel
        self.node_id: bytes = (node_id or os.urandom(8).hex()).encode("ascii")[:16].ljust(16, b"-")
        self.max_pending_bytes = max_pending_bytes
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.stats_interval = stats_interval
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.connected = False
        # counters
        self.published = 0          # frames handed to the broker
        self.publish_failed = 0     # frames that could not be (broker down, queue full, too big)
        self.batches = 0            # broker messages sent
        self.received = 0           # frames received from the other nodes
        self.own_skipped = 0        # our own broker messages that came back
        self.invalid = 0            # broker messages on the channel that were not fastws frames
        self.outages = 0
        self.reconnects = 0
        self.topic_received = 0     # of ``received``: topic frames
        self.topic_unhandled = 0    # topic frames received while no on_topic_frame was given
        self._queue: collections.deque[Queued] = collections.deque()
        self._queued_bytes = 0
        self._wakeup: asyncio.Event | None = None
        self._stats_msg: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._stats_task: asyncio.Task[None] | None = None
        self._on_frame: Callable[[bytes], object] | None = None
        self._on_topic_frame: TopicFrameCallback | None = None
        self._local_stats: Callable[[], Stats] | None = None
        self._up: asyncio.Event | None = None
        self._down_since: float | None = None
        self._failed_at_down = 0
        self.peers: dict[str, tuple[float, Stats]] = {}
        self._header_frames = MAGIC + bytes([KIND_FRAMES]) + self.node_id
        self._header_topics = MAGIC + bytes([KIND_TOPICS]) + self.node_id
        self._header_stats = MAGIC + bytes([KIND_STATS]) + self.node_id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.safe_url} channel={self.channel!r}>"

    @property
    def shared_history(self) -> bool:
        """Whether this broker numbers topic broadcasts and keeps their history for every node."""
        return False

    @property
    def safe_url(self) -> str:
        """The URL without a password."""
        scheme, sep, rest = self.url.partition("://")
        creds, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{'***@' if at else ''}{host}"

    # -- lifecycle -------------------------------------------------------------------

    async def start(
        self,
        on_frame: Callable[[bytes], object],
        *,
        on_topic_frame: TopicFrameCallback | None = None,
        local_stats: Callable[[], Stats] | None = None,
        wait: float = 5.0,
    ) -> bool:
        """Connect and subscribe in the background; wait up to ``wait`` s for the first connection.

        Returns whether the node is connected. A node that is not keeps serving its
        own clients and keeps trying. ``on_frame(frame)`` gets the frames without a
        topic, ``on_topic_frame(frame, topic, offset, epoch)`` the topic frames (offset
        0 and epoch None when the publisher had no shared history); without it topic
        frames are dropped and counted in ``topic_unhandled``.
        """
        self._on_frame = on_frame
        self._on_topic_frame = on_topic_frame
        self._local_stats = local_stats
        self._wakeup = asyncio.Event()
        self._up = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"fastws-backplane-{self.channel}")
        if local_stats is not None and self.stats_interval > 0:
            self._stats_task = asyncio.create_task(self._share_stats())
        try:
            await asyncio.wait_for(self._up.wait(), wait)
        except TimeoutError:
            logger.warning("backplane %s: not connected after %.1fs; serving local clients, still trying",
                           self.safe_url, wait)
        return self.connected

    async def stop(self) -> None:
        """Send what is queued (briefly), then disconnect."""
        if self._task is None:
            return
        if self.connected and self._queue:
            try:
                async with asyncio.timeout(1.0):
                    while self._queue and self.connected:
                        await asyncio.sleep(0.005)
            except TimeoutError:
                pass
        tasks = [t for t in (self._stats_task, self._task) if t is not None]
        self._task = self._stats_task = None
        for t in tasks:
            t.cancel()
        # bounded: stopping the server must not wait on a broker client that does not let go
        _, pending = await asyncio.wait(tasks, timeout=2 * CLOSE_TIMEOUT)
        if pending:
            logger.warning("backplane %s: the broker connection did not close in %.1fs; left behind",
                           self.safe_url, 2 * CLOSE_TIMEOUT)
        if self._queue:
            self.publish_failed += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        self.connected = False

    # -- publishing ------------------------------------------------------------------

    def publish(self, frame: bytes) -> bool:
        """Queue ``frame`` (made by ``encode_frame``) for the other nodes; never waits.

        Returns False, and counts it in ``publish_failed``, when the broker is not
        reachable or the queue to it is full.
        """
        if not self.connected or self._queued_bytes + len(frame) > self.max_pending_bytes:
            self.publish_failed += 1
            return False
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if len(self._queue) == 1:
            assert self._wakeup is not None
            self._wakeup.set()
        return True

    def publish_topic(self, frame: bytes, topic: str) -> bool:
        """Queue ``frame`` with its ``topic`` for the other nodes; never waits.

        With :attr:`shared_history` the broker numbers it, and it comes back to this
        node too (deliver it to the local clients then, not now). Returns False, and
        counts it in ``publish_failed``, as :meth:`publish` does.
        """
        size = len(frame) + len(topic) + RECORD_OVERHEAD
        if not self.connected or self._queued_bytes + size > self.max_pending_bytes:
            self.publish_failed += 1
            return False
        self._queue.append((topic, frame))
        self._queued_bytes += size
        if len(self._queue) == 1:
            assert self._wakeup is not None
            self._wakeup.set()
        return True

    async def history(self, topic: str, after_offset: int | None,
                      epoch: str | None = None) -> tuple[str | None, int, list[tuple[int, bytes]]]:
        """The shared history of ``topic``: ``(epoch, latest offset, [(offset, frame), ...])``.

        The entries are those after ``after_offset``, oldest first (``None``: only the
        latest entry, for ``since=latest``), without the ones older than
        ``history_ttl``. ``epoch`` (the client's): when it is not the topic's, no
        entries are read (they could not be used). ``(None, 0, [])``: the topic has
        no history. Only when :attr:`shared_history` is True; raises
        ``ConnectionError`` while the broker is unreachable.
        """
        raise RuntimeError(f"{type(self).__name__} keeps no shared history")

    # -- the connection loop ---------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_min
        first = True
        while True:
            try:
                await self._connect()
            except asyncio.CancelledError:
                await self._close_quietly()
                raise
            except Exception as exc:
                await self._close_quietly()
                self._note_down(exc, first)
                first = False
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self.reconnect_max)
                continue
            self._note_up()
            first = False
            delay = self.reconnect_min
            try:
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note_down(exc, False)
            finally:
                self.connected = False
                await self._close_quietly()

    async def _serve(self) -> None:
        tasks = [asyncio.create_task(self._pump_out()), asyncio.create_task(self._receive_forever())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for t in done:
            t.result()
        raise ConnectionError("connection to the broker ended")

    async def _pump_out(self) -> None:
        queue = self._queue
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            if self._stats_msg is not None:
                msg, self._stats_msg = self._stats_msg, None
                await self._send(msg)
            if not queue:
                wakeup.clear()
                await wakeup.wait()
                continue
            batch: list[Queued] = []
            size = 0
            limit = self.max_batch_bytes
            while queue:
                head = queue[0]
                n_bytes = len(head) if isinstance(head, bytes) else len(head[1]) + len(head[0]) + RECORD_OVERHEAD
                if size and size + n_bytes > limit:
                    break
                queue.popleft()
                size += n_bytes
                batch.append(head)
            self._queued_bytes -= size
            n = len(batch)
            try:
                await self._send_batch(batch)
            except Exception as exc:
                self.publish_failed += n
                if self._is_connection_error(exc):
                    raise
                logger.error("backplane %s: %d frames not published: %s", self.safe_url, n, exc)
                continue
            self.published += n
            self.batches += 1

    async def _send_batch(self, batch: list[Queued]) -> None:
        """Send one broker message: ``F`` when no frame has a topic, else ``T`` (unnumbered records)."""
        parts: list[bytes] = []
        topics = False
        for q in batch:
            if isinstance(q, bytes):
                parts.append(q)
            else:
                topics = True
                parts.append(encode_topic_record(q[1], q[0]))
        await self._send((self._header_topics if topics else self._header_frames) + b"".join(parts))

    def _note_up(self) -> None:
        self.connected = True
        if self._down_since is not None:
            self.reconnects += 1
            logger.warning("backplane %s: reconnected after %.1fs; %d frames could not be published meanwhile",
                           self.safe_url, time.monotonic() - self._down_since,
                           self.publish_failed - self._failed_at_down)
            self._down_since = None
        else:
            logger.info("backplane %s: connected, channel %r, node %s", self.safe_url, self.channel,
                        self.node_id.decode())
        assert self._up is not None
        self._up.set()

    def _note_down(self, exc: BaseException, first: bool) -> None:
        self.connected = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._failed_at_down = self.publish_failed
            self.outages += 1
            if self._up is not None:
                self._up.clear()
            logger.warning("backplane %s: %s (%s); local clients are still served, reconnecting with backoff",
                           self.safe_url, "cannot connect" if first else "connection lost",
                           f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        else:
            logger.debug("backplane %s: still down: %r", self.safe_url, exc)

    async def _close_quietly(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):  # a broker client's close can hang when cancelled
                await self._close()
        except (Exception, TimeoutError) as exc:  # the connection is gone anyway
            logger.debug("backplane %s: close: %r", self.safe_url, exc)

    # -- receiving -------------------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        if len(data) < HEADER_LEN or data[:4] != MAGIC:
            self.invalid += 1
            return
        node = data[5:HEADER_LEN]
        kind = data[4]
        if node == self.node_id:
            if kind == KIND_TOPICS:  # numbered topic records come back to their publisher too
                self._on_topics(data, node, True)
            else:
                self.own_skipped += 1
            return
        if kind == KIND_TOPICS:
            self._on_topics(data, node, False)
        elif kind == KIND_FRAMES:
            try:
                frames, end = split_frames(data, HEADER_LEN)
            except ValueError:
                frames, end = [], -1
            if end != len(data):
                self.invalid += 1
                logger.error("backplane %s: a malformed message from node %s was dropped", self.safe_url,
                             node.decode("ascii", "replace"))
                return
            self.received += len(frames)
            on_frame = self._on_frame
            assert on_frame is not None
            for frame in frames:
                on_frame(frame)
        elif kind == KIND_STATS:
            try:
                stats = json.loads(data[HEADER_LEN:])
            except ValueError:
                self.invalid += 1
                return
            self.peers[node.decode("ascii", "replace")] = (time.monotonic(), stats)
        else:
            self.invalid += 1

    def _on_topics(self, data: bytes, node: bytes, own: bool) -> None:
        try:
            records, end = split_records(data, HEADER_LEN)
        except ValueError:
            records, end = [], -1
        if end != len(data):
            self.invalid += 1
            logger.error("backplane %s: a malformed topic message from node %s was dropped", self.safe_url,
                         node.decode("ascii", "replace"))
            return
        on_frame = self._on_frame
        on_topic_frame = self._on_topic_frame
        assert on_frame is not None
        skipped = True
        for frame, topic, offset, epoch in records:
            if own and not offset:  # delivered locally when it was published
                continue
            skipped = False
            self.received += 1
            if topic is None:
                on_frame(frame)
            elif on_topic_frame is None:
                self.topic_unhandled += 1
            else:
                self.topic_received += 1
                on_topic_frame(frame, topic, offset, epoch)
        if own and skipped:
            self.own_skipped += 1

    # -- cluster totals -------------------------------------------------------------------

    def _node_stats(self) -> Stats:
        local = self._local_stats() if self._local_stats is not None else {}
        s = {k: local.get(k, 0) for k in SHARED_STATS}
        s.update(published=self.published, publish_failed=self.publish_failed, received=self.received,
                 connected=self.connected, workers=local.get("workers", 1))
        return s

    async def _share_stats(self) -> None:
        while True:
            await asyncio.sleep(self.stats_interval)
            if self.connected:
                self._stats_msg = self._header_stats + json.dumps(self._node_stats()).encode()
                assert self._wakeup is not None
                self._wakeup.set()

    def cluster_stats(self) -> Stats:
        """This node and every node heard from in the last 3 stats intervals, and their totals."""
        horizon = time.monotonic() - 3 * max(self.stats_interval, 0.1)
        for node in [n for n, (t, _) in self.peers.items() if t < horizon]:
            del self.peers[node]
        nodes = {self.node_id.decode(): self._node_stats()}
        nodes.update({n: s for n, (_, s) in self.peers.items()})
        totals = {k: sum(int(s.get(k, 0)) for s in nodes.values()) for k in SHARED_STATS + ("publish_failed",)}
        return {"nodes": len(nodes), **totals, "per_node": nodes}

    def stats(self) -> Stats:
        return {
            "url": self.safe_url,
            "channel": self.channel,
            "node_id": self.node_id.decode(),
            "connected": self.connected,
            "published": self.published,
            "publish_failed": self.publish_failed,
            "batches": self.batches,
            "received": self.received,
            "topic_received": self.topic_received,
            "topic_unhandled": self.topic_unhandled,
            "shared_history": self.shared_history,
            "own_skipped": self.own_skipped,
            "invalid": self.invalid,
            "queued": len(self._queue),
            "outages": self.outages,
            "reconnects": self.reconnects,
        }

    # -- what a broker implements ---------------------------------------------------------

    async def _connect(self) -> None:
        """Connect and subscribe; return once the subscription is active."""
        raise NotImplementedError

    async def _send(self, data: bytes) -> None:
        raise NotImplementedError

    async def _receive_forever(self) -> None:
        """Call ``self._on_message(data)`` for each broker message; raise when the connection ends."""
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def _is_connection_error(self, exc: BaseException) -> bool:
        return True
