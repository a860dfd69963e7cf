"""Micro-benchmarks of the core: serialize + frame + fan-out, no sockets.

    python -m pytest bench/bench_core.py --benchmark-only -p no:cacheprovider

Clients are in-memory aiofastnet transports (``fastws._testing.CountingTransport``) whose
C-level write only counts bytes, so
the figures are the user-space cost of fastws alone (the kernel's send(2), 4-6 us
per write on these machines, is what the fan-out benchmark measures).
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import fastws
from fastws import Hub
from fastws._testing import CountingTransport, connect_many

N = 1000
MESSAGE = {"seq": 1, "ts": 1764140000000000000, "symbol": "ACME", "price": 101.25, "pad": "x" * 30}


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def hub(loop):
    hub = Hub(loop)
    transports = [CountingTransport(loop) for _ in range(N)]
    connect_many(hub, transports)
    return hub, transports


def test_encode_frame(benchmark):
    benchmark(fastws.encode_frame, MESSAGE)


def test_msgspec_encode_only(benchmark):
    benchmark(msgspec.json.encode, MESSAGE)


def test_fanout_1_message_1000_clients(benchmark, hub):
    hub, _ = hub
    def once():
        hub.publish(MESSAGE)
        hub.flush()

    benchmark(once)
    assert hub.last_sent == N


def test_fanout_16_messages_1000_clients(benchmark, hub):
    hub, _ = hub
    def burst():
        for _ in range(16):
            hub.publish(MESSAGE)
        hub.flush()

    benchmark(burst)
    assert hub.last_sent == N


def test_naive_python_loop_1000_clients(benchmark, hub):
    """Baseline: encode once, frame once, then a Python loop of transport.write()."""
    _, transports = hub
    writers = [t.write for t in transports]

    def naive():
        frame = fastws.encode_frame(MESSAGE)
        for w in writers:
            w(frame)

    benchmark(naive)
