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
    system = System.from_yaml(EXAMPLES / "live_updates.yaml", overrides={"websocket_broadcaster": LOCAL})
    await system.start()
    try:
        async with connect(f"ws://127.0.0.1:{system.port()}/") as ws:
            first = (await receive_json(ws, 1))[0]
            joined = [first, *await receive_json(ws, 9 - first["join_key"])]
            assert [j["join_key"] for j in joined] == list(range(first["join_key"], 10))
            for j in joined:
                assert list(j) == ["join_key", "left", "right", "joined_at"]
                assert j["left"]["kind"] == "user_event" and j["right"]["kind"] == "system_alert"
                assert j["left"]["id"] == j["right"]["id"] == j["join_key"]
            async with asyncio.timeout(TIMEOUT):
                await system.wait()  # finite sources: the system drains and finishes
            await system.stop()
            assert await close_code(ws) == 1001
    finally:
        await system.stop()
    assert system.failures == {}


async def test_processed_realtime() -> None:
    system = System.from_yaml(EXAMPLES / "processed_realtime.yaml", overrides={"realtime_output": LOCAL})
    await system.start()
    try:
        async with connect(f"ws://127.0.0.1:{system.port()}/") as ws:
            first = (await receive_json(ws, 1))[0]
            items = [first, *await receive_json(ws, (8 - first["value"]) // 2)]
            assert [i["value"] for i in items] == list(range(first["value"], 10, 2))
            assert all(i["processed_by"] == "data_transformer" for i in items)
            async with asyncio.timeout(TIMEOUT):
                await system.wait()
            assert system["data_filter"].dropped_count == 5  # type: ignore[attr-defined]
            assert system["realtime_output"].processed_count == 5
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
