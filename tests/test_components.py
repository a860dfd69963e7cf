"""Built-in components on their own: wired by hand with anyio memory streams."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from fastws.component import ComposedComponent
from fastws.components import Filter, Sink, Source, StreamProcessor, Transformer, resolve_component_type
from fastws.exceptions import ConfigError
from tests.utils import TIMEOUT

ISO_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def wire(
    component: ComposedComponent, inputs: tuple[str, ...] = ("input",), outputs: tuple[str, ...] = ("output",)
):
    """Give ``component`` input and output streams; return (senders, receivers)."""
    senders, receivers = {}, {}
    for port in inputs:
        send, receive = anyio.create_memory_object_stream[Any](100)
        component.receive_streams[port] = receive
        senders[port] = send
    for port in outputs:
        send, receive = anyio.create_memory_object_stream[Any](100)
        component.send_streams[port] = send
        receivers[port] = receive
    return senders, receivers


async def run_through(component: ComposedComponent, items: list[Any]) -> list[Any]:
    """Feed ``items`` to the component's only input, return everything it emits."""
    senders, receivers = wire(component)
    out: list[Any] = []
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(component.process)
            async with senders["input"]:
                for item in items:
                    await senders["input"].send(item)
            async with receivers["output"]:
                out = [x async for x in receivers["output"]]
    return out


async def collect(receive: Any) -> list[Any]:
    with anyio.fail_after(TIMEOUT):
        async with receive:
            return [x async for x in receive]


# -- Source ---------------------------------------------------------------------------------


async def test_source_defaults_like_upstream() -> None:
    source = Source("src")
    assert source.settings.count == 10 and source.settings.data_delay == 0.1
    source = Source("src", {"data_delay": 0})
    _, receivers = wire(source, inputs=())
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.process)
        items = await collect(receivers["output"])
    assert [i["id"] for i in items] == list(range(10))
    assert [i["value"] for i in items] == list(range(10))
    assert all(set(i) == {"id", "value", "timestamp"} for i in items)
    assert source.processed_count == 10


async def test_source_sends_to_every_output_and_closes_them() -> None:
    source = Source("src", {"data_count": 3, "data_delay": 0, "start": 5, "fields": {"kind": "x"}})
    _, receivers = wire(source, inputs=(), outputs=("a", "b"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.process)
        a = await collect(receivers["a"])
        b = await collect(receivers["b"])
    assert [i["id"] for i in a] == [5, 6, 7] == [i["id"] for i in b]
    assert all(i["kind"] == "x" for i in a)


async def test_source_delay_paces_items() -> None:
    source = Source("src", {"data_count": 4, "data_delay": 0.05})
    _, receivers = wire(source, inputs=())
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.process)
        items = await collect(receivers["output"])
    assert len(items) == 4
    assert anyio.current_time() - start >= 0.15


async def test_source_metrics_and_clock() -> None:
    source = Source("m", {"generator": "metrics", "data_count": 8, "data_delay": 0, "seed": 1})
    items = list(source.items())
    assert [i["name"] for i in items[:4]] == [
        "cpu_percent",
        "memory_percent",
        "requests_per_second",
        "latency_ms",
    ]
    assert all(set(i) == {"id", "name", "value", "unit", "timestamp"} for i in items)
    assert all(isinstance(i["value"], float) for i in items)
    assert items == [
        dict(i, timestamp=j["timestamp"])
        for i, j in zip(
            Source("m", {"generator": "metrics", "data_count": 8, "seed": 1}).items(), items, strict=True
        )
    ]
    clock = list(Source("c", {"generator": "clock", "data_count": 2}).items())
    assert set(clock[0]) == {"id", "timestamp", "epoch"}
    assert clock[0]["timestamp"][-1] == "Z"


async def test_source_endless() -> None:
    source = Source("src", {"data_count": None, "data_delay": 0})
    _, receivers = wire(source, inputs=())
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.process)
            got = []
            async with receivers["output"]:
                async for item in receivers["output"]:
                    got.append(item["id"])
                    if len(got) == 2500:
                        break
            # the receiver is gone: the source notices and ends
    assert got == list(range(2500))


async def test_source_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\nnot json\n[3]\n')
    source = Source("src", {"generator": "file", "path": str(path), "data_delay": 0})
    assert source.settings.count is None
    _, receivers = wire(source, inputs=())
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.process)
        items = await collect(receivers["output"])
    assert items == [{"a": 1}, {"a": 2}, [3]]
    assert source.error_count == 1
    limited = Source("src", {"generator": "file", "path": str(path), "data_count": 1})
    assert list(limited.items()) == [{"a": 1}]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"data_delay": "x"}, "src.config.data_delay: expected a number, got 'x'"),
        ({"data_delay": -1}, "src.config.data_delay: expected a number >= 0, got -1"),
        ({"data_count": -1}, "src.config.data_count: expected an integer >= 0, got -1"),
        ({"data_count": 1.5}, "src.config.data_count: expected an integer or null, got 1.5"),
        ({"generator": "dice"}, "src.config.generator: expected one of 'sequence', 'metrics', 'clock', 'file', got 'dice'"),
        ({"generator": "file"}, "src.config.path: required when generator is 'file'"),
        ({"path": "x.jsonl"}, "src.config.path: only used with generator 'file' (generator is 'sequence')"),
        ("nope", "src.config: expected a mapping of settings, got 'nope'"),
    ],
)
def test_source_config_errors(config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Source("src", config)
    assert str(info.value) == message


def test_unknown_source_key_is_ignored_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastws.component.src"):
        src = Source("src", {"dta_count": 3})
    assert src.ignored_keys == ("dta_count",)
    assert [r.getMessage() for r in caplog.records] == [
        "src.config.dta_count: unknown key, ignored (Source keys are: generator, data_count, data_delay, "
        "start, metrics, seed, path, fields); did you mean 'data_count'?"
    ]
    assert Source.validate_config({"dta_count": 3}, "config") == [caplog.records[0].getMessage().replace("src.", "", 1)]


def test_framework_keys_are_accepted() -> None:
    Source("src", {"type": "Source", "retry_enabled": True, "metrics_enabled": False, "data_count": 1})
    Sink("snk", {"schema_validation_enabled": True})


# -- Sink ------------------------------------------------------------------------------------


async def test_sink_memory_keeps_last_n_and_reads_every_input() -> None:
    sink = Sink("snk", {"keep_last": 3})
    senders, _ = wire(sink, inputs=("a", "b"), outputs=())
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.process)
            async with senders["a"], senders["b"]:
                for i in range(5):
                    await senders["a"].send(("a", i))
                    await senders["b"].send(("b", i))
                assert len(await sink.wait_for(10)) == 3
    assert sink.count == 10
    assert sorted(sink.items) == [("a", 4), ("b", 3), ("b", 4)]


async def test_sink_log(caplog: pytest.LogCaptureFixture) -> None:
    sink = Sink("snk", {"mode": "log", "level": "WARNING"})
    caplog.set_level(logging.WARNING, "fastws.component.snk")
    await run_through_sink(sink, [{"x": 1}, "two"])
    assert [r.getMessage() for r in caplog.records if r.name == "fastws.component.snk"] == [
        "snk: {'x': 1}",
        "snk: two",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


async def test_sink_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"old": true}\n')
    sink = Sink("snk", {"mode": "file", "path": str(path)})
    await sink.start()
    await run_through_sink(sink, [{"x": 1}, [1, 2], "s"])
    await sink.stop()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"old": True},
        {"x": 1},
        [1, 2],
        "s",
    ]


async def run_through_sink(sink: Sink, items: list[Any]) -> None:
    senders, _ = wire(sink, outputs=())
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sink.process)
            async with senders["input"]:
                for item in items:
                    await senders["input"].send(item)


def test_sink_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^s.config.path: required when mode is 'file'$"):
        Sink("s", {"mode": "file"})
    with pytest.raises(ConfigError, match=r"^s.config.level: expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', got 'LOUD'$"):
        Sink("s", {"level": "LOUD"})


# -- Filter -----------------------------------------------------------------------------------


async def test_filter_upstream_conditions() -> None:
    f = Filter("f", {"filter_conditions": [{"condition": "value > 2"}, {"condition": "kind != 'noise'"}]})
    items = [{"value": v, "kind": k} for v, k in [(1, "a"), (3, "a"), (4, "noise"), (5, "b")]]
    assert await run_through(f, items) == [{"value": 3, "kind": "a"}, {"value": 5, "kind": "b"}]
    assert f.dropped_count == 2


async def test_filter_any_and_shorthand() -> None:
    f = Filter("f", {"filter_conditions": ["id == 1", "id == 3"], "match": "any"})
    assert [i["id"] for i in await run_through(f, [{"id": n} for n in range(5)])] == [1, 3]
    g = Filter("g", {"condition": "user.active"})
    assert await run_through(g, [{"user": {"active": True}}, {"user": {}}, {}]) == [
        {"user": {"active": True}}
    ]


async def test_filter_without_conditions_passes_everything() -> None:
    assert await run_through(Filter("f"), [1, "x", None, {"a": 1}]) == [1, "x", {"a": 1}]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"filter_conditions": [{"condition": "ok"}, {"condition": "value >> 3"}]},
            "config.filter_conditions[1].condition: invalid expression: unexpected '>' "
            "(expected a value, a field name or '(') at column 8 in 'value >> 3'",
        ),
        (
            {"condition": "x ="},
            "config.condition: invalid expression: unexpected '='; use '==' to compare at column 3 in 'x ='",
        ),
        ({"filter_conditions": [{"expr": "x"}]}, "config.filter_conditions[0].expr: unknown field"),
    ],
)
def test_filter_bad_expression(config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Filter.validate_config(config, "config")
    assert str(info.value) == message


# -- Transformer --------------------------------------------------------------------------------


async def test_transformer_default_like_upstream() -> None:
    t = Transformer("shaper")
    item = {"id": 1}
    [out] = await run_through(t, [item])
    assert out["id"] == 1 and out["processed_by"] == "shaper"
    assert __import__("re").match(ISO_Z, out["processed_at"])
    assert item == {"id": 1}  # not mutated


async def test_transformer_operations() -> None:
    t = Transformer(
        "t",
        {
            "rename": {"metric": "name", "meta.host": "host"},
            "copy": {"raw_value": "value", "meta.copy_of_id": "id"},
            "set": {"env": "prod", "meta.version": 2},
            "drop": ["secret", "nested.private", "absent"],
            "add_timestamp": "meta.seen_at",
        },
    )
    item = {
        "id": 1,
        "name": "cpu",
        "value": 3.5,
        "host": "h1",
        "secret": "s",
        "nested": {"private": 1, "public": 2},
    }
    [out] = await run_through(t, [item])
    seen_at = out["meta"].pop("seen_at")
    assert out == {
        "id": 1,
        "metric": "cpu",
        "value": 3.5,
        "raw_value": 3.5,
        "env": "prod",
        "nested": {"public": 2},
        "meta": {"host": "h1", "copy_of_id": 1, "version": 2},
    }
    assert seen_at.endswith("Z")
    assert item["nested"] == {"private": 1, "public": 2} and "secret" in item


async def test_transformer_counts_bad_items_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    t = Transformer("t")
    out = await run_through(t, [{"a": 1}, "not a mapping", {"a": 2}])
    assert [o["a"] for o in out] == [1, 2]
    assert t.error_count == 1 and t.processed_count == 2
    assert [r.getMessage() for r in caplog.records] == ["t: item failed and was skipped"]


# -- StreamProcessor ---------------------------------------------------------------------------------


async def test_joining() -> None:
    sp = StreamProcessor("j", {"variant": "joining"})
    senders, receivers = wire(sp, inputs=("left", "right"))
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sp.process)
            async with senders["left"], senders["right"]:
                await senders["left"].send({"id": 1, "side": "L1"})
                await senders["left"].send({"id": 2, "side": "L2"})
                await senders["right"].send({"id": 2, "side": "R2"})
                await senders["right"].send({"id": 1, "side": "R1"})
                await senders["right"].send({"id": 1, "side": "R1b"})  # waits for a second left 1
                await senders["right"].send({"side": "no key"})
            out = await collect(receivers["output"])
    assert [(o["join_key"], o["left"]["side"], o["right"]["side"]) for o in out] == [
        (2, "L2", "R2"),
        (1, "L1", "R1"),
    ]
    assert all(list(o) == ["join_key", "left", "right", "joined_at"] for o in out)
    assert sp.error_count == 1  # the item without a join key


async def test_joining_custom_key_and_bound() -> None:
    sp = StreamProcessor("j", {"variant": "joining", "join_key": "user.id", "max_unmatched": 2})
    for i in range(4):
        assert sp.join("left", {"user": {"id": i}}) is None
    assert sp.unmatched_dropped == 2
    assert sp.join("right", {"user": {"id": 0}}) is None  # evicted
    joined = sp.join("right", {"user": {"id": 3}})
    assert joined is not None and joined["join_key"] == 3


async def test_windowing() -> None:
    sp = StreamProcessor("w", {"variant": "windowing", "window_size": 0.2})
    senders, receivers = wire(sp)
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sp.process)
            async with senders["input"]:
                for i in range(3):
                    await senders["input"].send(i)
                # the ticker closes the window without another item arriving
                first = await receivers["output"].receive()
                await senders["input"].send(3)
            rest = await collect(receivers["output"])
    windows = [first, *rest]
    assert [w["items"] for w in windows] == [[0, 1, 2], [3]]
    for w in windows:
        assert list(w) == ["window_start", "window_end", "items", "count"]
        assert w["count"] == len(w["items"])
    from datetime import datetime

    start, end = (
        datetime.fromisoformat(first[k].replace("Z", "+00:00")) for k in ("window_start", "window_end")
    )
    assert (end - start).total_seconds() == pytest.approx(0.2)


async def test_deduplication() -> None:
    sp = StreamProcessor("d", {"variant": "deduplication", "dedup_key": "id", "max_keys": 2})
    items = [{"id": 1}, {"id": 1, "x": 1}, {"id": 2}, {"id": 3}, {"id": 1}, {"id": 3}, {"noid": 1}]
    out = await run_through(sp, items)
    # keys remembered: 1; 1,2; 2,3 (1 forgotten); so the second {"id": 1} passes
    assert out == [{"id": 1}, {"id": 2}, {"id": 3}, {"id": 1}, {"noid": 1}]
    assert sp.duplicates_dropped == 2


async def test_deduplication_whole_item_and_ttl() -> None:
    sp = StreamProcessor("d", {"variant": "deduplication", "dedup_key": None})
    assert await run_through(sp, [{"a": 1, "b": 2}, {"b": 2, "a": 1}, {"a": 2}]) == [
        {"a": 1, "b": 2},
        {"a": 2},
    ]
    sp = StreamProcessor("d", {"variant": "deduplication", "ttl": 0.05})
    assert sp.handle({"id": 1}) is not None
    assert sp.handle({"id": 1}) is None
    await asyncio.sleep(0.06)  # the ttl is the event being tested
    assert sp.handle({"id": 1}) is not None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "sp.config.variant: missing required field"),
        (
            {"variant": "sorting"},
            "sp.config.variant: expected one of 'joining', 'windowing', 'deduplication', got 'sorting'",
        ),
        ({"variant": "windowing", "window_size": 0}, "sp.config.window_size: expected a number > 0, got 0"),
        ({"variant": "deduplication", "max_keys": 0}, "sp.config.max_keys: expected an integer >= 1, got 0"),
    ],
)
def test_stream_processor_config_errors(config: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        StreamProcessor("sp", config)
    assert str(info.value) == message


# -- registry --------------------------------------------------------------------------------------


class Doubler(ComposedComponent):
    async def process_item(self, item: Any) -> Any:
        return item * 2


def test_registry_import_path() -> None:
    assert resolve_component_type("Sink") is Sink
    assert resolve_component_type("test_components:Doubler") is Doubler
    with pytest.raises(
        ConfigError,
        match=r"^type: 'test_components:wire' is not a subclass of fastws.component.ComposedComponent$",
    ):
        resolve_component_type("test_components:wire")
    with pytest.raises(
        ConfigError, match=r"^type: cannot import module 'no_such_module': No module named 'no_such_module'$"
    ):
        resolve_component_type("no_such_module:X")
    with pytest.raises(ConfigError, match=r"^type: module 'test_components' has no attribute 'Nope'$"):
        resolve_component_type("test_components:Nope")
    with pytest.raises(
        ConfigError, match=r"^type: unknown component type 'Mixer'; known types are: Source, Sink, Filter, "
    ):
        resolve_component_type("Mixer")
