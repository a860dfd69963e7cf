"""Topics over the backplane (issue 15, "many machines"): the topic record codec, topic
frames over real Redis and NATS, the Redis shared history (numbering by one Lua script,
XRANGE with MAXLEN and ttl), recovery from it, topic records to worker processes, and
a client that leaves node A and recovers on node B with no gap.

Broker tests need Redis on 127.0.0.1:6379 and NATS on 127.0.0.1:4222 (see
tests/test_backplane.py). Every test uses a channel of its own (uuid).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

import fastws
import fastws._core
from fastws.backplane import create_backplane
from fastws.backplane.base import HEADER_LEN, MAGIC
from fastws.backplane.redis import topic_keys
from fastws.frames import encode_topic_record, new_epoch, split_records
from fastws.history import recover_from_history, relay_topic_frame, start_recovery
from tests.test_backplane import channel, require_broker
from tests.utils import TIMEOUT, wait_for

REDIS = "redis://127.0.0.1:6379/0"


def frame(item: object) -> bytes:
    return fastws.encode_frame(item)


# -- the record codec ---------------------------------------------------------------------------


def test_topic_records_and_plain_frames_round_trip_in_order():
    big = frame("x" * 70000)
    parts = [
        (frame({"a": 1}), None, 0, None),
        (frame({"p": 1.5}), "prices", 0, None),
        (big, "news/eu:1@x", 17, "AbCdEfGh1234"),
        (frame("plain"), None, 0, None),
        (frame([1, 2]), "t" * 1024, 2**53, "e"),
    ]
    data = b"".join(f if t is None else encode_topic_record(f, t, o, e) for f, t, o, e in parts)
    assert split_records(data) == (parts, len(data))
    # cut anywhere: the complete ones come out, the rest waits for more bytes
    for cut in (1, 2, 3, 5, 14, 20, len(data) - len(big) - 10, len(data) - 1):
        got, end = split_records(data[:cut])
        assert got == parts[: len(got)]
        rest, end2 = split_records(data[:end] + data[end:])
        assert rest[len(got):] == parts[len(got):] and end2 == len(data)


@pytest.mark.parametrize("bad", [
    b"\x88\x00",                                                   # a CLOSE frame
    b"T\x00\x00" + bytes(8) + b"\x00\x81\x00",                     # no topic
    b"T\x00\x01\xff" + bytes(8) + b"\x00\x81\x00",                 # a topic that is not UTF-8
    b"T\x00\x01a" + bytes(8) + b"\x00\x89\x00",                    # a PING inside
    b"T\x00\x01a" + bytes(8) + b"\x00\x81\x80abcd",                # a masked frame inside
])
def test_malformed_records_are_refused(bad):
    with pytest.raises(ValueError):
        split_records(bad)


def test_encode_topic_record_refuses_what_it_cannot_carry():
    for topic, offset, epoch in [("", 0, None), ("t", -1, None), ("t", 2**64, None), ("t", 1, "e" * 256)]:
        with pytest.raises(ValueError):
            encode_topic_record(frame(1), topic, offset, epoch)
    assert len(new_epoch()) == 12 and new_epoch().isalnum() and new_epoch() != new_epoch()


# -- helpers ------------------------------------------------------------------------------------


class Sink:
    """What a backplane hands to its node: plain frames and topic frames, in arrival order."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str | None, int, str | None]] = []

    def on_frame(self, f: bytes) -> None:
        self.got.append((f, None, 0, None))

    def on_topic_frame(self, f: bytes, topic: str, offset: int, epoch: str | None) -> None:
        self.got.append((f, topic, offset, epoch))

    def topic(self, name: str) -> list[tuple[bytes, str | None, int, str | None]]:
        return [g for g in self.got if g[1] == name]


async def started(url: str, ch: str, sink: Sink, **options):
    bp = create_backplane(url, ch, **options)
    assert await bp.start(sink.on_frame, on_topic_frame=sink.on_topic_frame, wait=TIMEOUT)
    return bp


async def redis_client():
    from redis.asyncio import Redis

    return Redis.from_url(REDIS)


# -- topics over both brokers, no shared history -----------------------------------------------


@pytest.mark.broker
@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_topic_frames_travel_unnumbered_in_publish_order(broker):
    broker_url = require_broker(broker)
    ch = channel()
    sa, sb = Sink(), Sink()
    a = await started(broker_url, ch, sa)
    b = await started(broker_url, ch, sb)
    try:
        assert not a.shared_history
        sent = []
        for i in range(30):
            f = frame({"i": i})
            if i % 3 == 0:
                assert a.publish(f)
                sent.append((f, None, 0, None))
            else:
                topic = "prices" if i % 3 == 1 else "news"
                assert a.publish_topic(f, topic)
                sent.append((f, topic, 0, None))
            if i % 10 == 9:
                await asyncio.sleep(0)  # several batches, mixed and not
        await wait_for(lambda: len(sb.got) == len(sent))
        assert sb.got == sent
        s = b.stats()
        assert s["received"] == 30 and s["topic_received"] == 20 and s["invalid"] == 0
        # nothing comes back to the publisher (no shared history: it delivered them itself)
        assert sa.got == [] and a.stats()["published"] == 30
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.broker
async def test_batches_without_topics_stay_F_messages_and_with_topics_are_T():
    require_broker("redis")
    ch = channel()
    r = await redis_client()
    ps = r.pubsub()
    await ps.subscribe(ch)
    sink = Sink()
    a = await started(REDIS, ch, sink)
    try:
        a.publish(frame(1))
        await wait_for(lambda: a.stats()["batches"] == 1)
        a.publish(frame(2))
        a.publish_topic(frame(3), "prices")
        await wait_for(lambda: a.stats()["batches"] == 2)
        kinds = []
        async with asyncio.timeout(TIMEOUT):
            while len(kinds) < 2:
                msg = await ps.get_message(timeout=TIMEOUT)
                if msg is not None and msg["type"] == "message":
                    data = msg["data"]
                    assert data[:4] == MAGIC
                    kinds.append((data[4:5], split_records(data, HEADER_LEN)[0]))
        assert kinds == [(b"F", [(frame(1), None, 0, None)]),
                         (b"T", [(frame(2), None, 0, None), (frame(3), "prices", 0, None)])]
    finally:
        await a.stop()
        await ps.aclose()
        await r.aclose()


@pytest.mark.broker
async def test_a_node_without_on_topic_frame_drops_topic_frames_and_counts_them():
    require_broker("nats")
    ch = channel()
    sa = Sink()
    a = await started("nats://127.0.0.1:4222", ch, sa)
    got: list[bytes] = []
    b = create_backplane("nats://127.0.0.1:4222", ch)
    assert await b.start(got.append, wait=TIMEOUT)
    try:
        a.publish_topic(frame(1), "prices")
        a.publish(frame(2))
        await wait_for(lambda: frame(2) in got)  # then the assertion shows what else came, if anything
        assert got == [frame(2)]
        assert b.stats()["topic_unhandled"] == 1
    finally:
        await a.stop()
        await b.stop()


# -- the Redis shared history ------------------------------------------------------------------


async def recv(ws) -> dict:
    """The next message of a websockets client, as JSON (bounded)."""
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


async def publish_to_history(node, n: int = 3) -> str:
    """Broadcast ``{"i": 0..n-1}`` on topic "p" and wait until Redis holds them; its epoch."""
    for i in range(n):
        node.broadcast({"i": i}, topic="p")
    async with asyncio.timeout(TIMEOUT):
        while (await node.backplane.history("p", 0))[1] < n:
            await asyncio.sleep(0.01)
    return (await node.backplane.history("p", 0))[0]


async def delete_topic(ch: str, topic: str) -> None:
    r = await redis_client()
    try:
        await r.delete(*topic_keys(ch, topic))
    finally:
        await r.aclose()


@pytest.mark.broker
async def test_redis_numbers_topics_for_every_node_in_one_order():
    require_broker("redis")
    ch = channel()
    sa, sb = Sink(), Sink()
    a = await started(REDIS, ch, sa, history_size=100)
    b = await started(REDIS, ch, sb, history_size=100)
    try:
        assert a.shared_history and b.stats()["shared_history"]
        n = 40
        for i in range(n):
            assert a.publish_topic(frame({"from": "a", "i": i}), "prices")
            assert b.publish_topic(frame({"from": "b", "i": i}), "prices")
            b.publish(frame({"plain": i}))
            if i % 5 == 0:
                await asyncio.sleep(0)
        await wait_for(lambda: len(sa.topic("prices")) == 2 * n and len(sb.topic("prices")) == 2 * n)
        # both nodes, the publishers included, see the same numbered sequence
        assert sa.topic("prices") == sb.topic("prices")
        offsets = [o for _, _, o, _ in sa.topic("prices")]
        assert offsets == list(range(1, 2 * n + 1))
        epochs = {e for _, _, _, e in sa.topic("prices")}
        assert len(epochs) == 1 and len(epoch := epochs.pop()) == 12 and epoch.isalnum()
        # each publisher's own order is kept
        for origin in ("a", "b"):
            seq = [json.loads(f[2:])["i"] for f, _, _, _ in sa.topic("prices") if b'"from":"' + origin.encode() in f]
            assert seq == list(range(n))
        # topic-less frames: b delivered its own at once; a got them from b
        await wait_for(lambda: len([g for g in sa.got if g[1] is None]) == n)
        assert [g for g in sb.got if g[1] is None] == []
        # another topic has its own offsets and epoch
        a.publish_topic(frame("n"), "news")
        await wait_for(lambda: len(sb.topic("news")) == 1)
        assert sb.topic("news")[0][2] == 1 and sb.topic("news")[0][3] != epoch
        # Redis loses the keys: a new epoch, offsets from 1 again
        await delete_topic(ch, "prices")
        a.publish_topic(frame("after"), "prices")
        await wait_for(lambda: len(sb.topic("prices")) == 2 * n + 1)
        _, _, off, new = sb.topic("prices")[-1]
        assert off == 1 and new != epoch and len(new) == 12
        # offsets past what Lua prints as an integer by default (1e+15) stay exact
        r = await redis_client()
        try:
            await r.set(topic_keys(ch, "prices")[0], 10**15)
        finally:
            await r.aclose()
        a.publish_topic(frame("big"), "prices")
        await wait_for(lambda: len(sb.topic("prices")) == 2 * n + 2)
        assert sb.topic("prices")[-1][2:] == (10**15 + 1, new)
        assert await b.history("prices", 10**15) == (new, 10**15 + 1, [(10**15 + 1, frame("big"))])
        assert a.stats()["publish_failed"] == 0 and b.stats()["publish_failed"] == 0
    finally:
        await a.stop()
        await b.stop()
        await delete_topic(ch, "prices")
        await delete_topic(ch, "news")


@pytest.mark.broker
async def test_history_keeps_history_size_entries_and_reads_after_an_offset():
    require_broker("redis")
    ch = channel()
    sink = Sink()
    a = await started(REDIS, ch, sink, history_size=3)
    try:
        assert await a.history("prices", 0) == (None, 0, [])  # never published
        frames = [frame({"i": i}) for i in range(1, 11)]
        for f in frames:
            a.publish_topic(f, "prices")
        await wait_for(lambda: len(sink.topic("prices")) == 10)
        epoch = sink.topic("prices")[0][3]
        # exact MAXLEN: the last 3
        assert await a.history("prices", 0) == (epoch, 10, [(8, frames[7]), (9, frames[8]), (10, frames[9])])
        assert await a.history("prices", 8) == (epoch, 10, [(9, frames[8]), (10, frames[9])])
        assert await a.history("prices", 10) == (epoch, 10, [])
        assert await a.history("prices", None) == (epoch, 10, [(10, frames[9])])  # since=latest
        # the client's epoch is not the topic's: nothing it could use is read
        assert await a.history("prices", 8, "otherEpoch12") == (epoch, 10, [])
        assert await a.history("prices", 8, epoch) == (epoch, 10, [(9, frames[8]), (10, frames[9])])
        r = await redis_client()
        try:
            assert await r.xlen(topic_keys(ch, "prices")[2]) == 3
            assert await r.pttl(topic_keys(ch, "prices")[2]) == -1  # no history_ttl: no expiry
        finally:
            await r.aclose()
    finally:
        await a.stop()
        await delete_topic(ch, "prices")


@pytest.mark.broker
async def test_history_leaves_out_entries_older_than_history_ttl():
    require_broker("redis")
    ch = channel()
    sink = Sink()
    ttl = 0.3
    a = await started(REDIS, ch, sink, history_size=10, history_ttl=ttl)
    r = await redis_client()
    try:
        old = [frame({"old": i}) for i in range(2)]
        for f in old:
            a.publish_topic(f, "prices")
        await wait_for(lambda: len(sink.topic("prices")) == 2)
        seq, ep, log = topic_keys(ch, "prices")
        assert 0 < await r.pttl(log) <= ttl * 1000
        assert await r.pttl(seq) > 3_600_000 and await r.pttl(ep) > 3_600_000  # offsets and epoch stay longer
        epoch = sink.topic("prices")[0][3]
        assert (await a.history("prices", 0))[2] == [(1, old[0]), (2, old[1])]

        # wait (bounded) until Redis' clock has passed the ttl of both entries
        async def expired() -> bool:
            return (await a.history("prices", 0))[2] == []

        async with asyncio.timeout(TIMEOUT):
            while not await expired():
                await asyncio.sleep(0.05)
        fresh = frame("fresh")
        a.publish_topic(fresh, "prices")
        await wait_for(lambda: len(sink.topic("prices")) == 3)
        # the epoch and the offsets carry on; only the fresh entry is returned
        assert await a.history("prices", 0) == (epoch, 3, [(3, fresh)])
    finally:
        await a.stop()
        await r.aclose()
        await delete_topic(ch, "prices")


@pytest.mark.broker
async def test_history_while_redis_is_unreachable_is_a_connection_error():
    bp = create_backplane("redis://127.0.0.1:1/0", channel(), history_size=5, reconnect_min=10)
    assert not await bp.start(Sink().on_frame, wait=0.2)
    try:
        assert bp.publish_topic(frame(1), "prices") is False
        assert bp.stats()["publish_failed"] == 1
        with pytest.raises(ConnectionError):
            await bp.history("prices", 0)
    finally:
        await bp.stop()
    nats_bp = create_backplane("nats://127.0.0.1:1", channel())
    with pytest.raises(RuntimeError, match="no shared history"):
        await nats_bp.history("prices", 0)


# -- the relay and the recovery, against real Redis --------------------------------------------


class Target:
    """A node's local delivery (``LocalNode.publish_frame``), recorded."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str | None, int, str | None]] = []

    def publish_frame(self, f: bytes, topic: str | None = None, offset: int = 0, epoch: str | None = None) -> int:
        self.got.append((f, topic, offset, epoch))
        return 7


class RecordingHub:
    """The Hub's recovery calls, recorded in order (the core implements them)."""

    def __init__(self, state: dict[str, tuple[str | None, int]] | None = None) -> None:
        self.calls: list[tuple] = []
        self.state = state or {}

    def hold(self, client: object) -> None:
        self.calls.append(("hold", client))

    def recover(self, client: object, topic: str, epoch: str | None, latest: int,
                entries: Sequence[tuple[int, bytes]]) -> None:
        self.calls.append(("recover", client, topic, epoch, latest, list(entries)))

    def release(self, client: object) -> None:
        self.calls.append(("release", client))

    def topic_state(self, topic: str) -> tuple[str | None, int]:
        return self.state.get(topic, (None, 0))


@pytest.mark.broker
@pytest.mark.parametrize("history_size", [0, 5])
async def test_relay_delivers_locally_at_once_without_shared_history_and_on_return_with_it(history_size):
    require_broker("redis")
    ch = channel()
    target = Target()
    sink = Sink()
    bp = create_backplane(REDIS, ch, history_size=history_size)
    assert await bp.start(sink.on_frame, on_topic_frame=target.publish_frame, wait=TIMEOUT)
    try:
        n = relay_topic_frame(target, bp, frame("x"), "prices", subscribers=lambda t: 3)
        if history_size == 0:
            assert n == 7 and target.got == [(frame("x"), "prices", 0, None)]
        else:
            assert n == 3 and target.got == []  # not yet: Redis numbers it first
            await wait_for(lambda: len(target.got) == 1)
            f, topic, offset, epoch = target.got[0]
            assert (f, topic, offset) == (frame("x"), "prices", 1) and epoch
    finally:
        await bp.stop()
        await delete_topic(ch, "prices")


@pytest.mark.broker
async def test_recover_from_history_holds_reads_recovers_each_topic_then_releases():
    require_broker("redis")
    ch = channel()
    sink = Sink()
    bp = await started(REDIS, ch, sink, history_size=50)
    try:
        frames = {t: [frame({t: i}) for i in range(1, 6)] for t in ("prices", "news")}
        for i in range(5):
            for t in frames:
                bp.publish_topic(frames[t][i], t)
        await wait_for(lambda: len(sink.got) == 10)
        ep = {t: sink.topic(t)[0][3] for t in frames}
        hub = RecordingHub({"gone": ("localEpoch00", 4)})
        client = object()
        read = await recover_from_history(hub, client, bp, {"prices": 2, "news": None, "gone": 1, "other": 3},
                                          {"prices": ep["prices"], "gone": "x", "other": "wrongEpoch12"})
        assert read == 4
        assert hub.calls == [
            ("hold", client),
            ("recover", client, "prices", ep["prices"], 5, [(3, frames["prices"][2]), (4, frames["prices"][3]),
                                                             (5, frames["prices"][4])]),
            ("recover", client, "news", ep["news"], 5, [(5, frames["news"][4])]),
            ("recover", client, "gone", "localEpoch00", 4, []),      # Redis has no such topic
            ("recover", client, "other", None, 0, []),
            ("release", client),
        ]
    finally:
        await bp.stop()
        for t in ("prices", "news"):
            await delete_topic(ch, t)


async def test_recover_from_history_without_redis_recovers_nothing_and_still_releases():
    bp = create_backplane("redis://127.0.0.1:1/0", channel(), history_size=5, reconnect_min=10)
    assert not await bp.start(Sink().on_frame, wait=0.1)
    try:
        hub = RecordingHub({"prices": ("E", 9)})
        assert await recover_from_history(hub, "c", bp, {"prices": 3}, {"prices": "E"}) == 0
        assert hub.calls == [("hold", "c"), ("recover", "c", "prices", "E", 9, []), ("release", "c")]
    finally:
        await bp.stop()


@pytest.mark.broker
async def test_start_recovery_holds_the_client_before_it_returns():
    require_broker("redis")
    ch = channel()
    sink = Sink()
    bp = await started(REDIS, ch, sink, history_size=5)
    try:
        bp.publish_topic(frame(1), "prices")
        await wait_for(lambda: len(sink.got) == 1)
        hub = RecordingHub()
        task = start_recovery(hub, "c", bp, {"prices": 0}, {})
        assert hub.calls == [("hold", "c")]  # at once: no flush can write live frames first
        async with asyncio.timeout(TIMEOUT):
            assert await task == 1
        assert [c[0] for c in hub.calls] == ["hold", "recover", "release"]
        assert hub.calls[1][5] == [(1, frame(1))]
    finally:
        await bp.stop()
        await delete_topic(ch, "prices")


@pytest.mark.broker
async def test_recover_from_history_gives_up_after_the_timeout():
    require_broker("redis")
    bp = await started(REDIS, channel(), Sink(), history_size=5)

    async def never(topic, after, epoch=None):
        await asyncio.Event().wait()

    bp.history = never  # a Redis that does not answer
    try:
        hub = RecordingHub()
        assert await recover_from_history(hub, "c", bp, {"a": 1, "b": 2}, {}, timeout=0.05) == 0
        assert [c[0] for c in hub.calls] == ["hold", "recover", "recover", "release"]
    finally:
        await bp.stop()


# -- worker processes: the parent numbers the topics --------------------------------------------


class RecordingWorkerServer:
    is_serving = True
    port = 0

    def __init__(self) -> None:
        self.got: list[tuple[bytes, str | None, int, str | None]] = []

    def broadcast_frame(self, f: bytes, topic: str | None = None, offset: int = 0, epoch: str | None = None) -> int:
        self.got.append((f, topic, offset, epoch))
        return 1


async def test_parent_numbers_topics_once_for_every_worker_and_keeps_shared_numbers():
    from fastws.workers import WorkerPool, _WorkerSide

    pool = WorkerPool(fastws.ServerConfig(port=0), 2, target=lambda *a: None, encode=fastws.encode_frame)
    pool._loop = asyncio.get_running_loop()  # not started: no worker, the frames stay queued
    pool.publish({"a": 1}, "prices")
    pool.publish({"b": 1})
    pool.publish_frame(frame({"a": 2}), "prices")
    pool.publish({"n": 1}, "news")
    pool.publish_frame(frame({"a": 3}), "prices", 41, "RedisEpoch12")  # numbered by a shared history
    pool.publish({"a": 4}, "prices")
    data = b"".join(pool._pending)
    pool._pending.clear()
    e = pool.epoch
    expected = [
        (frame({"a": 1}), "prices", 1, e), (frame({"b": 1}), None, 0, None), (frame({"a": 2}), "prices", 2, e),
        (frame({"n": 1}), "news", 1, e), (frame({"a": 3}), "prices", 41, "RedisEpoch12"),
        (frame({"a": 4}), "prices", 3, e),  # the parent's own numbering goes on in its own epoch
    ]
    assert split_records(data) == (expected, len(data))
    # a worker gets them in pieces of any size and passes each on with its topic, offset and epoch
    server = RecordingWorkerServer()
    side = _WorkerSide(server, asyncio.Event())  # type: ignore[arg-type]
    for i in range(0, len(data), 5):
        side.data_received(data[i:i + 5])
    assert server.got == expected and side.rest == b""


# -- end to end: leave node A, recover on node B ------------------------------------------------


@pytest.mark.broker
async def test_client_leaves_node_a_and_recovers_on_node_b_with_no_gap():
    from websockets.asyncio.client import connect

    from tests.utils import running_server

    require_broker("redis")
    ch = channel()
    settings = {"backplane": REDIS, "backplane_channel": ch, "history_size": 100}

    try:
        async with running_server(**settings) as a, running_server(**settings) as b:
            ws = await connect(f"ws://127.0.0.1:{a.port}/?topics=prices&format=envelope")
            # publish (from node B) until the client gets one: then node A has registered it
            async with asyncio.timeout(TIMEOUT):
                while True:
                    b.broadcast({"warmup": True}, topic="prices")
                    try:
                        async with asyncio.timeout(0.2):
                            first = json.loads(await ws.recv())
                            if "data" in first:  # not a "subscribed" envelope
                                break
                    except TimeoutError:
                        continue
            assert first["topic"] == "prices" and first["offset"] >= 1
            epoch = first["epoch"]
            last = first["offset"]
            for i in range(5):
                a.broadcast({"i": i}, topic="prices")
            seen = []
            while len(seen) < 5:  # consecutive offsets (a late warmup may come in between)
                m = await recv(ws)
                assert m["offset"] == last + 1 and m["epoch"] == epoch
                last = m["offset"]
                if "i" in m["data"]:
                    seen.append(m["data"]["i"])
            assert seen == list(range(5))
            await ws.close()
            # published while the client is away, from both nodes
            for i in range(4):
                (a if i % 2 else b).broadcast({"missed": i}, topic="prices")
            async with asyncio.timeout(TIMEOUT):
                while (await b.backplane.history("prices", last))[1] < last + 4:
                    await asyncio.sleep(0.01)
            ws2 = await connect(f"ws://127.0.0.1:{b.port}/?topics=prices&format=envelope"
                                f"&since=prices:{last}&epoch={epoch}")
            sub = await recv(ws2)
            assert sub == {"type": "subscribed", "topic": "prices", "epoch": epoch, "offset": last + 4,
                           "recovered": True}
            got = [await recv(ws2) for _ in range(4)]
            assert [m["offset"] for m in got] == [last + 1, last + 2, last + 3, last + 4]
            # each node's in its order (the two nodes' messages interleave as Redis numbered them)
            assert sorted(m["data"]["missed"] for m in got) == [0, 1, 2, 3]
            a.broadcast({"live": 1}, topic="prices")
            live = await recv(ws2)
            assert live["offset"] == last + 5 and live["data"] == {"live": 1} and live["epoch"] == epoch
            await ws2.close()
    finally:
        await delete_topic(ch, "prices")


@pytest.mark.broker
async def test_offset_0_recovers_from_the_shared_history_whatever_the_epoch():
    """As from a node's own history (docs/topics.md): a client that saw nothing has no epoch
    to mismatch, so ``since=T:0`` with a stale epoch still gets the whole history."""
    from websockets.asyncio.client import connect

    from tests.utils import running_server

    require_broker("redis")
    ch = channel()
    try:
        async with running_server(backplane=REDIS, backplane_channel=ch, history_size=10) as server:
            epoch = await publish_to_history(server)
            for query in ("since=p:0&epoch=stale", "since=p:0"):
                ws = await connect(f"ws://127.0.0.1:{server.port}/?topics=p&format=envelope&{query}")
                async with asyncio.timeout(TIMEOUT):
                    got = [json.loads(await ws.recv()) for _ in range(4)]
                assert got[0] == {"type": "subscribed", "topic": "p", "epoch": epoch, "offset": 3,
                                  "recovered": True}, query
                assert [m["data"] for m in got[1:]] == [{"i": 0}, {"i": 1}, {"i": 2}]
                await ws.close()
    finally:
        await delete_topic(ch, "p")


@pytest.mark.broker
async def test_a_subscribe_message_with_since_recovers_from_the_shared_history_on_another_node():
    from websockets.asyncio.client import connect

    from tests.utils import running_server

    require_broker("redis")
    ch = channel()
    settings = {"backplane": REDIS, "backplane_channel": ch, "history_size": 100, "client_subscriptions": True}

    try:
        async with running_server(**settings) as a:
            epoch = await publish_to_history(a)
            async with running_server(**settings) as b:  # node B never relayed p
                ws = await connect(f"ws://127.0.0.1:{b.port}/?format=envelope")
                await ws.send(json.dumps({"subscribe": "p", "since": 1, "epoch": epoch}))
                first = await recv(ws)
                assert first == {"type": "subscribed", "topic": "p", "epoch": epoch, "offset": 3, "recovered": True}
                got = [await recv(ws), await recv(ws)]
                assert [(m["offset"], m["data"]) for m in got] == [(2, {"i": 1}), (3, {"i": 2})]
                a.broadcast({"i": 3}, topic="p")  # live, through Redis to node B
                live = await recv(ws)
                assert (live["offset"], live["epoch"]) == (4, epoch)
                await ws.close()
    finally:
        await delete_topic(ch, "p")


@pytest.mark.broker
async def test_with_a_shared_history_a_node_keeps_only_the_latest_and_serves_since_latest():
    from websockets.asyncio.client import connect

    from tests.utils import running_server

    require_broker("redis")
    ch = channel()
    try:
        async with running_server(backplane=REDIS, backplane_channel=ch, history_size=100) as node:
            for i in range(3):
                node.broadcast({"i": i}, topic="p")
            async with asyncio.timeout(TIMEOUT):
                while node.hub.topic_state("p")[1] < 3:  # numbered by Redis, back through pub/sub
                    await asyncio.sleep(0.01)
            assert node.stats()["topics"]["history_entries"] == 1  # the 100 live in Redis
            ws = await connect(f"ws://127.0.0.1:{node.port}/?topics=p&since=latest")
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await ws.recv()) == {"i": 2}
            await ws.close()
    finally:
        await delete_topic(ch, "p")


# -- idle topics evicted (topic_idle_ttl) where offsets come from elsewhere ---------------------


async def test_a_worker_topic_made_again_after_eviction_takes_the_parents_offset_and_epoch():
    """A worker's Hub gets its offsets and epoch from the parent (publish_frame): a topic it
    evicted and makes again goes on with the parent's numbering, so a client that resumes
    with the parent's epoch recovers what followed."""
    from websockets.asyncio.client import connect

    from tests.utils import running_server

    # history_ttl: long enough for the client below to come in time
    async with running_server(topic_idle_ttl=0.2, history_size=10, history_ttl=1.0) as server:
        hub = server.hub
        for offset in (1, 2, 3):
            hub.publish_frame(frame({"n": offset}), "t", offset, "ParentEpoch1")
        await asyncio.sleep(0)
        assert hub.topic_state("t") == ("ParentEpoch1", 3)
        await wait_for(lambda: server.stats()["topics"]["topics"] == 0)
        hub.publish_frame(frame({"n": 4}), "t", 4, "ParentEpoch1")
        await asyncio.sleep(0)
        assert hub.topic_state("t") == ("ParentEpoch1", 4)
        ws = await connect(f"ws://127.0.0.1:{server.port}/?topics=t&format=envelope&since=t:3&epoch=ParentEpoch1")
        assert await recv(ws) == {"type": "subscribed", "topic": "t", "epoch": "ParentEpoch1", "offset": 4,
                                  "recovered": True}
        assert await recv(ws) == {"topic": "t", "offset": 4, "epoch": "ParentEpoch1", "data": {"n": 4}}
        await ws.close()


@pytest.mark.broker
async def test_a_topic_evicted_from_a_node_goes_on_with_the_shared_history_numbering():
    from websockets.asyncio.client import connect

    from tests.utils import running_server

    require_broker("redis")
    ch = channel()
    settings = {"backplane": REDIS, "backplane_channel": ch, "history_size": 100, "history_ttl": 1.0,
                "topic_idle_ttl": 0.2}
    try:
        async with running_server(**settings) as node:
            for i in range(3):
                node.broadcast({"i": i}, topic="p")
            await wait_for(lambda: node.hub.topic_state("p")[1] == 3)  # numbered by Redis
            epoch = node.hub.topic_state("p")[0]
            # the node keeps only the latest, which history_ttl expires: then the topic goes
            await wait_for(lambda: node.stats()["topics"]["evicted"] == 1)
            assert node.stats()["topics"]["topics"] == 0
            node.broadcast({"i": 3}, topic="p")
            await wait_for(lambda: node.hub.topic_state("p")[1] == 4)
            assert node.hub.topic_state("p") == (epoch, 4)  # Redis' epoch and offsets, not the node's
            ws = await connect(f"ws://127.0.0.1:{node.port}/?topics=p&format=envelope&since=p:3&epoch={epoch}")
            assert await recv(ws) == {"type": "subscribed", "topic": "p", "epoch": epoch, "offset": 4,
                                      "recovered": True}
            assert (await recv(ws))["data"] == {"i": 3}
            await ws.close()
    finally:
        await delete_topic(ch, "p")
