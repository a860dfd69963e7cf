"""Topics in the core (issue 15): who gets which frame, envelopes, offsets, recovery.

Real servers and real clients (the ``websockets`` client) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect

from tests.utils import TIMEOUT, running_server, url, wait_for


async def recv_json(ws):
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


async def recv_all(ws, n):
    return [await recv_json(ws) for _ in range(n)]


async def no_more(ws, server):
    """Nothing else is queued for ``ws``: a marker broadcast to everyone is its next message."""
    server.broadcast({"marker": True})
    assert await recv_json(ws) == {"marker": True}


async def test_each_client_gets_its_topics_and_the_broadcasts_without_topic_in_order():
    async with running_server() as server:
        a = await connect(url(server) + "?topics=a")
        ab = await connect(url(server) + "?topics=a,b")
        every = await connect(url(server))
        await wait_for(lambda: server.connection_count == 3)
        counts = [server.broadcast({"n": 1}, topic="a"), server.broadcast({"n": 2}, topic="b"),
                  server.broadcast({"n": 3}), server.broadcast({"n": 4}, topic="c"),
                  server.broadcast({"n": 5}, topic="a")]
        assert counts == [3, 2, 3, 1, 3]
        assert [m["n"] for m in await recv_all(a, 3)] == [1, 3, 5]
        assert [m["n"] for m in await recv_all(ab, 4)] == [1, 2, 3, 5]
        assert [m["n"] for m in await recv_all(every, 5)] == [1, 2, 3, 4, 5]
        for ws in (a, ab, every):
            await no_more(ws, server)
        stats = server.stats()
        assert stats["deliveries"] == 3 + 4 + 5 + 3  # the markers too
        assert stats["topics"]["subscriptions"] == 3
        for ws in (a, ab, every):
            await ws.close()


async def test_one_write_per_client_per_turn_with_topics():
    async with running_server() as server:
        a = await connect(url(server) + "?topics=a")
        await wait_for(lambda: server.connection_count == 1)
        flushes = server.stats()["flushes"]
        for i in range(10):
            server.broadcast({"i": i}, topic="a" if i % 2 else "b")
        assert [m["i"] for m in await recv_all(a, 5)] == [1, 3, 5, 7, 9]
        assert server.stats()["flushes"] == flushes + 1
        await a.close()


async def test_without_firehose_a_client_that_chose_nothing_gets_only_broadcasts_without_topic():
    async with running_server(firehose=False) as server:
        ws = await connect(url(server))
        await wait_for(lambda: server.connection_count == 1)
        assert server.broadcast({"n": 1}, topic="a") == 0
        server.broadcast({"n": 2})
        assert (await recv_json(ws))["n"] == 2
        await no_more(ws, server)
        await ws.close()


async def test_envelope_clients_get_topic_offset_epoch_and_data_others_the_item():
    async with running_server() as server:
        env = await connect(url(server) + "?topics=prices&format=envelope")
        plain = await connect(url(server) + "?topics=prices")
        await wait_for(lambda: server.connection_count == 2)
        server.broadcast({"p": 1}, topic="prices")
        server.broadcast('{"already": "json"}', topic="prices")
        server.broadcast("not json", topic="prices")
        server.broadcast({"all": 1})
        subscribed = await recv_json(env)
        assert subscribed == {"type": "subscribed", "topic": "prices", "epoch": subscribed["epoch"], "offset": 0}
        got = await recv_all(env, 4)
        epoch = got[0]["epoch"]
        assert epoch == subscribed["epoch"]
        assert got[0] == {"topic": "prices", "offset": 1, "epoch": epoch, "data": {"p": 1}}
        assert got[1] == {"topic": "prices", "offset": 2, "epoch": epoch, "data": {"already": "json"}}
        assert got[2] == {"topic": "prices", "offset": 3, "epoch": epoch, "data": "not json"}
        assert got[3] == {"topic": None, "data": {"all": 1}}
        assert await recv_json(plain) == {"p": 1}
        assert await recv_json(plain) == {"already": "json"}
        async with asyncio.timeout(TIMEOUT):
            assert await plain.recv() == "not json"
        await env.close()
        await plain.close()


async def test_recovery_replays_what_was_missed_then_live_with_no_gap_and_no_duplicate():
    async with running_server(history_size=100) as server:
        ws = await connect(url(server) + "?topics=prices&format=envelope")
        await wait_for(lambda: server.connection_count == 1)
        for i in range(1, 4):
            server.broadcast({"i": i}, topic="prices")
        assert (await recv_json(ws))["type"] == "subscribed"
        got = await recv_all(ws, 3)
        last, epoch = got[-1]["offset"], got[-1]["epoch"]
        await ws.close()
        await wait_for(lambda: server.connection_count == 0)
        for i in range(4, 8):  # missed while away
            server.broadcast({"i": i}, topic="prices")
        await asyncio.sleep(0)
        ws = await connect(url(server) + f"?topics=prices&format=envelope&since=prices:{last}&epoch={epoch}")
        first = await recv_json(ws)
        assert first == {"type": "subscribed", "topic": "prices", "epoch": epoch, "offset": 7, "recovered": True}
        server.broadcast({"i": 8}, topic="prices")
        got = await recv_all(ws, 5)
        assert [m["offset"] for m in got] == [4, 5, 6, 7, 8]
        assert [m["data"]["i"] for m in got] == [4, 5, 6, 7, 8]
        t = server.stats()["topics"]
        assert (t["recovered"], t["replayed"]) == (1, 4)
        await ws.close()


async def test_a_publish_in_the_same_turn_as_the_reconnect_is_neither_lost_nor_repeated():
    async with running_server(history_size=100) as server:
        for i in range(1, 4):
            server.broadcast({"i": i}, topic="t")
        await asyncio.sleep(0)
        epoch, latest = server.hub.topic_state("t")
        assert latest == 3
        ws = await connect(url(server) + f"?topics=t&format=envelope&since=t:1&epoch={epoch}")
        assert (await recv_json(ws))["recovered"] is True
        got = await recv_all(ws, 2)
        assert [m["offset"] for m in got] == [2, 3]
        server.broadcast({"i": 4}, topic="t")
        assert (await recv_json(ws))["offset"] == 4
        await ws.close()


async def test_a_gap_that_cannot_be_filled_says_recovered_false_then_live():
    async with running_server(history_size=2) as server:
        for i in range(1, 6):
            server.broadcast({"i": i}, topic="t")
        await asyncio.sleep(0)
        epoch, _ = server.hub.topic_state("t")
        for since, ep in (("t:1", epoch), ("t:4", "otherepoch"), ("t:99", epoch)):
            _, latest = server.hub.topic_state("t")
            ws = await connect(url(server) + f"?topics=t&format=envelope&since={since}&epoch={ep}")
            first = await recv_json(ws)
            assert first == {"type": "subscribed", "topic": "t", "epoch": epoch, "offset": latest, "recovered": False}
            server.broadcast({"i": "live"}, topic="t")
            assert (await recv_json(ws))["data"] == {"i": "live"}
            await ws.close()
        assert server.stats()["topics"]["not_recovered"] == 3


async def test_history_ttl_expires_entries():
    async with running_server(history_size=10, history_ttl=0.05) as server:
        server.broadcast({"i": 1}, topic="t")
        await asyncio.sleep(0)
        epoch, _ = server.hub.topic_state("t")
        await asyncio.sleep(0.1)
        assert server.hub.history_after("t", 0) == []
        ws = await connect(url(server) + f"?topics=t&format=envelope&since=t:0&epoch={epoch}")
        assert (await recv_json(ws))["recovered"] is False
        await ws.close()


async def test_since_latest_gives_the_current_state_first():
    async with running_server(deliver_latest=True) as server:
        server.broadcast({"v": 1}, topic="t")
        server.broadcast({"v": 2}, topic="t")
        await asyncio.sleep(0)
        plain = await connect(url(server) + "?topics=t")  # deliver_latest: as if it asked since=latest
        assert await recv_json(plain) == {"v": 2}
        env = await connect(url(server) + "?topics=t&format=envelope&since=latest")
        sub = await recv_json(env)
        assert sub["type"] == "subscribed" and sub["offset"] == 2 and "recovered" not in sub
        assert (await recv_json(env))["data"] == {"v": 2}
        await plain.close()
        await env.close()


async def test_deflate_and_plain_clients_on_topics_in_one_broadcast():
    async with running_server() as server:
        z = await connect(url(server) + "?topics=a", compression="deflate")
        p = await connect(url(server) + "?topics=a", compression=None)
        zall = await connect(url(server), compression="deflate")
        await wait_for(lambda: server.connection_count == 3)
        big = {"text": "x" * 2000}
        server.broadcast(big, topic="a")
        server.broadcast({"b": 1}, topic="b")
        for ws in (z, p, zall):
            assert await recv_json(ws) == big
        assert await recv_json(zall) == {"b": 1}
        assert server.stats()["compression"]["messages_compressed"] >= 1
        for ws in (z, p, zall):
            await ws.close()


# -- the Hub on in-memory transports: what each client's one write holds -----------------


def _hub_with(loop, *setups, **kw):
    from fastws import Hub
    from fastws._testing import MemoryTransport, connect

    hub = Hub(loop, **kw)
    transports = [MemoryTransport(loop) for _ in setups]
    for t, setup in zip(transports, setups, strict=True):
        connect(hub, t, setup)
    return hub, transports


def _recovering_client(hub, since: int, epoch: str = "E"):
    """An envelope client of topic ``p`` that asks to recover after ``since`` (epoch ``epoch``)
    from a shared history: the Hub holds it. Returns the client and its transport."""
    from fastws._testing import MemoryTransport, connect

    t = MemoryTransport(asyncio.get_running_loop())

    def setup(c):
        c.set_subscription({"p"}, None, True)
        c.want_recovery({"p": since}, {"p": epoch})

    return connect(hub, t, setup), t


def _payloads(t):
    from tests.test_core import frames

    return [json.loads(p) for _, p in frames(t.take())]


async def test_an_envelope_client_arriving_mid_turn_gets_the_frames_queued_before_it():
    from fastws._testing import MemoryTransport, connect

    loop = asyncio.get_running_loop()
    hub, (plain,) = _hub_with(loop, lambda c: c.set_subscription({"t"}))
    hub.publish({"i": 1}, "t")  # no envelope client yet: no envelope built
    late = MemoryTransport(loop)
    connect(hub, late, lambda c: c.set_subscription({"t"}, None, True))
    hub.publish({"i": 2}, "t")
    assert hub.flush() == 2
    assert _payloads(plain) == [{"i": 1}, {"i": 2}]
    subscribed, *got = _payloads(late)
    assert subscribed["type"] == "subscribed" and subscribed["offset"] == 0  # said at connect: 1 is not flushed yet
    assert [(m["offset"], m["data"]) for m in got] == [(1, {"i": 1}), (2, {"i": 2})]


async def test_restricted_client_never_gets_a_topic_outside_its_grant():
    loop = asyncio.get_running_loop()
    hub, (restricted, star, everything) = _hub_with(
        loop,
        lambda c: c.set_subscription(None, ("user.42", "public.*")),
        lambda c: c.set_subscription(None, ("*",)),
        lambda c: None,
    )
    for topic in ("user.42", "user.43", "public.news", "publicity", None):
        hub.publish({"t": topic}, topic)
    hub.flush()
    assert [m["t"] for m in _payloads(restricted)] == ["user.42", "public.news", None]
    assert len(_payloads(star)) == 5
    assert len(_payloads(everything)) == 5


async def test_one_buffer_per_audience_and_the_tick_buffer_itself_when_an_audience_gets_everything():
    loop = asyncio.get_running_loop()
    hub, ts = _hub_with(loop, *[(lambda c, i=i: c.set_subscription({f"t{i % 3}"})) for i in range(9)])
    for i in range(6):
        hub.publish({"i": i}, f"t{i % 3}")
    assert hub.flush() == 9
    for i, t in enumerate(ts):
        assert [m["i"] for m in _payloads(t)] == [j for j in range(6) if j % 3 == i % 3]
    assert hub.stats()["deliveries"] == 18


async def test_subscribe_and_unsubscribe_change_what_the_next_flush_writes():
    loop = asyncio.get_running_loop()
    hub, (t,) = _hub_with(loop, lambda c: c.set_subscription({"a"}))
    c = hub.clients[0]
    answer = hub.subscribe(c, "b")
    assert answer["type"] == "subscribed" and answer["topic"] == "b"
    hub.publish(1, "a")
    hub.publish(2, "b")
    hub.publish(3, "c")
    hub.flush()
    assert _payloads(t) == [{"type": "subscribed", "topic": "b", "epoch": answer["epoch"], "offset": 0}, 1, 2]
    assert hub.unsubscribe(c, "a") is True
    assert hub.unsubscribe(c, "zzz") is False
    hub.publish(4, "a")
    hub.publish(5, "b")
    hub.flush()
    assert _payloads(t) == [{"type": "unsubscribed", "topic": "a"}, 5]


async def test_hold_and_release_skip_what_the_recovery_replayed():
    from fastws._core import encode_frame

    loop = asyncio.get_running_loop()
    hub, _ = _hub_with(loop)
    hub.shared_history = True
    c, t = _recovering_client(hub, 2)
    # live frames numbered by the shared history arrive while the history is fetched
    for off in (5, 6):
        hub.publish_frame(encode_frame({"o": off}), "p", off, "E")
    hub.flush()
    assert t.take() == b""  # held
    history = [(o, encode_frame({"o": o})) for o in (3, 4, 5)]
    hub.recover(c, "p", "E", 5, history)
    hub.release(c)
    got = _payloads(t)
    assert got[0] == {"type": "subscribed", "topic": "p", "epoch": "E", "offset": 5, "recovered": True}
    assert [m["offset"] for m in got[1:]] == [3, 4, 5, 6]


async def test_audiences_of_many_names_few_names_and_prefixes_in_one_flush():
    loop = asyncio.get_running_loop()
    hub, (many, few, prefix) = _hub_with(
        loop,
        lambda c: c.set_subscription({f"s{i}" for i in range(20)}),  # more names than topics in the flush
        lambda c: c.set_subscription({"s3", "x"}),
        lambda c: c.set_subscription(None, ("s1*",)),  # s1, s10..s19
    )
    order = ["s3", None, "s15", "y", "s1", "s3"]
    for k, topic in enumerate(order):
        hub.publish({"k": k}, topic)
    hub.flush()
    assert [m["k"] for m in _payloads(many)] == [0, 1, 2, 4, 5]
    assert [m["k"] for m in _payloads(few)] == [0, 1, 5]
    assert [m["k"] for m in _payloads(prefix)] == [1, 2, 4]
    hub.publish({"k": "next"}, "s3")  # the index of the previous flush is gone
    hub.flush()
    assert _payloads(many) == [{"k": "next"}] and _payloads(few) == [{"k": "next"}] and _payloads(prefix) == []


async def test_without_history_or_deliver_latest_nothing_is_kept_and_names_cost_nothing():
    async with running_server(client_subscriptions=True) as server:
        server.broadcast({"v": 1}, topic="t")
        await asyncio.sleep(0)
        assert server.hub.history_after("t", 0) == []
        env = await connect(url(server) + "?topics=t,never.published&format=envelope&since=latest")
        got = [await recv_json(env), await recv_json(env)]
        assert {m["topic"] for m in got} == {"t", "never.published"}
        assert all(m["type"] == "subscribed" for m in got)
        for i in range(50):  # a client naming topics makes the server keep nothing for them
            await env.send(json.dumps({"subscribe": f"x{i}"}))
            assert (await recv_json(env))["type"] == "subscribed"
        assert server.stats()["topics"]["topics"] == 1
        await env.close()


async def test_a_frame_queued_during_a_shared_recovery_is_not_sent_twice():
    """The broker's PUBLISH of what the history read returned can come after the read:
    recovery waits for the flush that covers it, so the held copy is the one dropped."""
    from fastws._core import encode_frame
    from fastws.history import _until_flushed

    loop = asyncio.get_running_loop()
    hub, _ = _hub_with(loop)
    hub.shared_history = True
    for off in (1, 2):
        hub.publish_frame(encode_frame({"o": off}), "p", off, "E")
    hub.flush()
    c, t = _recovering_client(hub, 1)
    history = [(o, encode_frame({"o": o})) for o in (2, 3)]  # Redis has 3 already; the node not yet
    hub.recover(c, "p", "E", 3, history)
    hub.publish_frame(encode_frame({"o": 3}), "p", 3, "E")  # its PUBLISH arrives now, a flush is due
    await _until_flushed(hub, {"p": ("E", 3)}, loop.time() + 2)
    assert hub.topic_state("p") == ("E", 3)
    hub.release(c)
    hub.publish_frame(encode_frame({"o": 4}), "p", 4, "E")
    hub.flush()
    got = _payloads(t)
    assert got[0]["type"] == "subscribed" and got[0]["recovered"] is True
    assert [m["offset"] for m in got[1:]] == [2, 3, 4]


async def test_held_frames_of_a_new_epoch_are_not_taken_for_replayed_ones():
    from fastws._core import encode_frame

    loop = asyncio.get_running_loop()
    hub, _ = _hub_with(loop)
    hub.shared_history = True
    c, t = _recovering_client(hub, 499)
    hub.publish_frame(encode_frame({"new": 1}), "p", 1, "F")  # the history was lost: epoch F restarts at 1
    hub.flush()
    hub.recover(c, "p", "E", 500, [(500, encode_frame({"old": 500}))])
    hub.release(c)
    got = _payloads(t)
    assert [(m.get("epoch"), m.get("offset")) for m in got[1:]] == [("E", 500), ("F", 1)]


async def test_receivers_count_follows_joins_and_leaves_of_many_audiences():
    loop = asyncio.get_running_loop()
    hub, _ = _hub_with(loop, *[(lambda c, i=i: c.set_subscription({f"u{i}", "all"})) for i in range(50)],
                       lambda c: c.set_subscription(None, ("u1*",)),
                       lambda c: c.set_subscription(None, ("*", "u3")),
                       lambda c: None)
    assert hub.receivers("u1") == 1 + 1 + 1 + 1  # its own, the prefix, '*', the default client
    assert hub.receivers("u10") == 4
    assert hub.receivers("u3") == 3  # '*' names u3 too: counted once
    assert hub.receivers("all") == 50 + 2  # not under u1*
    for c in hub.clients[:10]:
        c.abort()
    await asyncio.sleep(0)
    hub.publish(0)
    hub.flush()  # forgets the closed clients
    assert hub.receivers("all") == 40 + 2
    assert hub.receivers("u1") == 3


async def test_broadcast_many_refuses_a_topics_list_of_another_length():
    async with running_server() as server:
        import pytest

        with pytest.raises(ValueError, match="3 items but 2 topics"):
            server.broadcast_many([1, 2, 3], topics=["a", "b"])
        assert server.stats()["messages"] == 0


# -- idle topics are evicted (topic_idle_ttl) -----------------------------------------------

IDLE = 0.2  # topic_idle_ttl of these tests: sweeps every 0.1 s


def topic_count(server) -> int:
    return server.stats()["topics"]["topics"]


def count_sweeps(server) -> list[float]:
    """The loop times of the node's eviction sweeps from now on (its timer looks the method up
    each time it schedules the next sweep)."""
    node = server._node
    times: list[float] = []
    sweep = node._sweep_topics

    def counted() -> None:
        times.append(asyncio.get_running_loop().time())
        sweep()

    node._sweep_topics = counted
    return times


async def sweeps_past(server, times: list[float], after: float) -> None:
    """Wait (bounded) until a sweep ran at least ``after`` seconds from now: by then every
    topic published before now has been idle long enough to go, if it can."""
    deadline = asyncio.get_running_loop().time() + after
    await wait_for(lambda: bool(times) and times[-1] >= deadline)


async def test_idle_topics_are_evicted_counted_and_the_gauge_drops():
    from fastws.metrics import render_metrics
    from tests.test_metrics import parse_prometheus

    async with running_server(topic_idle_ttl=IDLE) as server:
        for i in range(5000):
            server.broadcast({"i": i}, topic=f"user:{i}")
        await asyncio.sleep(0)  # flushed
        assert topic_count(server) == 5000
        m = parse_prometheus(render_metrics(server))
        assert m["fastws_topics"] == 5000 and m["fastws_topics_evicted_total"] == 0
        await wait_for(lambda: topic_count(server) == 0)
        assert server.stats()["topics"]["evicted"] == 5000
        m = parse_prometheus(render_metrics(server))
        assert m["fastws_topics"] == 0 and m["fastws_topics_evicted_total"] == 5000
        # a topic published again is made again, and goes again
        server.broadcast({"i": 0}, topic="user:0")
        await asyncio.sleep(0)
        assert topic_count(server) == 1
        await wait_for(lambda: server.stats()["topics"]["evicted"] == 5001)
        assert topic_count(server) == 0


async def test_a_topic_with_an_exact_subscriber_is_kept_a_firehose_client_keeps_none():
    async with running_server(topic_idle_ttl=IDLE) as server:
        ws = await connect(url(server) + "?topics=kept")
        every = await connect(url(server))  # firehose: gets every topic, keeps none
        await wait_for(lambda: server.connection_count == 2)
        server.broadcast({"n": 1}, topic="kept")
        server.broadcast({"n": 2}, topic="gone")
        assert (await recv_json(ws))["n"] == 1
        assert [m["n"] for m in await recv_all(every, 2)] == [1, 2]
        await wait_for(lambda: server.stats()["topics"]["evicted"] == 1)
        times = count_sweeps(server)
        await sweeps_past(server, times, 2 * IDLE)
        assert set(server.hub.topic_counts()) == {"kept"}
        await ws.close()  # its last exact subscriber gone: the topic goes too
        await wait_for(lambda: topic_count(server) == 0)
        assert server.stats()["topics"]["evicted"] == 2
        await every.close()


async def test_history_with_history_ttl_is_evicted_once_its_entries_expire():
    async with running_server(topic_idle_ttl=IDLE, history_size=10, history_ttl=0.3) as server:
        server.broadcast({"i": 1}, topic="t")
        await asyncio.sleep(0)
        assert len(server.hub.history_after("t", 0)) == 1
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: topic_count(server) == 0)
        assert asyncio.get_running_loop().time() - started >= 0.3 - 0.05  # not before its entry expired
        assert server.stats()["topics"]["evicted"] == 1
        assert server.stats()["topics"]["history_entries"] == 0


async def test_history_without_history_ttl_and_the_kept_latest_keep_their_topics():
    for settings in ({"history_size": 10}, {"deliver_latest": True}):
        async with running_server(topic_idle_ttl=IDLE, **settings) as server:
            times = count_sweeps(server)
            server.broadcast({"v": 1}, topic="t")
            await asyncio.sleep(0)
            await sweeps_past(server, times, 3 * IDLE)
            assert topic_count(server) == 1, settings
            assert server.stats()["topics"]["evicted"] == 0
            plain = await connect(url(server) + "?topics=t&since=latest")
            assert await recv_json(plain) == {"v": 1}  # still served
            await plain.close()


async def test_deliver_latest_with_history_ttl_lets_the_topic_go():
    async with running_server(topic_idle_ttl=IDLE, deliver_latest=True, history_ttl=0.1) as server:
        server.broadcast({"v": 1}, topic="t")
        await asyncio.sleep(0)
        await wait_for(lambda: topic_count(server) == 0)
        assert server.stats()["topics"]["evicted"] == 1


async def test_resuming_an_evicted_topic_is_not_recovered_and_gets_the_new_epoch():
    async with running_server(topic_idle_ttl=IDLE, history_size=10, history_ttl=0.1) as server:
        ws = await connect(url(server) + "?topics=t&format=envelope")
        sub = await recv_json(ws)
        assert sub["type"] == "subscribed"
        for i in range(3):
            server.broadcast({"i": i}, topic="t")
        got = await recv_all(ws, 3)
        old_epoch = got[-1]["epoch"]
        assert [m["offset"] for m in got] == [1, 2, 3]
        await ws.close()
        await wait_for(lambda: topic_count(server) == 0)
        # made again: offsets from 1 again, past the client's 3, under another epoch
        for i in range(5):
            server.broadcast({"i": 10 + i}, topic="t")
        await asyncio.sleep(0)
        new_epoch, latest = server.hub.topic_state("t")
        assert latest == 5 and new_epoch != old_epoch
        ws = await connect(url(server) + f"?topics=t&format=envelope&since=t:3&epoch={old_epoch}")
        assert await recv_json(ws) == {"type": "subscribed", "topic": "t", "epoch": new_epoch, "offset": 5,
                                       "recovered": False}
        server.broadcast({"i": "live"}, topic="t")
        assert await recv_json(ws) == {"topic": "t", "offset": 6, "epoch": new_epoch, "data": {"i": "live"}}
        server.broadcast({"marker": True})  # and nothing else before it
        assert await recv_json(ws) == {"topic": None, "data": {"marker": True}}
        assert server.stats()["topics"]["not_recovered"] == 1
        await ws.close()
        # resuming before anything is published again: not recovered either (no stale epoch)
        await wait_for(lambda: topic_count(server) == 0)
        ws = await connect(url(server) + f"?topics=t&format=envelope&since=t:6&epoch={new_epoch}")
        answer = await recv_json(ws)
        assert answer["recovered"] is False and answer["epoch"] != new_epoch and answer["offset"] == 0
        await ws.close()


async def test_a_frame_waiting_for_the_flush_keeps_its_topic():
    async with running_server(topic_idle_ttl=0) as server:  # no timer: the sweeps are called here
        hub = server.hub
        hub.configure_topics(topic_idle_ttl=IDLE)
        loop = asyncio.get_running_loop()
        server.broadcast({"i": 1}, topic="t")
        await asyncio.sleep(0)
        assert hub.evict_idle_topics() == 0  # seen: idle from now
        seen = loop.time()
        await wait_for(lambda: loop.time() - seen > IDLE + 0.01)
        server.broadcast({"i": 2}, topic="t")  # queued, not flushed yet
        assert hub.evict_idle_topics() == 0
        assert topic_count(server) == 1
        await asyncio.sleep(0)
        assert hub.topic_state("t")[1] == 2  # numbered on, in the same epoch
        seen = loop.time()
        await wait_for(lambda: loop.time() - seen > IDLE + 0.01)
        assert hub.evict_idle_topics() == 1
        assert topic_count(server) == 0


async def test_topic_idle_ttl_0_never_evicts():
    async with running_server(topic_idle_ttl=0, heartbeat_interval=0.05) as server:
        assert server._node._sweep_handle is None  # no timer at all
        server.broadcast({"i": 1}, topic="t")
        await asyncio.sleep(0)
        assert server.hub.evict_idle_topics() == 0
        assert topic_count(server) == 1


def test_topic_idle_ttl_must_not_be_negative():
    import pytest

    from fastws import ConfigError, ServerConfig

    with pytest.raises(ConfigError, match="topic_idle_ttl: must be >= 0 seconds"):
        ServerConfig.from_dict({"topic_idle_ttl": -0.5})
    assert ServerConfig().topic_idle_ttl == 300
