"""WebSocketComponent under the original system harness, unchanged (issue 10).

Each test replays what autocoder_cc's harness does (shared/spec/component-contract.md,
"The original system harness"): construct with the blueprint's config dict,
``setup(ctx)``, ``start()``, poll ``is_ready()``, run ``process()`` as a task, set
``_status.is_running``, read ``_status``/``get_status()``, stop with ``cleanup()``,
with real ``websockets`` clients on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import fastws
from fastws import WebSocketComponent
from fastws.config import ConfigRequirement
from tests.utils import TIMEOUT, wait_for

ROOT = Path(__file__).resolve().parent.parent

#: Config keys seen in upstream and its tests, with values of the kinds they carry there.
UPSTREAM_CONFIG: dict[str, Any] = {
    "type": "WebSocket",
    "retry_enabled": True,
    "retry": {"max_attempts": 3, "backoff": 1.5},
    "circuit_breaker_enabled": False,
    "circuit_breaker": {"failure_threshold": 5},
    "rate_limiter_enabled": False,
    "rate_limiter": {"rate": 100},
    "schema_validation_enabled": True,
    "schema_validation": {"strict": False},
    "metrics_enabled": True,
    "messaging": {"protocol": "websocket"},
    "websocket_url": "ws://localhost:8080/stream",
    "reconnect_interval": 5,
    "message_format": "json",
    "require_auth": False,
    "jwt_secret": None,
}


def harness_config(**extra: Any) -> dict[str, Any]:
    return {**UPSTREAM_CONFIG, "host": "127.0.0.1", "port": 0, "max_connections": 100,
            "heartbeat_interval": 30, **extra}


class Harness:
    """The original harness's calls on one component, in its order."""

    def __init__(self, component: WebSocketComponent) -> None:
        self.component = component
        self.input: MemoryObjectSendStream[Any]
        self.output: MemoryObjectReceiveStream[Any]
        self.input, component.receive_streams["input"] = anyio.create_memory_object_stream[Any](1000)
        component.send_streams["output"], self.output = anyio.create_memory_object_stream[Any](1000)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        c = self.component
        await c.setup({"system": "test"})
        await c.start()
        async with asyncio.timeout(TIMEOUT):
            while not await c.is_ready():
                await asyncio.sleep(0.01)
        self.task = asyncio.create_task(c.process())
        c._status.is_running = True  # what the harness's run() writes

    async def reports(self, n: int) -> list[dict[str, Any]]:
        out = []
        async with asyncio.timeout(TIMEOUT):
            for _ in range(n):
                out.append(await self.output.receive())
        return out

    async def stop(self) -> None:
        await self.component.cleanup()  # the harness's stop calls only this
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.input.close()
        self.output.close()


@asynccontextmanager
async def harnessed(**extra: Any) -> AsyncIterator[Harness]:
    h = Harness(WebSocketComponent(name="ws", config=harness_config(**extra)))
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


async def clients(comp: WebSocketComponent, n: int) -> list[ClientConnection]:
    out = [await connect(f"ws://127.0.0.1:{comp.port}/") for _ in range(n)]
    await wait_for(lambda: comp.connection_count == n)
    return out


async def recv_json(ws: ClientConnection) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


def port_is_free(port: int) -> bool:
    """A new server could listen on it (SO_REUSEADDR, as asyncio servers set it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
        return True


# -- 1. configs ----------------------------------------------------------------------------------


def test_every_upstream_key_loads_without_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastws.component"):
        comp = WebSocketComponent("ws", harness_config())
    assert comp.ignored_keys == ()
    assert caplog.records == []
    assert WebSocketComponent.validate_config(harness_config()) == []


def test_unknown_key_is_ignored_with_one_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastws.component"):
        comp = WebSocketComponent("ws", harness_config(generated_flag=1, another={"x": 1}))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("ws.config.generated_flag: unknown key, ignored")
    assert messages[1].startswith("ws.config.another: unknown key, ignored")
    assert comp.get_health_status()["ignored_keys"] == ["generated_flag", "another"]


async def test_health_check_lists_ignored_keys() -> None:
    comp = WebSocketComponent("ws", {"port": 0, "typo_key": True})
    assert (await comp.health_check())["ignored_keys"] == ["typo_key"]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"port": "8080"}, "ws.config.port: expected an integer, got '8080'"),
        ({"max_connections": 0}, "ws.config.max_connections: must be a positive integer, got 0"),
        ({"heartbeat_interval": "often"}, "ws.config.heartbeat_interval: expected a number, got 'often'"),
    ],
)
def test_known_keys_keep_strict_types(config: dict[str, Any], message: str) -> None:
    with pytest.raises(fastws.ConfigError) as info:
        WebSocketComponent("ws", {**UPSTREAM_CONFIG, **config})
    assert str(info.value) == message


def test_server_itself_stays_strict() -> None:
    with pytest.raises(fastws.ConfigError, match=r"^config\.generated_flag: unknown key; known keys are: host, port"):
        fastws.Server({"generated_flag": 1})


# -- 2. the original's surface --------------------------------------------------------------------


def test_attributes_and_requirements_like_the_original() -> None:
    comp = WebSocketComponent("ws", {"host": "127.0.0.1", "port": 9123, "max_connections": 7, "heartbeat_interval": 15})
    assert (comp.host, comp.port, comp.max_connections, comp.heartbeat_interval) == ("127.0.0.1", 9123, 7, 15)
    reqs = WebSocketComponent.get_config_requirements()
    assert all(isinstance(r, ConfigRequirement) for r in reqs)
    by_name = {r.name: r for r in reqs}
    port = by_name["port"]
    assert (port.type, port.required, port.default, port.example) == ("int", False, 8080, 8080)
    assert port.description
    assert by_name["heartbeat_interval"].default == 30
    assert WebSocketComponent.get_required_config_fields() == []
    assert "picows" in WebSocketComponent.get_required_dependencies()


async def test_status_is_an_object_the_harness_sets_and_reads() -> None:
    async with harnessed() as h:
        comp = h.component
        status = comp.get_status()
        assert status is comp._status and status.is_running and status.is_healthy
        ws, = await clients(comp, 1)
        await h.input.send({"n": 1})
        assert (await h.reports(1))[0]["broadcast_to"] == 1
        assert await recv_json(ws) == {"n": 1}
        assert (status.items_processed, status.errors_encountered, status.last_error) == (1, 0, None)
        assert status["items_processed"] == 1 and dict(status)["is_running"] is True
        health = comp.get_health_status()
        assert health["status"] == "healthy" and health["connections"] == 1 and health["name"] == "ws"
        await ws.close()
    assert comp._status.is_running is False
    assert comp.get_health_status()["status"] == "stopped"


async def test_connected_clients_is_a_read_only_live_view() -> None:
    async with harnessed() as h:
        comp = h.component
        view = comp.connected_clients
        assert len(view) == 0
        a, b = await clients(comp, 2)
        assert len(view) == 2 and all(c in view for c in view)
        assert {c.remote[0] for c in view} == {"127.0.0.1"}
        assert not hasattr(view, "add") and not hasattr(view, "discard")
        await a.close()
        await wait_for(lambda: len(view) == 1)
        await b.close()


# -- 3. the lifecycle ------------------------------------------------------------------------------


async def test_cleanup_stops_the_server_closes_clients_1001_frees_the_port_twice_safe() -> None:
    h = Harness(WebSocketComponent(name="ws", config=harness_config()))
    await h.start()
    port = h.component.port
    assert port != 0 and not port_is_free(port)
    ws1, ws2 = await clients(h.component, 2)
    await h.component.cleanup()
    async with asyncio.timeout(TIMEOUT):
        await ws1.wait_closed()
        await ws2.wait_closed()
    assert ws1.close_code == ws2.close_code == 1001
    assert port_is_free(port)
    await h.component.cleanup()  # twice is safe
    assert h.component.connection_count == 0
    await h.stop()


async def test_process_ends_with_its_input_and_closes_the_outputs() -> None:
    async with harnessed() as h:
        await h.input.send("a")
        h.input.close()
        assert h.task is not None
        async with asyncio.timeout(TIMEOUT):
            await h.task
        assert [r["message"] async for r in h.output] == ["a"]


# -- 5. one report per item, in order, whatever happens ----------------------------------------------


class Unserializable:
    pass


async def test_every_item_gets_one_report_in_order_bad_ones_included() -> None:
    bad1, bad2 = Unserializable(), "lone \ud800 surrogate"
    items: list[Any] = [{"n": 0}, bad1, {"n": 2}, bad2, "plain text", {"n": 5}]
    async with harnessed() as h:
        ws, = await clients(h.component, 1)
        for item in items:
            h.input.send_nowait(item)  # one batch
        reports = await h.reports(len(items))
        assert [r["message"] for r in reports] == items
        for i in (1, 3):
            assert set(reports[i]) == {"error", "broadcast_to", "disconnected", "message"}
            assert (reports[i]["broadcast_to"], reports[i]["disconnected"]) == (0, 0)
            assert reports[i]["error"]
        for i in (0, 2, 4, 5):
            assert list(reports[i]) == ["broadcast_to", "disconnected", "message"]
            assert reports[i]["broadcast_to"] == 1
        async with asyncio.timeout(TIMEOUT):
            got = [await ws.recv() for _ in range(4)]
        assert got == ['{"n":0}', '{"n":2}', "plain text", '{"n":5}']
        assert h.component.error_count == 2 and h.component.broadcast_errors == 2
        await ws.close()


async def test_process_item_reports_a_bad_item_and_goes_on() -> None:
    comp = WebSocketComponent("ws", {"host": "127.0.0.1", "port": 0})
    await comp.start()
    try:
        ws, = await clients(comp, 1)
        report = await comp.process_item("a\ud800b")
        assert report["broadcast_to"] == 0 and report["disconnected"] == 0 and "error" in report
        assert (await comp.process_item({"ok": 1}))["broadcast_to"] == 1
        assert await recv_json(ws) == {"ok": 1}
        await ws.close()
    finally:
        await comp.cleanup()


async def test_process_item_before_start_reports_like_a_running_server() -> None:
    comp = WebSocketComponent("ws", harness_config())
    assert await comp.process_item({True: Name("x")}) == {
        "broadcast_to": 0, "disconnected": 0, "message": {True: Name("x")}
    }
    assert "error" in await comp.process_item([Unserializable()])
    assert "error" in await comp.process_item("a\ud800")


# -- 6. process_item coalesces; the counts ---------------------------------------------------------------


async def test_process_item_calls_in_one_turn_go_out_in_one_write() -> None:
    comp = WebSocketComponent("ws", {"host": "127.0.0.1", "port": 0})
    await comp.start()
    try:
        ws, = await clients(comp, 1)
        hub = comp.server.hub
        assert hub is not None
        before = hub.stats()["flushes"]
        reports = [await comp.process_item({"i": i}) for i in range(16)]  # no yield in between
        assert [r["broadcast_to"] for r in reports] == [1] * 16  # reported before any write
        assert hub.stats()["flushes"] == before  # nothing written yet: the Hub flushes once, soon
        got = [await recv_json(ws) for _ in range(16)]
        assert got == [{"i": i} for i in range(16)]
        assert hub.stats()["flushes"] == before + 1
        await ws.close()
    finally:
        await comp.cleanup()


async def test_disconnected_counts_clients_gone_since_the_previous_report() -> None:
    async with harnessed() as h:
        comp = h.component
        a, b, c = await clients(comp, 3)
        await h.input.send(1)
        assert (await h.reports(1))[0] == {"broadcast_to": 3, "disconnected": 0, "message": 1}
        await a.close()
        await b.close()
        await wait_for(lambda: comp.connection_count == 1)
        await h.input.send(2)
        await h.input.send(3)
        r2, r3 = await h.reports(2)
        assert (r2["broadcast_to"], r2["disconnected"]) == (1, 2)
        assert (r3["broadcast_to"], r3["disconnected"]) == (1, 0)
        await c.close()


# -- 7. wrong stream types ------------------------------------------------------------------------------


async def test_a_queue_instead_of_an_anyio_stream_is_a_clear_error() -> None:
    comp = WebSocketComponent("ws", {"port": 0})
    comp.receive_streams["input"] = asyncio.Queue()  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"ws: receive_streams\['input'\] is of type asyncio\.queues\.Queue; "
                                        r"expected an anyio MemoryObjectReceiveStream"):
        await comp.process()
    comp2 = WebSocketComponent("ws2", {"port": 0})
    send, comp2.receive_streams["input"] = anyio.create_memory_object_stream[Any](1)
    comp2.send_streams["reports"] = []  # type: ignore[assignment]
    with send, pytest.raises(TypeError, match=r"ws2: send_streams\['reports'\] is of type builtins\.list; "
                                              r"expected an anyio MemoryObjectSendStream"):
        await comp2.process()
    comp2.receive_streams["input"].close()


# -- 4. JSON parity with json.dumps, through a real client ------------------------------------------------


class Color(str, enum.Enum):  # noqa: UP042 - the mixin, not StrEnum: str() differs
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Ratio(float):
    pass


class Name(str):
    pass


class Count(int):
    pass


PARITY_ITEMS: list[Any] = [
    {"plain": [1, 2.5, True, None, "x"]},
    {True: "t", False: "f", None: "n", 7: "seven", 2.5: "two and a half"},
    {"color": Color.RED, "level": Level.HIGH, Color.RED: 1, Level.HIGH: 2},
    [Name("n"), Count(7), Ratio(0.5), {"k": Name("v")}],
    {"text": "a\ud800b", "other": ["\udfff"]},
    [1e308, -0.0, 2**70],
    {"nested": {"deep": [{"x": Count(1)}, (1, 2)]}},
]


async def test_json_parity_table_through_a_real_client() -> None:
    """What a client receives equals json.loads(json.dumps(item)) (NaN/Infinity aside: see below).

    Needs the core's fallback hook wired to fastws.encoding.fallback_encode (issue 10).
    """
    async with harnessed() as h:
        ws, = await clients(h.component, 1)
        for item in PARITY_ITEMS:
            h.input.send_nowait(item)
        reports = await h.reports(len(PARITY_ITEMS))
        assert [r.get("error") for r in reports] == [None] * len(PARITY_ITEMS)
        for item in PARITY_ITEMS:
            assert await recv_json(ws) == json.loads(json.dumps(item))
        await ws.close()


async def test_str_items_go_out_verbatim_and_nonfinite_numbers_as_null() -> None:
    async with harnessed() as h:
        ws, = await clients(h.component, 1)
        for item in ["not json {", Name("sub"), Color.RED, [math.nan, math.inf, -math.inf, 1.0]]:
            h.input.send_nowait(item)
        await h.reports(4)
        async with asyncio.timeout(TIMEOUT):
            assert await ws.recv() == "not json {"
            assert await ws.recv() == "sub"
            assert await ws.recv() == "red"  # str enum: isinstance(item, str), its value verbatim
            assert json.loads(await ws.recv()) == [None, None, None, 1.0]
        await ws.close()


# -- 7. the quickstart in docs/dropin.md runs -------------------------------------------------------------


def test_the_quickstart_in_the_docs_runs() -> None:
    text = (ROOT / "docs" / "dropin.md").read_text()
    match = re.search(r"<!-- quickstart -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/dropin.md has no ```python block after <!-- quickstart -->"
    here = str(Path(fastws.__file__).resolve().parent.parent)  # the fastws this test imports (tree or wheel)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", match.group(1)], capture_output=True, text=True, timeout=6 * TIMEOUT, env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:3] == [
        "report: {'broadcast_to': 1, 'disconnected': 0, 'message': {'price': 1.5}}",
        "report: {'broadcast_to': 1, 'disconnected': 0, 'message': {'price': 1.6}}",
        "report: {'broadcast_to': 1, 'disconnected': 0, 'message': 'market closed'}",
    ]
    assert lines[3:] == ['client got: {"price":1.5}', 'client got: {"price":1.6}', "client got: market closed"]


async def test_without_an_input_it_serves_until_cleanup() -> None:
    """No input stream bound: process() keeps the server up until cleanup(), then ends."""
    comp = WebSocketComponent("lone", {"host": "127.0.0.1", "port": 0})
    await comp.setup(None)
    await comp.start()
    task = asyncio.create_task(comp.process())
    async with connect(f"ws://127.0.0.1:{comp.port}/") as ws:
        await asyncio.sleep(0)  # let process() reach its wait
        assert not task.done()
        report = await comp.process_item({"hello": 1})  # other code may still broadcast
        assert report["broadcast_to"] == 1
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == {"hello": 1}
        await comp.cleanup()
        await asyncio.wait_for(task, TIMEOUT)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1001
