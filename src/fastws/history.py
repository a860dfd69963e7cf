"""Topics across nodes: relaying a topic broadcast, and recovering from a shared history.

Two pieces the relay and the node call (issue 15, "many machines"):

* :func:`relay_topic_frame`: a topic broadcast of this node goes to the other nodes and
  to this node's clients. Without a shared history (NATS, ``memory://``, Redis with
  ``history_size: 0``) this node delivers it at once and numbers it itself (each node
  numbers its own offsets). With a shared history (Redis and ``history_size`` > 0)
  Redis numbers it, and this node's clients get it when it comes back numbered
  (``Backplane.on_topic_frame``), in the one order every node sees.
* :func:`recover_from_history`: a client that connects with ``since`` to a node with a
  shared history. Its live frames are held while the history is read from Redis, the
  missed entries are replayed, then what was held with a later offset is written: no
  gap, no duplicate, whichever node the client was on before.

Both are written against the core's ``Hub`` and a small protocol (:class:`TopicTarget`)
so they do not depend on the core's internals.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ._core import Client, Hub
    from .backplane import Backplane

__all__ = ["HISTORY_TIMEOUT", "TopicTarget", "recover_from_history", "relay_topic_frame",
           "start_recovery"]

logger = logging.getLogger("fastws.history")

#: Seconds a connecting client waits for the shared history before it gets ``recovered: false``.
HISTORY_TIMEOUT = 2.0


class TopicTarget(Protocol):
    """Where this node's own clients get a frame (``LocalNode``, ``WorkerPool``)."""

    def publish_frame(self, frame: bytes, topic: str | None = None, offset: int = 0,
                      epoch: str | None = None) -> int: ...


def relay_topic_frame(inner: TopicTarget, backplane: Backplane, frame: bytes, topic: str,
                      subscribers: Callable[[str], int] | None = None) -> int:
    """A topic broadcast published on this node: to the other nodes and to this node's clients.

    Returns the number of this node's clients it is queued to. With a shared history
    it is queued only when it comes back numbered; the count is then
    ``subscribers(topic)`` (the topic's local subscribers now), or 0 without it.
    When the broker cannot take it (down, queue full: counted in ``publish_failed``)
    it is not delivered at all with a shared history: a frame numbered by this node
    alone would take an offset Redis gives to another message later.
    """
    if backplane.shared_history:
        if not backplane.publish_topic(frame, topic):
            return 0
        return subscribers(topic) if subscribers is not None else 0
    backplane.publish_topic(frame, topic)
    return inner.publish_frame(frame, topic)


#: Recoveries under way (the loop keeps only weak references to tasks).
_recoveries: set[asyncio.Task[int]] = set()


def start_recovery(hub: Hub, client: Client, backplane: Backplane, since: Mapping[str, int | None],
                   epochs: Mapping[str, str], *, timeout: float = HISTORY_TIMEOUT) -> asyncio.Task[int]:
    """:func:`recover_from_history` in a task, with ``hub.hold(client)`` done *now*.

    For the node's open callback: a task starts only on a later loop turn, and a flush in
    between would write live frames to the client before its history. Call it before
    the client can be flushed to (in the callback that registers it).
    """
    hub.hold(client)
    task = asyncio.get_running_loop().create_task(
        recover_from_history(hub, client, backplane, since, epochs, timeout=timeout, held=True),
        name="fastws-recovery")
    _recoveries.add(task)
    task.add_done_callback(_recoveries.discard)
    return task


async def recover_from_history(hub: Hub, client: Client, backplane: Backplane,
                               since: Mapping[str, int | None], epochs: Mapping[str, str],
                               *, timeout: float = HISTORY_TIMEOUT, held: bool = False) -> int:
    """Recover ``client`` from the backplane's shared history; the number of entries read.

    ``since``: topic -> the last offset the client has (``None``: ``since=latest``, only
    the latest entry); ``epochs``: topic -> the epoch the client had. Calls
    ``hub.hold(client)`` at once (the client's live frames are kept, not written),
    reads every topic's history at the same time (at most ``timeout`` s), then
    ``hub.recover(client, topic, epoch, latest, entries)`` per topic in the order of
    ``since`` (the Hub sends the ``subscribed`` envelope and the entries it can use)
    and ``hub.release(client)`` (the held frames with a later offset), also when
    something failed. A topic whose history could not be read (Redis down, the
    timeout) gets the node's own state and no entries: ``recovered: false``.
    ``held``: the caller has called ``hub.hold(client)`` already (:func:`start_recovery`).
    """
    if not held:
        hub.hold(client)
    deadline = asyncio.get_running_loop().time() + timeout
    covered: dict[str, tuple[str, int]] = {}
    try:
        topics = list(since)
        # offset 0 (or the latest): the client saw nothing, so its epoch cannot mismatch (as in Hub._replay)
        reads = [backplane.history(t, since[t], epochs.get(t) if since[t] else None) for t in topics]
        results: list[tuple[str | None, int, list[tuple[int, bytes]]] | BaseException]
        try:
            async with asyncio.timeout(timeout):
                results = await asyncio.gather(*reads, return_exceptions=True)
        except TimeoutError:
            logger.warning("history: no answer from %s in %.1fs; %d topics not recovered",
                           backplane.safe_url, timeout, len(topics))
            results = [TimeoutError() for _ in topics]
        read = 0
        for topic, r in zip(topics, results, strict=True):
            if isinstance(r, BaseException):
                if not isinstance(r, Exception):
                    raise r  # CancelledError and the like
                if not isinstance(r, TimeoutError):
                    logger.warning("history: topic %r not read from %s: %r", topic, backplane.safe_url, r)
                epoch, latest = hub.topic_state(topic)
                hub.recover(client, topic, epoch, latest, [])
                continue
            shared_epoch, latest, entries = r
            if shared_epoch is None:  # Redis has nothing on this topic
                epoch, latest = hub.topic_state(topic)
            else:
                epoch = shared_epoch
            read += len(entries)
            hub.recover(client, topic, epoch, latest, entries)
            covered[topic] = (epoch, latest)
        await _until_flushed(hub, covered, deadline)
        return read
    finally:
        hub.release(client)


async def _until_flushed(hub: Hub, covered: dict[str, tuple[str, int]], deadline: float) -> None:
    """Wait (until ``deadline``) for this node to have written out each topic up to the offset
    its recovery covered: the broker's PUBLISH of those messages can arrive after the history
    read (another connection), and only what is flushed while the client is held is checked
    against the replay; what came later would be sent twice."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        behind = False
        for topic, (epoch, latest) in covered.items():
            now_epoch, flushed = hub.topic_state(topic)
            if now_epoch == epoch and flushed < latest:
                behind = True
                break
        if not behind:
            return
        await asyncio.sleep(0.002)
