"""Topics under attack (issue 15), with real clients on 127.0.0.1: restricted tokens trying
to reach other topics by every door (subscribe messages, ``since``, patterns), floods of
subscription messages from a client that never reads, and odd subscription messages.
A restricted client never receives a topic outside its grant; nothing crashes; the server
keeps nothing per name a client chose; other clients are unaffected."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from fastws.auth import encode_jwt
from fastws.frames import encode_client_frame
from tests.utils import TIMEOUT, RawClient, running_server, url, wait_for

SECRET = "s3cret-s3cret-s3cret"


def jwt(claims: dict[str, object]) -> str:
    return encode_jwt({"exp": time.time() + 60, **claims}, SECRET)


async def messages_until(ws: ClientConnection, tag: str) -> list[dict[str, object]]:
    """Every JSON message ``ws`` gets up to the envelope whose data is ``tag`` (excluded)."""
    got: list[dict[str, object]] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            message = json.loads(await ws.recv())
            if message.get("data") == tag or message == tag:
                return got
            got.append(message)


async def test_a_restricted_client_reaches_no_other_topic_by_message_since_or_pattern() -> None:
    token = jwt({"sub": "u42", "topics": ["user/42", "prices:*"]})
    async with running_server(auth={"jwt_secret": SECRET}, client_subscriptions=True, history_size=10) as server:
        for topic in ("secret", "user/420", "prices:A"):  # history a recovery could leak
            server.broadcast({"old": topic}, topic=topic)
        base = url(server) + f"?token={token}&format=envelope"
        clients = [await connect(base), await connect(base + "&topics=user/42"),
                   await connect(base + "&since=prices:A:0")]
        await wait_for(lambda: server.connection_count == 3)
        attempts = [{"subscribe": "secret"}, {"subscribe": "secret", "since": 0}, {"subscribe": "user/420"},
                    {"subscribe": "user/4"}, {"subscribe": "*"}, {"subscribe": "prices:*"},
                    {"subscribe": "secret", "since": 0, "epoch": "x"}]
        for ws in clients:
            for attempt in attempts:
                await ws.send(json.dumps(attempt))
        await wait_for(lambda: server.stats()["topics"]["subscribe_errors"] == 3 * len(attempts))
        for topic in ("secret", "user/420", "prices:A", "user/42"):
            server.broadcast({"live": topic}, topic=topic)
        server.broadcast("end")
        for ws in clients:
            got = await messages_until(ws, "end")
            errors = [m["error"] for m in got if m.get("type") == "error"]
            assert errors == ["topic_forbidden", "topic_forbidden", "topic_forbidden", "topic_forbidden",
                              "subscription_invalid", "subscription_invalid", "topic_forbidden"]
            topics = {m["topic"] for m in got if "data" in m}
            assert topics <= {"prices:A", "user/42"}, got
            assert {"live": "user/42"} in [m.get("data") for m in got]
            await ws.close()


async def test_control_replies_to_a_client_that_never_reads_stay_within_max_queued_bytes() -> None:
    """A flood of subscribe messages whose replies are never read: under the drop policy the
    replies must not pile up without bound (as for PINGs); other clients are served."""
    cap = 64 * 1024
    n = 100_000
    async with running_server(slow_client_policy="drop", max_queued_bytes=cap) as server:
        good = await connect(url(server))
        flooder = await RawClient.connect(server.port, "/?format=envelope", rcvbuf=4096)
        await wait_for(lambda: server.connection_count == 2)
        message = encode_client_frame(0x1, b'{"subscribe": "a"}')  # client_subscriptions is off
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(TIMEOUT * 4):
            await loop.sock_sendall(flooder.sock, message * n)
        await wait_for(lambda: server.stats()["topics"]["subscribe_errors"] == n, TIMEOUT * 4)
        (client,) = [c for c in server.clients if c.path.startswith("/?format")]
        assert client.write_buffer_size() <= cap + 1024
        assert client.dropped > 0
        server.broadcast("still served")
        async with asyncio.timeout(TIMEOUT):
            assert await good.recv() == "still served"
        flooder.close()
        await good.close()


async def test_a_bad_subscription_message_while_subscriptions_are_off_says_they_are_off() -> None:
    async with running_server() as server:
        ws = await connect(url(server) + "?format=envelope")
        for message in ({"subscribe": 5}, {"subscribe": "a", "since": -1}, {"subscribe": "a b"}):
            await ws.send(json.dumps(message))
            async with asyncio.timeout(TIMEOUT):
                reply = json.loads(await ws.recv())
            assert reply["type"] == "error" and reply["error"] == "client_subscriptions_off", reply
        assert server.stats()["topics"]["subscribe_errors"] == 3
        await ws.close()


async def test_subscribe_and_unsubscribe_floods_of_new_names_keep_nothing() -> None:
    """Names a client gives (subscribe, since, unsubscribe) never make the Hub keep a topic."""
    async with running_server(client_subscriptions=True, history_size=5, max_topics_per_client=4) as server:
        other = await connect(url(server) + "?topics=p&format=envelope")
        ws = await connect(url(server) + "?format=envelope")
        await wait_for(lambda: server.connection_count == 2)
        for i in range(2000):
            await ws.send(json.dumps({"subscribe": f"n{i}", "since": i, "epoch": "e"}))
            await ws.send(json.dumps({"unsubscribe": f"n{i}"}))
            await ws.send(json.dumps({"unsubscribe": f"m{i}"}))  # never subscribed: an error
        await wait_for(lambda: server.stats()["topics"]["subscribe_errors"] == 2000)
        stats = server.stats()["topics"]
        assert stats["topics"] == 0 and stats["history_entries"] == 0
        assert stats["subscriptions"] == 1  # the other client's
        assert stats["recovered"] + stats["not_recovered"] == 2000
        server.broadcast("p1", topic="p")
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = json.loads(await other.recv())
                if message.get("data") == "p1":
                    break
        assert server.stats()["topics"]["topics"] == 1
        await ws.close()
        await other.close()


async def test_odd_subscription_messages_get_an_error_or_go_to_on_message_never_a_crash() -> None:
    received: list[str | bytes] = []
    async with running_server(client_subscriptions=True,
                              on_message=lambda client, data: received.append(data)) as server:
        ws = await connect(url(server) + "?topics=t&format=envelope", max_size=None)
        async with asyncio.timeout(TIMEOUT):
            await ws.recv()  # subscribed t
        odd = ['{"subscribe":' + "[" * 5000 + "]" * 5000 + "}",  # too deep: not a subscription message
               '{"subscribe": "t", "since": 1.5}', '{"subscribe": "t", "since": 18446744073709551616}',
               '{"subscribe": "t", "since": true}', '{"subscribe": "t", "since": 0, "epoch": 7}',
               '{"subscribe": ["t"]}', '{"subscribe": {"t": 1}}', '{"unsubscribe": "t", "since": 1}']
        for text in odd:
            await ws.send(text)
        await ws.send('{"subscribe": "t", "since": 99999999}')  # above the latest offset
        async with asyncio.timeout(TIMEOUT):
            replies = [json.loads(await ws.recv()) for _ in range(len(odd))]
        assert [r["error"] for r in replies[:-1]] == ["subscription_invalid"] * (len(odd) - 1)
        assert replies[-1] == {"type": "subscribed", "topic": "t", "epoch": replies[-1]["epoch"], "offset": 0,
                               "recovered": False}
        assert received == [odd[0]]
        server.broadcast("x", topic="t")
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await ws.recv())["data"] == "x"
        await ws.close()


async def test_a_refused_handshake_of_any_shape_is_counted_and_named() -> None:
    async with running_server(auth={"jwt_secret": SECRET}, max_topics_per_client=64) as server:
        token = jwt({"topics": ["a*"]})
        for query, reason in [("topics=*", "topic_invalid"), ("topics=a*", "topic_invalid"),
                              ("topics=b", "topic_forbidden"), ("topics=a,b%2Cc", "topic_forbidden"),
                              ("topics=" + ",".join(f"a{i}" for i in range(65)), "too_many_topics"),
                              ("format=envelope&since=b:0", "since_invalid"),
                              ("topics=a&format=envelope&since=a:" + "9" * 40, "since_invalid"),
                              ("topics=%ff", "topic_invalid")]:
            before = server.stats()["rejected"][reason]
            with pytest.raises(InvalidStatus) as info:
                async with asyncio.timeout(TIMEOUT):
                    ws = await connect(url(server) + f"?token={token}&{query}")
                    await ws.close()
            assert reason.encode() in (info.value.response.body or b""), query
            assert server.stats()["rejected"][reason] == before + 1, query


async def test_broadcast_to_a_topic_no_client_could_name_is_an_error_naming_it() -> None:
    """A topic no client can subscribe to (``a b``, ``*``, empty, too long) would still reach the
    firehose clients, under a name they could never ask for: refused, naming the problem."""
    async with running_server(max_topic_length=8) as server:
        for bad, why in [("a b", "' '"), ("*", "'*'"), ("", "empty"), ("x" * 9, "longer than 8")]:
            with pytest.raises(ValueError, match=why):
                server.broadcast("x", topic=bad)
            with pytest.raises(ValueError, match=why):
                server.broadcast_many(["x"], topics=[bad])
            with pytest.raises(ValueError, match=why):
                server.broadcast_many(["x"], topic=bad)
        assert server.stats()["messages"] == 0
        assert server.broadcast("x", topic="ok:1/a@b") == 0
