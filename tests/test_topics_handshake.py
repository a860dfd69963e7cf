"""Topics at the handshake, with real clients: refusals (400/403, counted, others unaffected),
grants (the data-leak case), the component's topic_field and ``serve --topic-field``."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

import fastws
from fastws import WebSocketComponent
from fastws.auth import encode_jwt
from tests.utils import TIMEOUT, running_server, spawn_serve, url

SECRET = "s3cret-s3cret-s3cret"


def jwt(claims: dict[str, object]) -> str:
    return encode_jwt({"exp": time.time() + 60, **claims}, SECRET)


async def refused_with(server: fastws.Server, query: str) -> tuple[int, bytes]:
    """Try to connect with ``query``; return the HTTP status and body of the refusal."""
    with pytest.raises(InvalidStatus) as info:
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(url(server) + query)
            await ws.close()
    return info.value.response.status_code, info.value.response.body or b""


async def received_until(ws: ClientConnection, last: str) -> list[str]:
    """Every text message ``ws`` receives up to and including ``last`` (bounded), but the
    ``registered`` tags (broadcasts without topic, which every client may get)."""
    got: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while not got or got[-1] != last:
            message = await ws.recv()
            assert isinstance(message, str)
            if message != "hello":
                got.append(message)
    return got


async def registered(server: fastws.Server, ws: ClientConnection, tag: str = "hello") -> None:
    """Broadcast ``tag`` without a topic until ``ws`` receives it: then the server has registered it."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            server.broadcast(tag)
            try:
                async with asyncio.timeout(0.2):
                    while await ws.recv() != tag:
                        pass
                    return
            except TimeoutError:
                continue


BAD_QUERIES = [
    ("?topics=", 400, "topic_invalid"),
    ("?topics=a%20b", 400, "topic_invalid"),
    ("?topics=" + "x" * 200, 400, "topic_invalid"),
    ("?topics=a,b,c,d", 400, "too_many_topics"),
    ("?topics=a&format=envelope&since=b:1", 400, "since_invalid"),
    ("?topics=a&format=envelope&since=a:-1", 400, "since_invalid"),
    ("?topics=a&since=a:1", 400, "since_invalid"),
    ("?topics=a&format=envelope&since=a:1&epoch=bad!", 400, "since_invalid"),
    ("?topics=a&epoch=E", 400, "since_invalid"),
    ("?format=xml", 400, "format_invalid"),
]


async def test_bad_queries_are_refused_counted_and_others_keep_being_served() -> None:
    async with running_server(max_topics_per_client=3) as server:
        good = await connect(url(server) + "?topics=a")
        await registered(server, good)
        counts: dict[str, int] = {}
        for query, status, reason in BAD_QUERIES:
            got_status, body = await refused_with(server, query)
            assert got_status == status, query
            assert body.startswith(f"{status} ".encode()) and len(body) > 4, (query, body)  # says why
            counts[reason] = counts.get(reason, 0) + 1
        rejected = server.stats()["rejected"]
        for reason, n in counts.items():
            assert rejected[reason] == n, reason
        server.broadcast("to a", topic="a")
        server.broadcast("to b", topic="b")
        server.broadcast("end")
        assert await received_until(good, "end") == ["to a", "end"]
        assert server.connection_count == 1
        await good.close()


async def test_refusal_reasons_show_at_zero_from_the_start() -> None:
    async with running_server() as server:
        rejected = server.stats()["rejected"]
        for reason in ("topic_invalid", "too_many_topics", "since_invalid", "format_invalid", "topic_forbidden"):
            assert rejected[reason] == 0, reason


async def test_jwt_topics_claim_limits_subscriptions() -> None:
    token = jwt({"topics": ["prices.*", "news"]})
    async with running_server(auth={"jwt_secret": SECRET}) as server:
        status, body = await refused_with(server, f"?token={token}&topics=news,secret")
        assert status == 403 and b"topic_forbidden" in body
        assert server.stats()["rejected"]["topic_forbidden"] == 1
        bad_claim = jwt({"topics": "news"})  # not a list: the token is refused
        status, _ = await refused_with(server, f"?token={bad_claim}")
        assert status == 403
        assert server.stats()["rejected"]["topic_forbidden"] == 2
        ok = await connect(url(server) + f"?token={token}&topics=prices.eu,news")
        await registered(server, ok)
        server.broadcast("eu", topic="prices.eu")
        server.broadcast("us", topic="prices.us")
        server.broadcast("end")
        assert await received_until(ok, "end") == ["eu", "end"]
        await ok.close()


@pytest.mark.parametrize("firehose", [True, False])
async def test_a_restricted_client_without_topics_never_gets_another_topic(firehose: bool) -> None:
    """The data-leak case: no ?topics=, a restricted token -> its allowed topics and topic-less broadcasts only."""
    jwt_token = jwt({"topics": ["prices.*"]})
    auth = {"jwt_secret": SECRET, "tokens": ["static"], "token_topics": {"static": ["news"]}}
    async with running_server(auth=auth, firehose=firehose) as server:
        by_jwt = await connect(url(server), additional_headers={"Authorization": f"Bearer {jwt_token}"})
        by_token = await connect(url(server) + "?token=static")
        for ws in (by_jwt, by_token):
            await registered(server, ws)
        for topic in ("secret", "prices.eu", "news", "pricesX", "admin"):
            server.broadcast(f"on {topic}", topic=topic)
        server.broadcast("everyone")
        server.broadcast("end")
        assert await received_until(by_jwt, "end") == ["on prices.eu", "everyone", "end"]
        assert await received_until(by_token, "end") == ["on news", "everyone", "end"]
        for ws in (by_jwt, by_token):
            await ws.close()


async def test_firehose_decides_for_unrestricted_clients_without_topics() -> None:
    for firehose, expected in ((True, ["on a", "everyone", "end"]), (False, ["everyone", "end"])):
        async with running_server(firehose=firehose) as server:
            ws = await connect(url(server))
            await registered(server, ws)
            server.broadcast("on a", topic="a")
            server.broadcast("everyone")
            server.broadcast("end")
            assert await received_until(ws, "end") == expected
            await ws.close()


# -- the component's topic_field ---------------------------------------------------------------------------


async def test_component_topic_field_routes_items_and_reports_subscribers() -> None:
    comp = WebSocketComponent("ws", {"host": "127.0.0.1", "port": 0, "topic_field": "meta.topic"})
    send, receive = anyio.create_memory_object_stream[object](100)
    out_send, out_receive = anyio.create_memory_object_stream[object](100)
    comp.receive_streams["input"] = receive
    comp.send_streams["output"] = out_send
    await comp.start()
    try:
        on_a = await connect(url(comp.server) + "?topics=a")
        on_b = await connect(url(comp.server) + "?topics=b")
        everything = await connect(url(comp.server))
        for ws in (on_a, on_b, everything):
            await registered(comp.server, ws)
        task = asyncio.create_task(comp.process())
        items = [{"meta": {"topic": "a"}, "n": 1}, {"meta": {"topic": "b"}, "n": 2}, {"n": 3},
                 {"meta": {"topic": 5}, "n": 4}, {"meta": {"topic": "a b"}, "n": 5}, {"meta": {"topic": "a"}, "n": 6}]
        async with send:
            for item in items:
                await send.send(item)
        reports = []
        async with asyncio.timeout(TIMEOUT), out_receive:
            async for report in out_receive:
                reports.append(report)
        await asyncio.wait_for(task, TIMEOUT)
        assert [r["broadcast_to"] for r in reports] == [2, 2, 3, 0, 0, 2]
        assert reports[3]["error"] == "topic_field 'meta.topic': the topic must be a string, got int"
        assert "topic 'a b' has the character ' '" in reports[4]["error"]
        assert comp.broadcast_errors == 2 and comp.error_count == 2
        comp.server.broadcast("end")
        assert [json.loads(m)["n"] for m in (await received_until(on_a, "end"))[:-1]] == [1, 3, 6]
        assert [json.loads(m)["n"] for m in (await received_until(on_b, "end"))[:-1]] == [2, 3]
        assert [json.loads(m)["n"] for m in (await received_until(everything, "end"))[:-1]] == [1, 2, 3, 6]
        # broadcast() (one item, no await) routes too
        assert comp.broadcast({"meta": {"topic": "b"}, "n": 7})["broadcast_to"] == 2
        for ws in (on_a, on_b, everything):
            await ws.close()
    finally:
        await comp.stop()


# -- serve --topic-field --------------------------------------------------------------------------------------


async def test_serve_topic_field_reads_json_lines() -> None:
    proc, port = await spawn_serve("--topic-field", "t")
    assert proc.stdin is not None and proc.stderr is not None
    try:
        async with connect(f"ws://127.0.0.1:{port}/?topics=a") as ws:
            async with asyncio.timeout(TIMEOUT):  # registered once a topic-less line arrives
                while True:
                    proc.stdin.write(b'{"hello": 1}\n')
                    await proc.stdin.drain()
                    try:
                        async with asyncio.timeout(0.2):
                            while json.loads(await ws.recv()) != {"hello": 1}:
                                pass
                            break
                    except TimeoutError:
                        continue
            proc.stdin.write(b'{"t": "b", "n": 1}\nnot json\n{"t": 7, "n": 2}\n{"t": "a", "n": 3}\n{"end": true}\n')
            await proc.stdin.drain()
            got = []
            async with asyncio.timeout(TIMEOUT):
                while not got or got[-1] != {"end": True}:
                    message = json.loads(await ws.recv())
                    if message != {"hello": 1}:
                        got.append(message)
            assert got == [{"t": "a", "n": 3}, {"end": True}]
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
            err = (await proc.stderr.read()).decode()
        assert "--topic-field: the line is not JSON: 'not json'" in err
        assert "topic_field 't': the topic must be a string, got int" in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
