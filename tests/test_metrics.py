"""GET /health and GET /metrics: exact counters, Prometheus text format, a separate port."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fastws
from fastws.metrics import render_metrics
from tests.utils import TIMEOUT, RawClient, raw_http, running_server, url, wait_for

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, float | dict[str, float]]:
    """Parse the exposition format strictly enough to catch mistakes; {name: value | {label: value}}."""
    assert text.endswith("\n")
    out: dict[str, float | dict[str, float]] = {}
    helped, typed = set(), {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge"), line
            assert name not in typed, f"duplicate TYPE for {name}"
            typed[name] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line: {line!r}"
            name, _, _, label_value, value = m.groups()
            assert name in typed and name in helped, f"sample before its TYPE/HELP: {line!r}"
            if typed[name] == "counter":
                assert name.endswith("_total"), name
            if label_value is None:
                out[name] = float(value)
            else:
                out.setdefault(name, {})[label_value] = float(value)
    return out


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await raw_http(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


async def metrics(port: int, path: str = "/metrics") -> dict:
    status, headers, body = await get(port, path)
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_prometheus(body.decode())


async def test_health_reports_status_connections_uptime():
    async with running_server() as server:
        async with connect(url(server)), connect(url(server)):
            await wait_for(lambda: server.connection_count == 2)
            status, headers, body = await get(server.port, "/health")
        assert status == 200
        assert headers["content-type"] == "application/json"
        health = json.loads(body)
        assert health["status"] == "ok"
        assert health["connections"] == 2
        assert health["max_connections"] == 100
        assert 0 <= health["uptime"] < 60


async def test_metrics_counters_are_exact():
    n, m = 5, 7
    async with running_server(max_connections=n + 1, heartbeat_interval=0.2, heartbeat_timeout=0.3) as server:
        clients = [await connect(url(server)) for _ in range(n)]
        silent = await RawClient.connect(server.port)  # never answers a ping
        await wait_for(lambda: server.connection_count == n + 1)
        extra = await connect(url(server))  # over max_connections: 101, then CLOSE 1008
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(TIMEOUT):
                await extra.recv()
        await wait_for(lambda: server.connection_count == n)  # the heartbeat removed the silent one
        assert await silent.closed()
        silent.close()
        for _ in range(m):
            server.broadcast("x" * 10)  # a 12-byte frame
            await asyncio.sleep(0)
        for ws in clients:
            async with asyncio.timeout(TIMEOUT):
                assert [await ws.recv() for _ in range(m)] == ["x" * 10] * m
        await clients[0].close()  # client_close
        bad = clients[1]
        await bad.send("fine")  # counted as a received message
        await wait_for(lambda: server.stats()["messages_in"] == 1)
        raw_bad = await RawClient.connect(server.port)
        raw_bad.send_frame(0x1, b"\xff")  # invalid UTF-8: protocol_error
        assert (await raw_bad.read_frame())[0] == 0x8
        assert await raw_bad.closed()
        raw_bad.close()
        await wait_for(lambda: server.connection_count == n - 1)
        got = await metrics(server.port)

        assert got["fastws_connections_open"] == n - 1
        assert got["fastws_connections_max"] == n + 1
        assert got["fastws_connections_accepted_total"] == n + 2  # n + silent + raw_bad
        assert {k: v for k, v in got["fastws_connections_rejected_total"].items() if v} == {"max_connections": 1}
        assert got["fastws_broadcasts_total"] == m
        assert got["fastws_deliveries_total"] == n * m
        assert got["fastws_sent_bytes_total"] == n * m * 12
        assert got["fastws_flushes_total"] == m
        assert got["fastws_heartbeat_timeouts_total"] == 1
        assert got["fastws_received_messages_total"] == 1
        assert got["fastws_protocol_errors_total"] == 1
        disconnects = got["fastws_disconnects_total"]
        assert {k: v for k, v in disconnects.items() if v} == {
            "heartbeat_timeout": 1, "client_close": 1, "protocol_error": 1,
        }
        assert set(disconnects) >= {"connection_lost", "slow_client", "rate_limited", "message_too_big"}
        assert got["fastws_slow_client_dropped_messages_total"] == 0
        assert got["fastws_slow_client_disconnects_total"] == 0
        assert got["fastws_handshake_timeouts_total"] == 0
        assert got["process_resident_memory_bytes"] > 1 << 20
        for ws in clients[1:]:
            await ws.close()
        await wait_for(lambda: server.connection_count == 0)
        got = await metrics(server.port)
        assert got["fastws_disconnects_total"]["client_close"] == n
        s = server.stats()
        assert sum(s["disconnect_reasons"].values()) == s["disconnects"] == n + 2


async def test_connection_lost_and_slow_client_drops_are_counted():
    cap = 64 * 1024
    async with running_server(max_queued_bytes=cap, slow_client_policy="drop") as server:
        good = await connect(url(server), max_size=None)
        stuck = await RawClient.connect(server.port, rcvbuf=4096)
        gone = await RawClient.connect(server.port)
        await wait_for(lambda: server.connection_count == 3)
        gone.close()  # TCP FIN without a closing handshake
        await wait_for(lambda: server.connection_count == 2)
        chunk = "z" * 16384
        sent = 0
        for _ in range(400):
            server.broadcast(chunk)
            sent += 1
            await asyncio.sleep(0.002)
            if server.stats()["dropped"] >= 3:
                break
        server.broadcast("END")
        sent += 1
        received = 0
        async with asyncio.timeout(TIMEOUT):
            while await good.recv() != "END":
                received += 1
        assert received + 1 == sent  # the good client got everything
        got = await metrics(server.port)
        s = server.stats()
        assert got["fastws_slow_client_dropped_messages_total"] == s["dropped"] >= 3
        assert got["fastws_slow_clients_dropping"] == 1
        assert got["fastws_disconnects_total"]["connection_lost"] == 1
        # every broadcast reached each client, or was counted as dropped for it
        assert s["deliveries"] + s["dropped"] == 2 * sent
        stuck.close()
        await good.close()


async def test_separate_metrics_port():
    async with running_server(metrics_port=0, handshake_timeout=0.3) as server:
        mport = server.metrics_port
        assert mport and mport != server.port
        async with connect(url(server)):
            await wait_for(lambda: server.connection_count == 1)
            status, _, body = await get(mport, "/health")
            assert status == 200 and json.loads(body)["connections"] == 1
            assert (await metrics(mport))["fastws_connections_open"] == 1
        # not on the WebSocket port any more
        assert (await get(server.port, "/metrics"))[0] == 404
        assert (await get(server.port, "/health"))[0] == 404
        assert (await get(mport, "/other"))[0] == 404
        status, headers, body = await raw_http(mport, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 100
        assert (await raw_http(mport, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))[0] == 405
        assert (await raw_http(mport, b"garbage\r\n\r\n"))[0] == 400
        assert (await raw_http(mport, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000))[0] == 431
        assert (await raw_http(mport, b"GET /metrics HTTP/1.1\r\n"))[0] == 408  # never finished
        # the WebSocket port still serves
        async with connect(url(server)) as ws:
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast("ok")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "ok"
    assert server.metrics_port is None


async def test_paths_are_configurable_and_can_be_turned_off():
    async with running_server(health_path=None, metrics_path="/internal/metrics") as server:
        assert (await get(server.port, "/health"))[0] == 404
        assert "fastws_connections_open" in await metrics(server.port, "/internal/metrics")


async def test_metrics_is_not_an_upgrade_target():
    """An upgrade request to /metrics opens a WebSocket like any path (routes are for plain GET)."""
    async with running_server() as server:
        raw = await RawClient.connect(server.port, path="/metrics")
        await wait_for(lambda: server.connection_count == 1)
        raw.close()
        await wait_for(lambda: server.connection_count == 0)


def test_label_values_are_escaped():
    class Fake:
        config = type("C", (), {"max_connections": 1})()

        def topic_counts(self, limit):
            return {}

        def stats(self):
            return {"connections": 0, "rejected": {'we"ird\\reason\n': 2}, "uptime": 1.5}

    text = render_metrics(Fake())
    assert 'fastws_connections_rejected_total{reason="we\\"ird\\\\reason\\n"} 2\n' in text
    parse_prometheus(text)


async def test_metrics_token_protects_health_and_metrics_on_the_websocket_port():
    token = "m3trics-t0ken"
    async with running_server(metrics_token=token) as server:
        for path in ("/health", "/metrics"):
            status, headers, body = await get(server.port, path)
            assert (status, body) == (401, b"401 metrics_token required"), path
            assert headers["www-authenticate"].startswith("Bearer")
            assert (await get(server.port, path + "?token=wrong"))[0] == 401
            status, _, _ = await raw_http(server.port, f"GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
            assert status == 200, path
            assert (await get(server.port, f"{path}?token={token}"))[0] == 200
        status, _, body = await get(server.port, f"/metrics?token={token}")
        assert "fastws_connections_open 0" in body.decode()
        # WebSocket clients are not affected by metrics_token
        async with connect(url(server)) as ws:
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast("ok")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "ok"


async def test_metrics_port_binds_loopback_by_default_and_metrics_host_and_token_apply():
    token = "m3trics-t0ken"
    async with running_server(host="0.0.0.0", metrics_port=0, metrics_token=token) as server:
        srv = server._metrics_server._srv
        assert {s.getsockname()[0] for s in srv.sockets} == {"127.0.0.1"}  # not the WebSocket host
        mport = server.metrics_port
        assert (await get(mport, "/metrics"))[0] == 401
        assert (await raw_http(mport, b"HEAD /health HTTP/1.1\r\nauthorization: BEARER m3trics-t0ken\r\n\r\n"))[0] == 200
        status, _, body = await raw_http(mport, b"GET /health HTTP/1.1\r\nAuthorization: Bearer m3trics-t0ken\r\n\r\n")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert (await get(mport, f"/metrics?token={token}"))[0] == 200
    async with running_server(metrics_port=0, metrics_host="127.0.0.1") as server:
        assert (await get(server.metrics_port, "/health"))[0] == 200


def test_metrics_host_and_token_config_errors_name_the_key():
    with pytest.raises(fastws.ConfigError, match=r"config\.metrics_host: needs metrics_port"):
        fastws.ServerConfig.from_dict({"metrics_host": "0.0.0.0"})
    with pytest.raises(fastws.ConfigError, match=r"config\.metrics_token: must not be empty"):
        fastws.ServerConfig.from_dict({"metrics_token": " "})
    assert fastws.ServerConfig.from_dict({"metrics_port": 9100}).metrics_host is None


def test_every_counter_of_the_operations_table_is_exported():
    """docs/operations.md: "Server.stats() and /metrics give the same numbers"."""
    class Fake:
        config = type("C", (), {"max_connections": 1})()

        def topic_counts(self, limit):
            return {}

        def stats(self):
            return {"connections": 0, "uptime": 1.0, "pongs_skipped": 7, "worker_restarts": 2,
                    "worker_frames_dropped": 3}

    m = parse_prometheus(render_metrics(Fake()))
    assert m["fastws_pongs_skipped_total"] == 7
    assert m["fastws_worker_restarts_total"] == 2
    assert m["fastws_worker_frames_dropped_total"] == 3


async def test_pongs_skipped_of_a_real_server_is_in_metrics():
    async with running_server() as server:
        m = await metrics(server.port)
        assert m["fastws_pongs_skipped_total"] == server.stats()["pongs_skipped"] == 0
        assert "fastws_worker_restarts_total" not in m  # one process: no workers to restart


async def test_nonfinite_numbers_are_counted_in_stats_and_metrics():
    """NaN and ±Infinity go out as null; each one is counted, in stats() and in /metrics."""
    async with running_server() as server:
        async with connect(url(server)) as ws:
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": None})
            server.broadcast({"n": 1})  # no null: nothing to count
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await ws.recv()) == {"a": None, "b": [None, None, 1.5], "c": None}
                assert json.loads(await ws.recv()) == {"n": 1}
            assert server.stats()["nonfinite_numbers"] == 3
            assert (await metrics(server.port))["fastws_nonfinite_numbers_total"] == 3


# -- topics (issue 15) and compression ------------------------------------------------------------



class _TopicsFake:
    """A stats source with topic counters and a Hub that knows four topics."""

    def __init__(self, topic_metrics: int, topics: dict | None = None) -> None:
        self.config = type("C", (), {"max_connections": 1, "topic_metrics": topic_metrics})()
        self.topics = topics
        self.asked: list[int] = []
        fake = self

        del fake

    def topic_counts(self, limit: int) -> dict[str, tuple[int, int]]:
        self.asked.append(limit)
        return {"quiet": (9, 1), "busy": (1, 50), 'we"ird\\': (2, 20), "mid": (4, 10)}

    def stats(self) -> dict:
        s = {"connections": 0, "uptime": 1.0}
        if self.topics is not None:
            s["topics"] = self.topics
        return s


TOPIC_STATS = {"topics": 4, "subscriptions": 16, "envelope_clients": 3, "recovered": 5, "not_recovered": 2,
               "replayed": 40, "history_entries": 81, "subscribe_errors": 1}


def test_topic_metrics_come_from_stats():
    m = parse_prometheus(render_metrics(_TopicsFake(0, TOPIC_STATS)))
    assert m["fastws_topics"] == 4
    assert m["fastws_topic_subscriptions"] == 16
    assert m["fastws_envelope_clients"] == 3
    assert m["fastws_topic_history_entries"] == 81
    assert m["fastws_recoveries_total"] == {"recovered": 5, "not_recovered": 2}
    assert m["fastws_replayed_messages_total"] == 40
    assert m["fastws_subscribe_errors_total"] == 1
    # per-topic series are off unless topic_metrics > 0
    assert "fastws_topic_messages_total" not in m and "fastws_topic_subscribers" not in m


def test_per_topic_series_are_capped_to_the_busiest_and_escaped():
    fake = _TopicsFake(2, TOPIC_STATS)
    text = render_metrics(fake)
    m = parse_prometheus(text)
    assert fake.asked == [2]
    assert m["fastws_topic_messages_total"] == {"busy": 50, 'we\\"ird\\\\': 20}
    assert m["fastws_topic_subscribers"] == {"busy": 1, 'we\\"ird\\\\': 2}
    assert 'fastws_topic_messages_total{topic="we\\"ird\\\\"} 20\n' in text


def test_no_topic_metrics_without_topic_stats():
    """A server without topic support (or an older stats source) gets no topic series at all."""
    m = parse_prometheus(render_metrics(_TopicsFake(10, None)))
    assert not [name for name in m if "topic" in name or "recover" in name or "replayed" in name]


def test_compression_metrics_come_from_stats():
    class Fake:
        config = type("C", (), {"max_connections": 1})()

        def topic_counts(self, limit):
            return {}

        def stats(self):
            return {"connections": 0, "uptime": 1.0, "compression": {
                "clients": 3, "window_bits": 15, "level": 6, "min_size": 128, "messages_compressed": 7,
                "messages_uncompressed": 2, "bytes_in": 7000, "bytes_compressed": 900, "inflaters": 1}}

    m = parse_prometheus(render_metrics(Fake()))
    assert m["fastws_compression_clients"] == 3
    assert m["fastws_compression_inflaters"] == 1
    assert m["fastws_compression_window_bits"] == 15
    assert m["fastws_compression_messages_compressed_total"] == 7
    assert m["fastws_compression_messages_uncompressed_total"] == 2
    assert m["fastws_compression_bytes_in_total"] == 7000
    assert m["fastws_compression_bytes_compressed_total"] == 900


async def test_compression_metrics_of_a_real_server():
    async with running_server(compression_min_size=64) as server:
        async with connect(url(server)) as ws:  # websockets offers permessage-deflate
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast({"text": "a" * 500})
            server.broadcast("short")
            async with asyncio.timeout(TIMEOUT):
                assert json.loads(await ws.recv()) == {"text": "a" * 500}
                assert await ws.recv() == "short"
            m = await metrics(server.port)
            c = server.stats()["compression"]
    assert m["fastws_compression_clients"] == c["clients"] == 1
    assert m["fastws_compression_messages_compressed_total"] == c["messages_compressed"] == 1
    assert m["fastws_compression_messages_uncompressed_total"] == c["messages_uncompressed"] == 1
    assert m["fastws_compression_bytes_in_total"] == c["bytes_in"] == len(b'{"text":""}') + 500 + 5
    assert 0 < m["fastws_compression_bytes_compressed_total"] == c["bytes_compressed"] < 100
    async with running_server(compression="off") as server:
        assert not [name for name in await metrics(server.port) if name.startswith("fastws_compression_")]


async def _recv_json(ws) -> dict:
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


async def test_topic_metrics_of_a_real_server():
    """Gauges, recovery counters and the capped per-topic series, read over HTTP from a real server."""
    async with running_server(topic_metrics=2, history_size=10) as server:
        base = url(server)
        a = await connect(base + "?topics=a&format=envelope")
        b1, b2 = await connect(base + "?topics=b"), await connect(base + "?topics=b")
        c = await connect(base + "?topics=c")
        try:
            await wait_for(lambda: server.connection_count == 4)
            for i in range(3):
                assert server.broadcast({"i": i}, topic="a") == 1
            for i in range(2):
                assert server.broadcast({"i": i}, topic="b") == 2
            assert server.broadcast({"i": 0}, topic="c") == 1
            subscribed = await _recv_json(a)
            assert subscribed["type"] == "subscribed" and subscribed["offset"] == 0
            first = await _recv_json(a)
            assert first["topic"] == "a" and first["offset"] == 1 and first["data"] == {"i": 0}
            epoch = first["epoch"]
            for ws in (b1, b2):
                assert [await _recv_json(ws) for _ in range(2)] == [{"i": 0}, {"i": 1}]
            assert await _recv_json(c) == {"i": 0}
            m = await metrics(server.port)
            t = server.stats()["topics"]
            assert m["fastws_topics"] == t["topics"] >= 3
            assert m["fastws_topic_subscriptions"] == t["subscriptions"] == 4
            assert m["fastws_envelope_clients"] == t["envelope_clients"] == 1
            assert m["fastws_topic_history_entries"] == t["history_entries"] == 6
            # topic_metrics: 2 -> the two busiest topics only
            assert m["fastws_topic_messages_total"] == {"a": 3, "b": 2}
            assert m["fastws_topic_subscribers"] == {"a": 1, "b": 2}

            # one recovery that fills the gap (2 messages replayed), one from another epoch
            async with connect(base + f"?topics=a&format=envelope&since=a:1&epoch={epoch}") as ok:
                hello = await _recv_json(ok)
                assert hello == {"type": "subscribed", "topic": "a", "epoch": epoch, "offset": 3, "recovered": True}
                assert [(await _recv_json(ok))["offset"] for _ in range(2)] == [2, 3]
            async with connect(base + "?topics=a&format=envelope&since=a:1&epoch=not-this-one") as gap:
                assert (await _recv_json(gap))["recovered"] is False
            # a subscribe message while client_subscriptions is off: an error envelope, counted
            await a.send(json.dumps({"subscribe": "b"}))
            while (reply := await _recv_json(a)).get("type") != "error":
                pass
            assert reply["error"] == "client_subscriptions_off"
            m = await metrics(server.port)
            t = server.stats()["topics"]
            assert m["fastws_recoveries_total"] == {"recovered": 1, "not_recovered": 1}
            assert m["fastws_replayed_messages_total"] == t["replayed"] == 2
            assert m["fastws_subscribe_errors_total"] == t["subscribe_errors"] == 1
        finally:
            for ws in (a, b1, b2, c):
                await ws.close()


async def test_no_topic_series_without_topic_metrics():
    async with running_server() as server:
        m = await metrics(server.port)
    assert "fastws_topic_messages_total" not in m and "fastws_topic_subscribers" not in m
