"""WebSocketComponent and the base class: the stream contract of the original."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import enum
import json
import logging
import uuid

import anyio
import msgspec
import pytest
from websockets.asyncio.client import connect

import fastws
from fastws import ComposedComponent, WebSocketComponent
from tests.utils import TIMEOUT, url, wait_for


def wire(component, inputs=("input",), outputs=("output",), size=1000):
    """Attach memory streams as a system would; return (senders, receivers)."""
    senders, receivers = {}, {}
    for port in inputs:
        send, recv = anyio.create_memory_object_stream(size)
        component.receive_streams[port] = recv
        senders[port] = send
    for port in outputs:
        send, recv = anyio.create_memory_object_stream(size)
        component.send_streams[port] = send
        receivers[port] = recv
    return senders, receivers


async def drain(stream):
    out = []
    async with asyncio.timeout(TIMEOUT), stream:
        async for item in stream:
            out.append(item)
    return out


def local_config(**extra):
    return {"host": "127.0.0.1", "port": 0, **extra}


async def test_process_broadcasts_and_reports_to_every_output():
    comp = WebSocketComponent(name="ws", config=local_config())
    senders, receivers = wire(comp, outputs=("output", "audit"))
    await comp.start()
    try:
        clients = [await connect(url(comp)) for _ in range(3)]
        await wait_for(lambda: comp.connection_count == 3)
        task = asyncio.create_task(comp.process())
        items = [{"n": i} for i in range(5)]
        async with senders["input"]:
            for item in items:
                await senders["input"].send(item)
        out = await drain(receivers["output"])
        audit = await drain(receivers["audit"])
        await asyncio.wait_for(task, TIMEOUT)
        assert [r["message"] for r in out] == items
        assert all(list(r) == ["broadcast_to", "disconnected", "message"] for r in out)
        assert all(r["broadcast_to"] == 3 and r["disconnected"] == 0 for r in out)
        assert [a is o for a, o in zip(audit, out, strict=True)] == [True] * 5  # the same object to every output
        for ws in clients:
            async with asyncio.timeout(TIMEOUT):
                assert [json.loads(await ws.recv()) for _ in items] == items
            await ws.close()
    finally:
        await comp.stop()


async def test_items_waiting_together_go_out_in_one_write():
    comp = WebSocketComponent("ws", local_config())
    senders, receivers = wire(comp)
    await comp.start()
    try:
        ws = await connect(url(comp))
        await wait_for(lambda: comp.connection_count == 1)
        for i in range(16):  # all queued before process() runs
            senders["input"].send_nowait({"n": i})
        senders["input"].close()
        await asyncio.wait_for(comp.process(), TIMEOUT)
        assert len(await drain(receivers["output"])) == 16
        assert comp.server.hub.flushes == 1
        await ws.close()
    finally:
        await comp.stop()


async def test_bad_item_is_reported_counted_and_skipped(caplog):
    caplog.set_level(logging.ERROR, "fastws.component.ws")
    comp = WebSocketComponent("ws", local_config())
    senders, receivers = wire(comp)
    await comp.start()
    try:
        ws = await connect(url(comp))
        await wait_for(lambda: comp.connection_count == 1)
        task = asyncio.create_task(comp.process())
        bad = {"obj": object()}
        async with senders["input"]:
            await senders["input"].send({"n": 1})
            await senders["input"].send(bad)
            await senders["input"].send({"n": 2})
        out = await drain(receivers["output"])
        await asyncio.wait_for(task, TIMEOUT)
        assert out[0] == {"broadcast_to": 1, "disconnected": 0, "message": {"n": 1}}
        assert list(out[1]) == ["error", "broadcast_to", "disconnected", "message"]
        assert "object" in out[1]["error"] and out[1]["broadcast_to"] == 0 and out[1]["message"] is bad
        assert out[2]["message"] == {"n": 2} and out[2]["broadcast_to"] == 1
        assert comp.error_count == 1
        assert any("not broadcast" in r.getMessage() for r in caplog.records)
        async with asyncio.timeout(TIMEOUT):
            assert [json.loads(await ws.recv()) for _ in range(2)] == [{"n": 1}, {"n": 2}]
        await ws.close()
    finally:
        await comp.stop()


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Tick(msgspec.Struct):
    symbol: str
    price: float


async def test_process_item_serializes_common_types():
    comp = WebSocketComponent("ws", local_config())
    await comp.start()
    try:
        ws = await connect(url(comp))
        await wait_for(lambda: comp.connection_count == 1)
        uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
        item = {
            "datetime": dt.datetime(2025, 8, 3, 10, 15, 30, tzinfo=dt.UTC),
            "naive": dt.datetime(2025, 8, 3, 10, 15, 30),
            "date": dt.date(2025, 8, 3),
            "time": dt.time(10, 15, 30),
            "uuid": uid,
            "decimal": decimal.Decimal("1.10"),
            "set": {3, 1, 2},
            "frozenset": frozenset({"a"}),
            "enum": Color.RED,
            "dataclass": Point(1, 2),
            "struct": Tick("ACME", 1.5),
            "bytes": b"\x00\xff",
            "nested": [{"when": dt.date(2020, 1, 1)}],
        }
        result = await comp.process_item(item)
        assert result == {"broadcast_to": 1, "disconnected": 0, "message": item}
        async with asyncio.timeout(TIMEOUT):
            got = json.loads(await ws.recv())
        assert got["datetime"] == "2025-08-03T10:15:30Z"
        assert got["naive"] == "2025-08-03T10:15:30"
        assert got["date"] == "2025-08-03"
        assert got["time"] == "10:15:30"
        assert got["uuid"] == str(uid)
        assert got["decimal"] == "1.10"
        assert sorted(got["set"]) == [1, 2, 3]
        assert got["frozenset"] == ["a"]
        assert got["enum"] == "red"
        assert got["dataclass"] == {"x": 1, "y": 2}
        assert got["struct"] == {"symbol": "ACME", "price": 1.5}
        assert got["bytes"] == "AP8="
        assert got["nested"] == [{"when": "2020-01-01"}]
        # a str goes out verbatim, a top-level non-dict as JSON
        await comp.process_item("plain text")
        await comp.process_item([1, 2])
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "plain text"
            assert await ws.recv() == "[1,2]"
        await ws.close()
    finally:
        await comp.stop()


async def test_unserializable_item_returns_error_and_component_keeps_running():
    comp = WebSocketComponent("ws", local_config())
    await comp.start()
    try:
        result = await comp.process_item({"x": object()})
        assert result["broadcast_to"] == 0 and result["disconnected"] == 0 and "error" in result
        assert (await comp.process_item({"ok": 1}))["broadcast_to"] == 0  # no clients, no error
        assert comp.error_count == 1
    finally:
        await comp.stop()


async def test_process_item_before_start_broadcasts_to_nobody():
    comp = WebSocketComponent("ws", local_config())
    assert await comp.process_item({"a": 1}) == {"broadcast_to": 0, "disconnected": 0, "message": {"a": 1}}


async def test_start_and_stop_run_the_server_and_close_clients_with_1001():
    comp = WebSocketComponent("ws", local_config())
    await comp.start()
    assert await comp.is_ready()
    ws = await connect(url(comp))
    await wait_for(lambda: comp.connection_count == 1)
    health = await comp.health_check()
    assert health["status"] == "healthy" and health["connections"] == 1 and health["name"] == "ws"
    await comp.stop()
    async with asyncio.timeout(TIMEOUT):
        await ws.wait_closed()
    assert ws.close_code == 1001
    assert (await comp.health_check())["status"] == "stopped"


async def test_start_server_standalone():
    comp = WebSocketComponent("ws", local_config())
    await comp.start_server()
    async with connect(url(comp)) as ws:
        await wait_for(lambda: comp.connection_count == 1)
        assert (await comp.process_item({"hello": "world"}))["broadcast_to"] == 1
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await ws.recv()) == {"hello": "world"}
    await comp.stop_server()


def test_config_defaults_and_framework_flags():
    comp = WebSocketComponent(
        "ws", {"type": "WebSocket", "retry_enabled": True, "schema_validation_enabled": False, "metrics_enabled": True}
    )
    c = comp.server_config
    assert (c.port, c.host, c.max_connections, c.heartbeat_interval) == (8080, "0.0.0.0", 100, 30)
    assert WebSocketComponent.get_required_config_fields() == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"port": 0.5}, r"ws\.config\.port: expected an integer, got 0\.5"),
        ({"port": 70000}, r"ws\.config\.port: must be 1-65535"),
        ({"port": "8080"}, r"ws\.config\.port: expected an integer, got '8080'"),
        ({"max_connections": 0}, r"ws\.config\.max_connections: must be a positive integer"),
        ({"heartbeat_interval": -1}, r"ws\.config\.heartbeat_interval: must be a positive number"),
        ({"slow_client_policy": "ignore"}, r"ws\.config\.slow_client_policy: expected one of"),
    ],
)
def test_config_errors_name_the_key(config, message):
    with pytest.raises(fastws.ConfigError, match=message):
        WebSocketComponent("ws", config)


async def test_base_class_skips_failing_items_and_closes_outputs(caplog):
    caplog.set_level(logging.ERROR)

    class Doubler(ComposedComponent):
        async def process_item(self, item):
            if item == 2:
                raise ValueError("two is bad")
            return None if item == 3 else item * 2

    comp = Doubler("d")
    senders, receivers = wire(comp, outputs=("a", "b"))
    async with senders["input"]:
        for i in range(5):
            await senders["input"].send(i)
    await asyncio.wait_for(comp.process(), TIMEOUT)
    assert await drain(receivers["a"]) == [0, 2, 8]
    assert await drain(receivers["b"]) == [0, 2, 8]
    assert comp.error_count == 1 and "two is bad" in comp.last_error
    assert comp.get_status()["items_processed"] == 4 and comp.get_status().items_processed == 4


async def test_base_class_reads_only_the_first_input():
    comp = ComposedComponent("pass")
    senders, receivers = wire(comp, inputs=("first", "second"))
    senders["second"].send_nowait("ignored")
    async with senders["first"]:
        await senders["first"].send("x")
    await asyncio.wait_for(comp.process(), TIMEOUT)
    assert await drain(receivers["output"]) == ["x"]
    senders["second"].close()
    comp.receive_streams["second"].close()


async def test_base_class_names_a_wrong_output_stream_type():
    comp = ComposedComponent("c")
    send, comp.receive_streams["input"] = anyio.create_memory_object_stream(1)
    comp.send_streams["out"] = asyncio.Queue()
    with send, pytest.raises(TypeError, match=r"c: send_streams\['out'\] is of type asyncio\.queues\.Queue; expected an anyio"):
        await comp.process()
    comp.receive_streams["input"].close()
