"""Kill a worker under load: the parent's counters never go backwards, and the clients
lost with the dead worker are counted as disconnects (reason ``worker_exit``)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fastws
from tests.utils import TIMEOUT, wait_for

pytestmark = pytest.mark.adversarial

COUNTERS = ("messages", "deliveries", "bytes_out", "flushes", "connections_total", "disconnects")


def _snapshot(server: fastws.Server) -> dict[str, float]:
    s = server.stats()
    snap = {k: s.get(k, 0) for k in COUNTERS}
    for reason, n in s.get("disconnect_reasons", {}).items():
        snap[f"disconnect_reasons.{reason}"] = n
    snap["disconnect_count"] = server.disconnect_count
    return snap


@pytest.mark.slow
async def test_killing_a_worker_keeps_counters_monotonic_and_counts_its_clients():
    server = fastws.Server(host="127.0.0.1", port=0, workers=2, max_connections=1000)
    await server.start()
    clients = []
    samples: list[dict[str, float]] = []
    stop_sampling = asyncio.Event()

    async def sample() -> None:  # what a Prometheus scrape would see, every 20 ms
        while not stop_sampling.is_set():
            samples.append(_snapshot(server))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        n = 24
        clients = [await connect(f"ws://127.0.0.1:{server.port}/", max_queue=None) for _ in range(n)]
        await wait_for(lambda: server.connection_count == n)
        per_worker = [w["connections"] for w in server.stats()["per_worker"]]
        assert all(per_worker), per_worker  # SO_REUSEPORT spread them over both
        m = 300
        for i in range(m):
            server.broadcast({"seq": i})
            if i % 20 == 0:
                await asyncio.sleep(0)
        await wait_for(lambda: server.stats().get("deliveries") == n * m, TIMEOUT * 2)
        before = _snapshot(server)

        victim_index = 0
        victim = server.workers.pids[victim_index]
        lost = per_worker[victim_index]
        os.kill(victim, signal.SIGKILL)
        pool = server.workers
        await wait_for(lambda: pool.restarts == 1 and pool.pids[victim_index] not in (None, victim)
                       and pool._workers[victim_index].ready.done(), TIMEOUT * 3)
        # the replacement reports (from zero); the totals must not drop
        await wait_for(lambda: pool._workers[victim_index].stats, TIMEOUT)
        after = _snapshot(server)
        for key, value in before.items():
            assert after.get(key, 0) >= value, (key, value, after.get(key))
        assert server.stats()["disconnect_reasons"]["worker_exit"] == lost
        assert after["disconnects"] >= before["disconnects"] + lost
        assert server.disconnect_count == after["disconnect_count"] >= before["disconnect_count"] + lost

        # the survivors are still served
        survivors = []
        for ws in clients:
            try:
                async with asyncio.timeout(0.3):
                    while True:
                        await ws.recv()
            except ConnectionClosed:
                continue
            except TimeoutError:
                survivors.append(ws)
        assert len(survivors) == n - lost
        assert server.broadcast({"after": True}) == n - lost
        for ws in survivors:
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == '{"after":true}'
        await wait_for(lambda: server.stats()["deliveries"] >= before["deliveries"] + len(survivors), TIMEOUT)
    finally:
        stop_sampling.set()
        await sampler
        for ws in clients:
            await ws.close()
        await server.stop()
    # every scrape saw every counter go up or stay
    assert len(samples) > 10
    for prev, cur in zip(samples, samples[1:], strict=False):
        for key, value in prev.items():
            assert cur.get(key, 0) >= value, (key, prev, cur)
