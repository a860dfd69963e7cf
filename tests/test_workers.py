"""Worker processes sharing one port: every client of every worker gets every broadcast,
max_connections holds for the whole server, a killed worker is replaced, and
`fastws serve --workers 2` stops cleanly on SIGTERM. No broker needed."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fastws
from fastws.workers import resolve_workers
from tests.utils import TIMEOUT, spawn_serve, until_received, wait_for


async def recv_json(ws):
    async with asyncio.timeout(TIMEOUT):
        return json.loads(await ws.recv())


def test_workers_setting():
    assert fastws.ServerConfig(workers="auto").workers == "auto"
    assert resolve_workers("auto") == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    with pytest.raises(fastws.ConfigError, match="workers"):
        fastws.ServerConfig.from_dict({"workers": 0})


async def test_clients_over_workers_all_receive_everything_and_a_killed_worker_is_replaced():
    server = fastws.Server(host="127.0.0.1", port=0, workers=2, max_connections=1000)
    await server.start()
    clients = []
    try:
        assert server.port != 0 and len(server.workers.pids) == 2
        n = 16  # SO_REUSEPORT hashes connections over both workers
        clients = [await connect(f"ws://127.0.0.1:{server.port}/") for _ in range(n)]
        await wait_for(lambda: server.connection_count == n)
        per_worker = [w["connections"] for w in server.stats()["per_worker"]]
        assert sum(per_worker) == n and all(per_worker), per_worker
        m = 100
        for i in range(m):
            assert server.broadcast({"seq": i}) == n  # the clients of all workers
            if i % 10 == 0:
                await asyncio.sleep(0)
        for ws in clients:
            assert [(await recv_json(ws))["seq"] for _ in range(m)] == list(range(m))
        # the workers' counters add up in the parent (reported every 0.5 s)
        await wait_for(lambda: server.stats().get("deliveries") == n * m)
        assert server.stats()["messages"] == m

        # kill one worker: its clients are disconnected, a new worker takes its place
        victim = server.workers.pids[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: server.workers.restarts == 1 and server.workers.pids[0] not in (None, victim)
                       and server.workers._workers[0].ready.done(), TIMEOUT * 2)
        alive = []
        for ws in clients:
            try:
                async with asyncio.timeout(0.5):
                    await ws.recv()
            except ConnectionClosed:
                continue
            except TimeoutError:
                alive.append(ws)
        assert len(alive) == per_worker[1]
        await wait_for(lambda: server.connection_count == len(alive))
        # the clients of the dead worker reconnect; everybody gets what comes next
        for ws in clients:
            if ws not in alive:
                await ws.close()
        clients = alive + [await connect(f"ws://127.0.0.1:{server.port}/") for _ in range(n - len(alive))]
        await wait_for(lambda: server.connection_count == n)
        server.broadcast({"after": True})
        for ws in clients:
            assert await recv_json(ws) == {"after": True}
    finally:
        for ws in clients:
            await ws.close()
        await server.stop()
    assert not server.is_serving


async def test_the_parent_forgets_idle_topics_and_numbers_them_again_under_a_new_epoch():
    server = fastws.Server(host="127.0.0.1", port=0, workers=2, topic_idle_ttl=0.2)
    await server.start()
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/?topics=a&format=envelope") as ws:
            assert (await recv_json(ws))["type"] == "subscribed"
            await wait_for(lambda: server.connection_count == 1)
            server.broadcast({"n": 1}, topic="a")
            server.broadcast({"n": 2}, topic="a")
            first = [await recv_json(ws) for _ in range(2)]
            assert [(m["offset"], m["data"]) for m in first] == [(1, {"n": 1}), (2, {"n": 2})]
            pool = server.workers
            await wait_for(lambda: "a" not in pool._offsets)  # idle for topic_idle_ttl: forgotten
            assert pool.topics_evicted == 1
            server.broadcast({"n": 3}, topic="a")
            m = await recv_json(ws)  # the worker keeps "a" for its subscriber and takes the new numbering
            assert (m["topic"], m["offset"], m["data"]) == ("a", 1, {"n": 3})
            assert m["epoch"] != first[0]["epoch"]
            server.broadcast({"n": 4}, topic="a")
            assert (await recv_json(ws))["offset"] == 2
    finally:
        await server.stop()


async def test_max_connections_holds_for_the_whole_server():
    server = fastws.Server(host="127.0.0.1", port=0, workers=2, max_connections=5)
    await server.start()
    clients = []
    try:
        clients = [await connect(f"ws://127.0.0.1:{server.port}/") for _ in range(9)]
        refused = 0
        for ws in clients:
            try:
                async with asyncio.timeout(0.3):
                    await ws.recv()
            except ConnectionClosed as exc:
                assert (exc.rcvd.code, exc.rcvd.reason) == (1008, "Max connections reached")
                refused += 1
            except TimeoutError:
                pass
        assert refused == 4
        assert server.connection_count == 5
        await wait_for(lambda: server.stats()["rejected"].get("max_connections") == 4)
    finally:
        for ws in clients:
            await ws.close()
        await server.stop()


async def test_cli_serve_workers_broadcasts_stdin_and_stops_on_sigterm():
    proc, port = await spawn_serve("--workers", "2", startup_timeout=TIMEOUT * 3)
    clients = []
    try:
        clients = [await connect(f"ws://127.0.0.1:{port}/") for _ in range(8)]
        async def write_line(text):
            proc.stdin.write(f"{text}\n".encode())
            await proc.stdin.drain()

        for i, ws in enumerate(clients):  # lines until each client has one: registered
            await until_received(write_line, ws, f"ready {i}")
        proc.stdin.write(b"".join(b"line %d\n" % k for k in range(50)))
        await proc.stdin.drain()
        for ws in clients:
            got = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < 50:
                    msg = await ws.recv()
                    if msg.startswith("line "):
                        got.append(msg)
            assert got == [f"line {k}" for k in range(50)]
        proc.send_signal(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await ws.recv()
            assert info.value.rcvd.code == 1001
        async with asyncio.timeout(TIMEOUT * 2):
            assert await proc.wait() == 0
    finally:
        for ws in clients:
            await ws.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        proc.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            await proc.stderr.read()  # until the workers, which share it, are gone too


async def test_with_workers_a_connection_logs_no_more_than_with_one_process():
    """At INFO, one process logs nothing per connection (picows' lines are at WARNING for the CLI);
    the workers must log as the parent does, not each at its root level."""
    import re
    import subprocess
    import sys

    async def serve_and_connect(workers: int) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fastws", "--log-level", "INFO", "serve", "--host", "127.0.0.1", "--port", "0",
            "--workers", str(workers), stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        )
        head = []
        try:
            async with asyncio.timeout(TIMEOUT * 3):
                while not (m := re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", head[-1] if head else "")):
                    line = (await proc.stderr.readline()).decode()
                    assert line, "".join(head)
                    head.append(line)
            port = int(m.group(1))
            for _ in range(4):
                async with connect(f"ws://127.0.0.1:{port}/") as ws:
                    await ws.ping()  # answered: the connection is up in its worker
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(TIMEOUT * 2):
                tail = (await proc.stderr.read()).decode()
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return tail

    one = await serve_and_connect(1)
    two = await serve_and_connect(2)
    per_connection = re.compile(r"New connection|Disconnected|connection accepted", re.I)
    assert not per_connection.search(one), one
    assert not per_connection.search(two), two
    # the workers do log at INFO (so the absence above is not just silence)
    assert re.search(r"INFO fastws\.server\[worker \d\]: fastws stopped", two), two


def _is_reaped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie: exited, never waited for
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV])
async def test_a_dead_worker_is_logged_with_its_exit_code_and_reaped(caplog: pytest.LogCaptureFixture, sig: int):
    """The parent's WARNING names the real exit status (-9), not ``None``: the pipe that
    says a worker died can be readable a moment before the kernel lets it be waited for."""
    server = fastws.Server(host="127.0.0.1", port=0, workers=2)
    await server.start()
    try:
        victim = server.workers.pids[1]
        with caplog.at_level("WARNING", logger="fastws.workers"):
            os.kill(victim, sig)
            await wait_for(lambda: server.workers.restarts == 1, TIMEOUT * 2)
        lines = [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]
        assert len(lines) == 1 and f"(pid {victim}) exited with code {-sig} " in lines[0], lines
        assert _is_reaped(victim)
    finally:
        await server.stop()
