"""The backplane: frames cut and counted, nodes in one process (memory://), and real
Redis and NATS brokers: three `fastws serve` processes, and a broker restart mid-stream.

Broker tests (``@pytest.mark.broker``) need Redis on 127.0.0.1:6379 and NATS on
127.0.0.1:4222 (`.ci/run` starts them); the restart test starts private brokers on free
ports from the redis-server and nats-server binaries. When one is missing these tests
fail in CI (``CI=true``) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid

import pytest
from websockets.asyncio.client import connect

import fastws
from fastws.backplane import create_backplane, split_frames
from tests.utils import TIMEOUT, running_server, spawn_serve, until_received, url, wait_for

BROKERS = {"redis": ("redis://127.0.0.1:6379/0", 6379), "nats": ("nats://127.0.0.1:4222", 4222)}
NATS_SERVER = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
REDIS_SERVER = shutil.which("redis-server")


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI=true: broker tests must run; .ci/run starts the brokers)", pytrace=False)
    pytest.skip(why)


def require_broker(name: str) -> str:
    broker_url, port = BROKERS[name]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError as exc:
        _unavailable(f"{name} is not reachable on 127.0.0.1:{port} ({exc}); start it or run .ci/run")
    return broker_url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def channel() -> str:
    return f"fastws-test-{uuid.uuid4().hex[:12]}"


async def recv_text(ws) -> str:
    async with asyncio.timeout(TIMEOUT):
        return await ws.recv()


# -- frames on the wire ------------------------------------------------------------------------


def test_split_frames_cuts_every_length_encoding():
    items = ["", "x" * 125, "y" * 126, "z" * 65535, "w" * 65536, {"a": 1}]
    frames = [fastws.encode_frame(i) for i in items]
    data = b"".join(frames)
    assert split_frames(data) == (frames, len(data))
    # an incomplete frame at the end is left for later
    got, end = split_frames(data[:-3])
    assert got == frames[:-1] and end == len(data) - len(frames[-1])
    with pytest.raises(ValueError):
        split_frames(b"\x88\x00")  # a CLOSE frame is not a broadcast


# -- nodes in one process ----------------------------------------------------------------------


async def test_memory_backplane_every_client_once_in_order_no_echo():
    ch = channel()
    async with running_server(backplane="memory://t", backplane_channel=ch) as a, \
            running_server(backplane="memory://t", backplane_channel=ch) as b:
        clients = {s: [await connect(url(s)) for _ in range(3)] for s in (a, b)}
        await wait_for(lambda: a.connection_count == 3 and b.connection_count == 3)
        n = 50
        for i in range(n):
            assert a.broadcast({"from": "a", "seq": i}) == 3  # this node's clients
            assert b.broadcast({"from": "b", "seq": i}) == 3
            if i % 7 == 0:
                await asyncio.sleep(0)
        for ws in clients[a] + clients[b]:
            got = [json.loads(await recv_text(ws)) for _ in range(2 * n)]
            for origin in "ab":
                assert [m["seq"] for m in got if m["from"] == origin] == list(range(n))
        await asyncio.sleep(0.05)
        for ws in clients[a] + clients[b]:  # nothing more: no double delivery
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await ws.recv()
        sa = a.stats()
        assert sa["backplane"]["published"] == n and sa["backplane"]["received"] == n
        assert sa["backplane"]["own_skipped"] >= 1 and sa["backplane"]["publish_failed"] == 0
        assert sa["messages"] == 2 * n and sa["deliveries"] == 2 * n * 3
        for ws in clients[a] + clients[b]:
            await ws.close()


async def test_component_reports_local_clients_and_reaches_the_other_node():
    ch = channel()
    comp = fastws.WebSocketComponent("ws", {"host": "127.0.0.1", "port": 0, "backplane": "memory://c",
                                            "backplane_channel": ch})
    await comp.start_server()
    try:
        async with running_server(backplane="memory://c", backplane_channel=ch) as other:
            mine, theirs = await connect(url(comp.server)), await connect(url(other))
            await wait_for(lambda: comp.connection_count == 1 and other.connection_count == 1)
            reports = comp._broadcast([{"k": 1}, {"k": 2}])
            assert [r["broadcast_to"] for r in reports] == [1, 1]
            for ws in (mine, theirs):
                assert [json.loads(await recv_text(ws))["k"] for _ in range(2)] == [1, 2]
            await mine.close()
            await theirs.close()
    finally:
        await comp.stop_server()


async def test_cluster_stats_add_up_the_nodes():
    ch = channel()
    async with running_server(backplane="memory://s", backplane_channel=ch) as a, \
            running_server(backplane="memory://s", backplane_channel=ch) as b:
        for s in (a, b):
            s.backplane.stats_interval = 0.05
            s.backplane._stats_task.cancel()
            s.backplane._stats_task = asyncio.create_task(s.backplane._share_stats())
        ws = [await connect(url(a)), await connect(url(b)), await connect(url(b))]
        await wait_for(lambda: a.stats()["cluster"]["nodes"] == 2 and a.stats()["cluster"]["connections"] == 3)
        c = a.stats()["cluster"]
        assert set(c["per_node"]) == {a.backplane.node_id.decode(), b.backplane.node_id.decode()}
        for w in ws:
            await w.close()


async def test_unsupported_backplane_url_is_a_config_error():
    with pytest.raises(fastws.ConfigError, match="backplane"):
        fastws.ServerConfig.from_dict({"backplane": "http://127.0.0.1:1"})
    with pytest.raises(fastws.ConfigError, match="backplane"):
        create_backplane("amqp://x")


# -- real brokers: three `fastws serve` processes -----------------------------------------------


class Node:
    """A `fastws serve --backplane ...` process; standard input is what it broadcasts."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port

    @classmethod
    async def start(cls, broker_url: str, ch: str) -> Node:
        return cls(*await spawn_serve("--backplane", broker_url, "--backplane-channel", ch))

    async def send(self, *lines: str) -> None:
        self.proc.stdin.write("".join(f"{line}\n" for line in lines).encode())
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        self.proc.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            await self.proc.wait()
            await self.proc.stderr.read()


async def registered(node: Node, ws, tag: str) -> None:
    """Write `tag` lines until the client gets one: then the node has registered it."""
    await until_received(node.send, ws, tag)


@pytest.mark.broker
@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_three_nodes_every_client_every_message_once_in_order(broker):
    broker_url = require_broker(broker)
    ch = channel()
    nodes = await asyncio.gather(*(Node.start(broker_url, ch) for _ in range(3)))
    clients: list = []
    try:
        per_node = 2
        for i, node in enumerate(nodes):
            for j in range(per_node):
                ws = await connect(f"ws://127.0.0.1:{node.port}/")
                clients.append(ws)
                await registered(node, ws, f"ready-{i}-{j}")
        m = 200
        # the three nodes publish at the same time, in chunks
        for start in range(0, m, 50):
            await asyncio.gather(*(node.send(*(f"n{i}-{k}" for k in range(start, start + 50)))
                                   for i, node in enumerate(nodes)))
        for ws in clients:
            got: list[str] = []
            async with asyncio.timeout(TIMEOUT * 2):
                while len(got) < 3 * m:
                    msg = await ws.recv()
                    if not msg.startswith("ready-"):
                        got.append(msg)
            assert len(set(got)) == len(got) == 3 * m  # every message, once
            for i in range(3):  # in publish order per publisher
                assert [int(x.split("-")[1]) for x in got if x.startswith(f"n{i}-")] == list(range(m))
        # and nothing more arrives (no double delivery on the publishing node)
        await asyncio.sleep(0.2)
        for ws in clients:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.02):
                    while (await ws.recv()).startswith("ready-"):
                        pass
    finally:
        for ws in clients:
            await ws.close()
        await asyncio.gather(*(n.stop() for n in nodes))


# -- real brokers: a restart mid-stream -----------------------------------------------------------


@contextlib.asynccontextmanager
async def private_broker(kind: str):
    """A redis-server or nats-server of our own on a free port, stopped and started at will."""
    binary = REDIS_SERVER if kind == "redis" else NATS_SERVER
    if binary is None:
        _unavailable(f"{kind}-server is not installed; cannot run a private broker for the restart test")
    port = free_port()
    if kind == "redis":
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        broker_url = f"redis://127.0.0.1:{port}/0"
    else:
        args = [binary, "-a", "127.0.0.1", "-p", str(port)]
        broker_url = f"nats://127.0.0.1:{port}"
    procs: list[asyncio.subprocess.Process] = []

    async def start():
        procs.append(await asyncio.create_subprocess_exec(
            *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    _, w = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.02)
                    continue
                w.close()
                await w.wait_closed()
                return

    async def stop():
        p = procs[-1]
        if p.returncode is None:
            p.kill()
        async with asyncio.timeout(TIMEOUT):
            await p.wait()

    await start()
    try:
        yield broker_url, start, stop
    finally:
        await stop()


@pytest.mark.broker
@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_broker_restart_mid_stream(broker, caplog):
    caplog.set_level(logging.INFO, "fastws.backplane")
    ch = channel()
    async with private_broker(broker) as (broker_url, start_broker, stop_broker):
        async with running_server(backplane=broker_url, backplane_channel=ch) as a, \
                running_server(backplane=broker_url, backplane_channel=ch) as b:
            wa, wb = await connect(url(a)), await connect(url(b))
            await wait_for(lambda: a.connection_count == 1 and b.connection_count == 1)
            seq = 0

            async def burst(n):
                nonlocal seq
                for _ in range(n):
                    a.broadcast({"seq": seq})
                    seq += 1
                    await asyncio.sleep(0.002)

            await burst(20)
            got_b: list[int] = []
            async with asyncio.timeout(TIMEOUT):  # these crossed the broker before it goes
                while len(got_b) < 20:
                    got_b.append(json.loads(await wb.recv())["seq"])
            await stop_broker()
            await wait_for(lambda: not a.backplane.connected and not b.backplane.connected)
            await burst(20)  # the broker is gone: local clients still get these
            assert a.stats()["backplane"]["publish_failed"] >= 20
            await start_broker()
            await wait_for(lambda: a.backplane.connected and b.backplane.connected, TIMEOUT * 2)
            first_after = seq
            await burst(20)
            # node a's own client: everything, in order
            got_a = [json.loads(await recv_text(wa))["seq"] for _ in range(seq)]
            assert got_a == list(range(seq))
            # node b: what crossed the broker, in order, no duplicates, all of it after the restart
            async with asyncio.timeout(TIMEOUT):
                while got_b[-1] != seq - 1:
                    got_b.append(json.loads(await wb.recv())["seq"])
            assert got_b == sorted(set(got_b))
            assert set(range(20)) <= set(got_b) and set(range(first_after, seq)) <= set(got_b)
            sa = a.stats()["backplane"]
            assert sa["outages"] == 1 and sa["reconnects"] == 1
            lost = [r for r in caplog.records if "connection lost" in r.getMessage()]
            assert len(lost) == 2  # one warning per node per outage, not one per attempt
            await wa.close()
            await wb.close()


CTRL_C_SCRIPT = """
import asyncio, sys
import fastws

async def main():
    async with fastws.Server(host="127.0.0.1", port=int(sys.argv[1]), backplane=sys.argv[2],
                             backplane_channel=sys.argv[3]) as server:
        while True:
            server.broadcast("hi")
            await asyncio.sleep(0.05)

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
"""


@pytest.mark.broker
@pytest.mark.parametrize("broker", ["redis", "nats"])
async def test_ctrl_c_closes_clients_at_once_whatever_the_broker_client_does(broker, tmp_path):
    """Ctrl-C on ``asyncio.run(main())`` closes the clients with 1001 before the broker connection.

    redis-py's pubsub sometimes took seconds, or forever, to close once cancelled, and the
    clients waited behind it (about one Ctrl-C in five): repeated.
    """
    broker_url = require_broker(broker)
    script = tmp_path / "serve.py"
    script.write_text(CTRL_C_SCRIPT)
    for _ in range(6):
        port = free_port()
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), str(port), broker_url, channel(),
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(TIMEOUT):
                while True:
                    try:
                        ws = await connect(f"ws://127.0.0.1:{port}/")
                        break
                    except OSError:
                        await asyncio.sleep(0.05)
                assert await ws.recv() == "hi"
            proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(1.0):
                with contextlib.suppress(Exception):
                    while True:
                        await ws.recv()
                await ws.wait_closed()
            assert ws.close_code == 1001
            async with asyncio.timeout(TIMEOUT):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
