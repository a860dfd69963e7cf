"""The Hub on in-memory transports (fastws._testing): coalescing, slow-client policies,
removal during fan-out, encoding hooks and counters. No sockets: each client is a
``MemoryTransport`` registered through the real connection path (``Hub.new_client`` +
``on_ws_connected``), so every byte the Hub writes is kept and checked."""

from __future__ import annotations

import ast
import asyncio
import enum
import json
import math
import pathlib
import struct

import picows
import pytest

import fastws
from fastws import EncodeError, _core
from fastws._testing import MemoryTransport, connect
from tests.utils import wait_for

STUB = pathlib.Path(_core.__file__).with_name("_core.pyi")


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload)."""
    out, i = [], 0
    while i < len(data):
        b0, b1 = data[i], data[i + 1]
        n, i = b1 & 0x7F, i + 2
        if n == 126:
            (n,), i = struct.unpack_from("!H", data, i), i + 2
        elif n == 127:
            (n,), i = struct.unpack_from("!Q", data, i), i + 8
        out.append((b0 & 0x0F, data[i:i + n]))
        i += n
    assert i == len(data), "truncated frame"
    return out


def texts(t: MemoryTransport) -> list[str]:
    return [p.decode() for op, p in frames(t.take()) if op == 0x1]


def make_hub(n: int, **kw):
    loop = asyncio.get_running_loop()
    gone = []
    hub = fastws.Hub(loop, on_disconnect=gone.append, **kw)
    transports = [MemoryTransport(loop, peer=("10.0.0.1", 1000 + i)) for i in range(n)]
    clients = [connect(hub, t) for t in transports]
    return hub, transports, clients, gone


# -- the stub -----------------------------------------------------------------------


def _stub_names():
    tree = ast.parse(STUB.read_text())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        if isinstance(node, ast.ClassDef):
            names = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    names.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    names.add(item.target.id)
            members[node.name] = {n for n in names if not n.startswith("_")}
    return top, members


def test_stub_names_match_the_compiled_module():
    top, members = _stub_names()
    defined = {
        name for name in dir(_core)
        if not name.startswith("_") and getattr(getattr(_core, name), "__module__", None) == "fastws._core"
    }
    assert top == defined
    bases = {"Client": picows.WSListener, "Hub": object}
    for cls_name, base in bases.items():
        cls = getattr(_core, cls_name)
        public = {n for n in dir(cls) if not n.startswith("_")} - set(dir(base))
        assert members[cls_name] == public, cls_name


def test_core_has_no_test_scaffolding():
    for name in ("NullTransport", "monotonic"):
        assert not hasattr(_core, name)
    for name in ("_attach_transport", "encode_frame"):
        assert not hasattr(_core.Hub, name)


# -- coalescing -----------------------------------------------------------------------


async def test_publishes_of_one_turn_reach_each_client_in_one_write():
    hub, transports, _, _ = make_hub(3)
    items = [{"seq": i} for i in range(16)]
    for item in items:
        assert hub.publish(item) == 3
    assert all(t.writes == 0 for t in transports)  # nothing written before the flush
    await wait_for(lambda: hub.flushes == 1)
    size = transports[0].written
    for t in transports:
        assert t.writes == 1
        assert [json.loads(x) for x in texts(t)] == items
    s = hub.stats()
    assert s["messages"] == 16 and s["deliveries"] == 48 and s["bytes_out"] == 3 * size
    assert hub.last_sent == 3 and hub.last_disconnected == 0
    # the next turn's publish is a new write
    hub.publish("again")
    await wait_for(lambda: hub.flushes == 2)
    assert [t.writes for t in transports] == [2, 2, 2]


async def test_flush_with_nothing_published_writes_nothing():
    hub, transports, _, _ = make_hub(2)
    assert hub.flush() == 0
    assert hub.flushes == 0 and all(t.writes == 0 for t in transports)


# -- slow clients ---------------------------------------------------------------------


async def test_disconnect_policy_cuts_only_the_client_over_the_cap():
    hub, transports, clients, gone = make_hub(3, max_queued_bytes=4096)
    slow = transports[1]
    slow.stall()
    item = "x" * 1500
    for turn in range(3):
        hub.publish(item)
        await wait_for(lambda turn=turn: hub.flushes == turn + 1)
    # 3 x 1503 bytes > 4096: cut after the third flush, without a CLOSE frame
    assert gone == [clients[1]]
    s = hub.stats()
    assert s["slow_disconnects"] == 1 and s["disconnect_reasons"]["slow_client"] == 1
    assert hub.last_disconnected == 1 and len(hub) == 2
    await wait_for(lambda: slow.closed)
    assert [op for op, _ in frames(slow.take())] == [1, 1, 1]
    for t in (transports[0], transports[2]):
        assert texts(t) == [item] * 3
    hub.publish("after")
    await wait_for(lambda: hub.flushes == 4)
    assert texts(transports[0]) == texts(transports[2]) == ["after"]
    assert slow.writes == 3 and sum(s["disconnect_reasons"].values()) == 1


async def test_drop_policy_skips_and_counts_until_the_client_drains():
    hub, transports, clients, gone = make_hub(2, max_queued_bytes=4096, slow_client_policy="drop")
    slow, fast = transports
    slow.stall()
    for turn in range(3):
        hub.publish("y" * 3000)
        await wait_for(lambda turn=turn: hub.flushes == turn + 1)
    # the second write took it over the cap: the third was skipped
    assert hub.stats()["dropping_clients"] == 1
    assert hub.publish("a") == 1 and hub.publish("b") == 1  # queued to the fast client only
    await wait_for(lambda: hub.flushes == 4)
    assert clients[0].dropped == 3 and hub.dropped == 3
    assert len(texts(slow)) == 2 and len(texts(fast)) == 5
    slow.drain()  # resume_writing: the episode ends
    assert hub.stats()["dropping_clients"] == 0
    hub.publish("back")
    await wait_for(lambda: hub.flushes == 5)
    assert texts(slow) == ["back"] and texts(fast) == ["back"]
    assert gone == [] and hub.slow_disconnects == 0


# -- removal during fan-out -----------------------------------------------------------


async def test_closing_clients_are_removed_during_the_fanout_and_no_one_is_skipped():
    hub, transports, clients, gone = make_hub(10)
    closing = {0, 4, 9}  # first, middle, last: the swap-with-last removal must visit everyone
    for i in closing:
        clients[i].close(1000, "bye")
    for i in closing:  # the CLOSE frame went out at once
        assert frames(transports[i].take()) == [(0x8, struct.pack("!H", 1000) + b"bye")]
    hub.publish({"k": 1})
    await wait_for(lambda: hub.flushes == 1)
    assert hub.last_sent == 7 and hub.last_disconnected == 3 and hub.closed_skipped == 3
    assert sorted(clients.index(c) for c in gone) == sorted(closing)
    for i, t in enumerate(transports):
        assert t.writes == 1, i  # closing ones: their CLOSE only; the others: the broadcast
        assert texts(t) == ([] if i in closing else ['{"k":1}'])
    assert hub.stats()["disconnect_reasons"]["server_close"] == 3 and len(hub) == 7


async def test_on_disconnect_closing_another_client_during_the_fanout():
    loop = asyncio.get_running_loop()
    transports = [MemoryTransport(loop) for _ in range(6)]
    clients: list = []

    def on_disconnect(c):
        gone.append(c)
        if c is clients[1]:
            clients[4].close()  # a callback acting on another client mid fan-out

    gone: list = []
    hub = fastws.Hub(loop, on_disconnect=on_disconnect)
    clients.extend(connect(hub, t) for t in transports)
    clients[1].close()  # closing, still listed: the flush forgets it and calls on_disconnect
    hub.publish("m")
    await wait_for(lambda: hub.flushes == 1)
    # clients[4] is closed by the callback while the fan-out is at slot 1: it must not get the
    # message after its CLOSE, and every open client gets exactly one copy
    received = [i for i, t in enumerate(transports) if "m" in texts(t)]
    assert received == [0, 2, 3, 5]
    hub.publish("n")
    await wait_for(lambda: hub.flushes == 2)
    assert set(gone) == {clients[1], clients[4]} and len(hub) == 4
    assert hub.stats()["disconnect_reasons"]["server_close"] == 2


# -- encoding hooks and counters ------------------------------------------------------


class Color(str, enum.Enum):  # noqa: UP042 (the mixin form user code has)
    RED = "red"


class MyStr(str):
    pass


async def test_str_items_go_out_verbatim_subclasses_included():
    hub, transports, _, _ = make_hub(1)
    hub.publish("plain")
    hub.publish(MyStr("sub"))
    hub.publish(Color.RED)  # isinstance(item, str): its str value, not JSON
    hub.publish("é\U0001f600")
    await wait_for(lambda: hub.flushes == 1)
    assert texts(transports[0]) == ["plain", "sub", "red", "é\U0001f600"]
    assert fastws.encode_frame(MyStr("sub")) == b"\x81\x03sub"


async def test_lone_surrogate_is_an_encode_error_counted_never_unicode_error():
    hub, transports, _, _ = make_hub(1)
    with pytest.raises(EncodeError, match="UTF-8") as info:
        hub.publish("a\ud800b")
    assert not isinstance(info.value, UnicodeError)
    with pytest.raises(EncodeError):
        hub.publish(MyStr("\udfff"))
    with pytest.raises(EncodeError):
        fastws.encode_frame("a\ud800b")
    assert hub.encode_errors == 2 and hub.messages == 0
    hub.publish("ok")  # nothing of the bad items was queued
    await wait_for(lambda: hub.flushes == 1)
    assert texts(transports[0]) == ["ok"]


async def test_encode_fallback_is_used_when_msgspec_refuses():
    calls = []

    def fallback(item):
        calls.append(item)
        if isinstance(item, set):
            return json.dumps(sorted(item)).encode()
        raise TypeError("no way")

    hub, transports, _, _ = make_hub(1, encode_fallback=fallback)
    hub.publish({"fine": 1})  # msgspec takes it: fallback not called
    weird = object()
    with pytest.raises(EncodeError, match="no way"):
        hub.publish(weird)
    assert calls == [weird] and hub.encode_errors == 1
    await wait_for(lambda: hub.flushes == 1)
    assert [json.loads(x) for x in texts(transports[0])][0] == {"fine": 1}

    class Point:
        def __init__(self, x):
            self.x = x

    hub2, transports2, _, _ = make_hub(1, encode_fallback=lambda item: b'{"x":%d}' % item.x)
    hub2.publish(Point(7))
    await wait_for(lambda: hub2.flushes == 1)
    assert texts(transports2[0]) == ['{"x":7}'] and hub2.encode_errors == 0
    assert fastws.encode_frame(Point(7), lambda item: b'{"x":%d}' % item.x) == b'\x81\x07{"x":7}'


async def test_encode_fallback_returning_no_bytes_and_no_fallback_are_encode_errors():
    hub, _, _, _ = make_hub(1, encode_fallback=lambda item: "not bytes")
    with pytest.raises(EncodeError, match="encode_fallback returned str, not bytes"):
        hub.publish(object())
    hub2, _, _, _ = make_hub(1)
    with pytest.raises(EncodeError, match="cannot serialize object to JSON"):
        hub2.publish(object())
    with pytest.raises(EncodeError):
        fastws.encode_frame(object())
    assert hub.encode_errors == 1 and hub2.encode_errors == 1


async def test_count_nonfinite_is_called_only_for_payloads_holding_null():
    seen = []

    def count(item):
        seen.append(item)
        return sum(1 for v in item.values() if isinstance(v, float) and not math.isfinite(v))

    hub, transports, _, _ = make_hub(1, count_nonfinite=count)
    hub.publish({"a": 1.5})  # no "null" in the payload: not called
    hub.publish({"a": float("nan"), "b": float("inf"), "c": 2.0})
    hub.publish({"a": None})  # a real null: called, counts 0
    hub.publish("null")  # str items are text, not JSON: never counted
    await wait_for(lambda: hub.flushes == 1)
    assert len(seen) == 2 and hub.nonfinite_numbers == 2 == hub.stats()["nonfinite_numbers"]
    assert texts(transports[0])[1] == '{"a":null,"b":null,"c":2.0}'
    outside = []
    fastws.encode_frame({"x": float("nan")}, None, outside.append)
    fastws.encode_frame({"x": 1}, None, outside.append)
    assert len(outside) == 1 and math.isnan(outside[0]["x"])


async def test_count_nonfinite_raising_does_not_lose_the_item():
    def boom(item):
        raise ValueError("bad counter")

    hub, transports, _, _ = make_hub(1, count_nonfinite=boom)
    hub.publish({"a": None})
    await wait_for(lambda: hub.flushes == 1)
    assert texts(transports[0]) == ['{"a":null}'] and hub.nonfinite_numbers == 0


async def test_an_item_larger_than_max_queued_bytes_is_refused_at_publish():
    hub, transports, _, gone = make_hub(2, max_queued_bytes=4096)
    with pytest.raises(EncodeError, match="larger than max_queued_bytes"):
        hub.publish("z" * 4097)
    with pytest.raises(EncodeError, match="larger than max_queued_bytes"):
        hub.publish({"blob": "z" * 5000})
    # a frame from a backplane or the parent of workers: skipped and counted, not raised
    assert hub.publish_frame(fastws.encode_frame("z" * 70000)) == 0
    assert hub.publish_frame(fastws.encode_frame("z" * 4097)) == 0
    hub.publish("z" * 4096)  # exactly the cap is fine
    hub.publish_frame(fastws.encode_frame("small"))
    await wait_for(lambda: hub.flushes == 1)
    assert hub.encode_errors == 4 and hub.messages == 2 and gone == []
    for t in transports:
        assert texts(t) == ["z" * 4096, "small"]
    # the publisher of a relayed broadcast refuses it with the same error
    with pytest.raises(EncodeError, match=r"item is 4097 bytes .* larger than max_queued_bytes \(4096\)"):
        fastws.encode_frame("z" * 4097, max_size=4096)
    assert fastws.encode_frame("z" * 4096, max_size=4096)[4:] == b"z" * 4096


# -- heartbeat, close_all, counters on the way out --------------------------------------


async def test_ping_all_reap_and_close_all():
    hub, transports, clients, gone = make_hub(3)
    since = hub.ping_all()
    for t in transports:
        assert frames(t.take()) == [(0x9, b"")]
    assert hub.reap(since) == 3  # nobody answered
    for t in transports:
        assert frames(t.take()) == [(0x8, struct.pack("!H", 1001) + b"heartbeat timeout")]
    assert hub.close_all() == 0  # already closing: not counted twice
    await wait_for(lambda: len(gone) == 3)
    s = hub.stats()
    assert s["disconnect_reasons"]["heartbeat_timeout"] == 3 and sum(s["disconnect_reasons"].values()) == 3
    assert s["connections"] == 0


async def test_close_all_sends_one_close_each_and_counts_server_close():
    hub, transports, clients, gone = make_hub(2)
    assert hub.close_all(1001, "bye") == 2
    assert hub.close_all(1001, "bye") == 0
    for t in transports:
        assert frames(t.take()) == [(0x8, struct.pack("!H", 1001) + b"bye")]
    hub.abort_all()
    await wait_for(lambda: len(gone) == 2)
    assert hub.stats()["disconnect_reasons"]["server_close"] == 2
