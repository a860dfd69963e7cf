"""The blueprints in examples/, end to end with real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fastws.blueprint import System
from tests.utils import TIMEOUT

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOCAL = {"host": "127.0.0.1", "port": 0}

pytest.importorskip("fastws.websocket")


async def receive_json(ws: ClientConnection, count: int) -> list[Any]:
    async with asyncio.timeout(TIMEOUT):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def close_code(ws: ClientConnection) -> int | None:
    """Read until the server closes the connection; return its close code."""
    async with asyncio.timeout(TIMEOUT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


def test_examples_validate() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["live_updates.yaml", "processed_realtime.yaml", "realtime_dashboard.yaml"]
    ports = {}
    for name in names:
        system = System.from_yaml(EXAMPLES / name)
        [ws] = [c for c in system.blueprint.system.components if c.type == "WebSocket"]
        ports[name] = ws.config["port"]
    assert ports == {
        "live_updates.yaml": 3000,
        "processed_realtime.yaml": 8888,
        "realtime_dashboard.yaml": 8080,
    }


async def test_realtime_dashboard() -> None:
    system = System.from_yaml(EXAMPLES / "realtime_dashboard.yaml", overrides={"websocket_server": LOCAL})
    assert system.blueprint.system.components[0].config["data_count"] is None
    await system.start()
    try:
        async with connect(f"ws://127.0.0.1:{system.port()}/") as ws:
            metrics = await receive_json(ws, 3)
            assert all(set(m) == {"id", "name", "value", "unit", "timestamp"} for m in metrics)
            ids = [m["id"] for m in metrics]
            assert ids == list(range(ids[0], ids[0] + 3))
            sink = system["broadcast_log"]
            async with asyncio.timeout(TIMEOUT):
                await sink.wait_for(ids[-1] + 1)  # type: ignore[attr-defined]
            reports = {r["message"]["id"]: r for r in sink.items}  # type: ignore[attr-defined]
            for m in metrics:
                assert list(reports[m["id"]]) == ["broadcast_to", "disconnected", "message"]
                assert reports[m["id"]]["broadcast_to"] == 1
                assert reports[m["id"]]["message"] == m
            assert system.running  # endless: it runs until stopped
            await system.stop()
            assert await close_code(ws) == 1001
    finally:
        await system.stop()


async def test_live_updates() -> None:
    """Endless: a joined pair every second until stopped (here: faster, to keep the test short)."""
    system = System.from_yaml(EXAMPLES / "live_updates.yaml", overrides={
        "websocket_broadcaster": LOCAL, "user_events": {"data_delay": 0.02}, "system_alerts": {"data_delay": 0.02}})
    sources = [c.config for c in System.from_yaml(EXAMPLES / "live_updates.yaml").blueprint.system.components[:2]]
    assert [(c["data_count"], c["data_delay"]) for c in sources] == [(None, 1), (None, 1)]
    await system.start()
    try:
        async with connect(f"ws://127.0.0.1:{system.port()}/") as ws:
            joined = await receive_json(ws, 12)  # more than the spec's 10: it does not end
            first = joined[0]["join_key"]
            assert [j["join_key"] for j in joined] == list(range(first, first + 12))
            for j in joined:
                assert list(j) == ["join_key", "left", "right", "joined_at"]
                assert j["left"]["kind"] == "user_event" and j["right"]["kind"] == "system_alert"
                assert j["left"]["id"] == j["right"]["id"] == j["join_key"]
            assert system.running
            await system.stop()
            assert await close_code(ws) == 1001
    finally:
        await system.stop()
    assert system.failures == {}


async def test_processed_realtime() -> None:
    system = System.from_yaml(EXAMPLES / "processed_realtime.yaml", overrides={
        "realtime_output": LOCAL, "raw_data": {"data_delay": 0.01}})
    await system.start()
    try:
        async with connect(f"ws://127.0.0.1:{system.port()}/") as ws:
            items = await receive_json(ws, 12)
            assert {i["name"] for i in items} == {"cpu_percent", "latency_ms"}
            assert all(i["processed_by"] == "data_transformer" for i in items)
            ids = [i["id"] for i in items]
            assert all(b - a in (1, 3) for a, b in zip(ids, ids[1:], strict=False))  # every other metric
            assert system.running
            await system.stop()
            assert await close_code(ws) == 1001
    finally:
        await system.stop()
    assert system["data_filter"].dropped_count >= 12  # type: ignore[attr-defined]


async def test_processed_realtime_finite_with_set() -> None:
    """``--set raw_data.data_count=20`` (as the example's header says) makes it end by itself."""
    system = System.from_yaml(EXAMPLES / "processed_realtime.yaml", overrides={
        "realtime_output": LOCAL, "raw_data": {"data_count": 20, "data_delay": 0}})
    await system.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await system.wait()
        assert system["data_filter"].dropped_count == 10  # type: ignore[attr-defined]
        assert system["realtime_output"].processed_count == 10
    finally:
        await system.stop()


# The spec's three blueprints, verbatim (shared/spec/websocket-component.md, "Blueprint
# Examples"), verbatim but for trailing spaces: finite (each Source emits its default 10 items), they run and end by themselves.
SPEC_BLUEPRINTS = {
    "realtime_dashboard": """\
system:
  name: "realtime_dashboard"
  components:
    - name: "metrics_source"
      type: "Source"
    - name: "websocket_server"
      type: "WebSocket"
      config:
        port: 8080
        host: "0.0.0.0"
        max_connections: 200
        heartbeat_interval: 15
    - name: "broadcast_log"
      type: "Sink"

  bindings:
    - from_component: "metrics_source"
      to_component: "websocket_server"
      stream_name: "input"
    - from_component: "websocket_server"
      to_component: "broadcast_log"
      stream_name: "output"
""",
    "live_updates": """\
system:
  name: "live_updates"
  components:
    - name: "user_events"
      type: "Source"
    - name: "system_alerts"
      type: "Source"
    - name: "event_merger"
      type: "StreamProcessor"
      config:
        variant: "joining"
    - name: "websocket_broadcaster"
      type: "WebSocket"
      config:
        port: 3000
        max_connections: 500

  bindings:
    - from_component: "user_events"
      to_component: "event_merger"
      stream_name: "left"
    - from_component: "system_alerts"
      to_component: "event_merger"
      stream_name: "right"
    - from_component: "event_merger"
      to_component: "websocket_broadcaster"
      stream_name: "input"
""",
    "processed_realtime": """\
system:
  name: "processed_realtime"
  components:
    - name: "raw_data"
      type: "Source"
    - name: "data_filter"
      type: "Filter"
    - name: "data_transformer"
      type: "Transformer"
    - name: "realtime_output"
      type: "WebSocket"
      config:
        port: 8888
        heartbeat_interval: 10

  bindings:
    - from_component: "raw_data"
      to_component: "data_filter"
      stream_name: "input"
    - from_component: "data_filter"
      to_component: "data_transformer"
      stream_name: "input"
    - from_component: "data_transformer"
      to_component: "realtime_output"
      stream_name: "input"
""",
}


@pytest.mark.parametrize("name", sorted(SPEC_BLUEPRINTS))
async def test_spec_blueprint_runs_to_its_end(name: str) -> None:
    text = SPEC_BLUEPRINTS[name]
    [server] = [c.name for c in System.from_string(text).blueprint.system.components if c.type == "WebSocket"]
    system = System.from_string(text, overrides={server: LOCAL})
    await system.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            await system.wait()  # 10 items, one every 0.1 s, then the end
        assert system["broadcast_log" if name == "realtime_dashboard" else server].processed_count == 10
        assert not system.running and system.failures == {}
    finally:
        await system.stop()


async def test_websocket_without_input_serves_until_stopped() -> None:
    system = System.from_string(
        "system:\n  name: lone\n  components:\n    - {name: ws, type: WebSocket, config: {host: 127.0.0.1, port: 0}}\n")
    await system.start()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):  # today it ends after a few ms
                await system.wait()
        assert system.running
        async with connect(f"ws://127.0.0.1:{system.port()}/") as ws:
            await system.stop()
            assert await close_code(ws) == 1001
    finally:
        await system.stop()


async def test_cli_run_subprocess_sigint() -> None:
    """`python -m fastws run` serves the dashboard, and SIGINT stops it with 1001 and status 0."""
    pytest.importorskip("fastws.cli")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "run", str(EXAMPLES / "realtime_dashboard.yaml"),
        "--set", "websocket_server.port=0", "--set", "websocket_server.host=127.0.0.1",
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT):
            port = None
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "the server exited before listening"
                if m := re.search(r"serving on ws://[\d.]+:(\d+)/", line):
                    port = int(m.group(1))
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert len(await receive_json(ws, 2)) == 2
            proc.send_signal(signal.SIGINT)
            assert await close_code(ws) == 1001
        async with asyncio.timeout(TIMEOUT):
            rest = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0
        assert "Traceback" not in rest
        assert "SIGINT received, stopping" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_validate_subprocess_error(tmp_path: Path) -> None:
    pytest.importorskip("fastws.cli")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "system:\n  name: x\n  components:\n    - {name: ws, type: WebSocket, config: {port: 99999}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "validate", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(TIMEOUT):
        out, err = await proc.communicate()
    assert proc.returncode == 1
    assert out == b""
    assert err.decode() == (
        f"error: {bad}: components[0].config.port: must be 1-65535 (0 picks a free port), got 99999\n"
    )
