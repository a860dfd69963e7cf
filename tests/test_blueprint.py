"""Blueprints: schema and validation errors, binding forms, the runner, the CLI subcommands."""

from __future__ import annotations

import argparse
import asyncio
import logging
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from fastws.blueprint import BlueprintError, FanOutSendStream, System
from fastws.blueprint import cli as blueprint_cli
from fastws.blueprint.cli import main as cli_main
from fastws.component import ComposedComponent
from fastws.components import Sink
from tests.utils import TIMEOUT


def write(tmp_path: Path, text: str, name: str = "system.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(text: str, tmp_path: Path) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(BlueprintError) as info:
        System.from_yaml(path)
    prefix = f"{path}: "
    assert all(e.startswith(prefix) for e in info.value.errors), info.value.errors
    return [e[len(prefix) :] for e in info.value.errors]


PIPE = """
system:
  name: pipe
  components:
    - {name: src, type: Source, config: {data_count: 5, data_delay: 0}}
    - {name: sink, type: Sink}
  bindings:
"""


# -- validation -----------------------------------------------------------------------------


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "system:\n  name: x\n  components: [\n    {name: a, type: Source\n  bindings: []\n"
    )
    with pytest.raises(BlueprintError) as info:
        System.from_yaml(path)
    msg = str(info.value)
    assert msg == (
        f"{path}: YAML syntax error at line 5, column 11: while parsing a flow mapping; "
        "did not find expected ',' or '}'"
    )


def test_tab_indentation_error(tmp_path: Path) -> None:
    path = write(tmp_path, "system:\n\tname: x\n")
    with pytest.raises(BlueprintError, match=r"YAML syntax error at line 2, column 1: "):
        System.from_yaml(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["the blueprint is empty; expected a mapping with a 'system' key"]),
        ("- 1\n", ["expected a mapping with a 'system' key, got list"]),
        ("sistem: {}\n", ["sistem: unknown key"]),
        ("system: {name: x}\n", ["components: missing required field"]),
        ("system: {name: x, components: [{name: a}]}\n", ["components[0].type: missing required field"]),
        (
            "system: {name: x, components: [{name: a, type: Source, confg: {}}]}\n",
            ["components[0].confg: unknown key"],
        ),
        (
            "system: {name: x, components: [{name: a, type: Source, config: 3}]}\n",
            ["components[0].config: expected a mapping, got 3"],
        ),
        (
            "system: {name: x, components: [{name: a, type: Source}], bindings: [{frm: a.x}]}\n",
            ["bindings[0].frm: unknown key"],
        ),
        (
            "system: {name: x, components: [{name: a, type: Source}], bindings: [{from: a.x, to: b.y, buffer_size: -1}]}\n",
            ["bindings[0].buffer_size: expected an integer >= 0, got -1"],
        ),
    ],
)
def test_schema_errors(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert errors_of(text, tmp_path) == expected


def test_every_problem_is_reported(tmp_path: Path) -> None:
    text = """
    system:
      name: broken
      components:
        - {name: src, type: Source, config: {data_delay: "x"}}
        - {name: ws, type: WebSocket, config: {port: 70000}}
        - {name: src, type: Sink}
        - {name: mix, type: Mixer}
        - {name: join, type: StreamProcessor, config: {variant: joining}}
        - {name: bad_flt, type: Filter, config: {condition: "value >"}}
        - {name: flt, type: Filter, config: {condition: "value > 1"}}
        - {name: out, type: Sink}
      bindings:
        - {from_component: nowhere, to_component: out}
        - {from_component: out, to_component: join, stream_name: left}
        - {from: "join.output", to: "join2.input"}
        - {from_component: join, from_port: output, to_component: join, to_port: left}
        - {from_component: flt, to_component: join, to_port: middle}
        - {from: "flt.output", to: "out.input"}
        - {from: "flt.output", to: ["out.input"]}
        - {from: "flt.output", to_component: out}
        - {from: "flt.output"}
        - {to_component: out}
        - {from: "flt", to: "nodot"}
    """
    assert errors_of(text, tmp_path) == [
        "components[0].config.data_delay: expected a number, got 'x'",
        "components[1].config.port: must be 1-65535 (0 picks a free port), got 70000",
        "components[2].name: duplicate component name 'src' (also components[0])",
        "components[3].type: unknown component type 'Mixer'; known types are: Source, Sink, Filter, "
        "Transformer, StreamProcessor, WebSocket, or an import path 'package.module:ClassName'",
        "components[5].config.condition: invalid expression: unexpected end of expression "
        "(expected a value, a field name or '(') at column 8 in 'value >'",
        "bindings[0].from_component: no component named 'nowhere'; components are: src, ws, mix, join, bad_flt, flt, out",
        "bindings[1].from_port: component 'out' (Sink) has no output ports",
        "bindings[2].to: no component named 'join2'; components are: src, ws, mix, join, bad_flt, flt, out",
        "bindings[3]: component 'join' is bound to itself",
        "bindings[4].to_port: component 'join' (StreamProcessor) has no input port 'middle'; "
        "its input ports are: left, right",
        "bindings[6]: flt.output -> out.input is already bound by bindings[5]",
        "bindings[7]: use either 'from'/'to' or 'from_component'/'to_component', not both",
        "bindings[8]: needs both 'from' and 'to'",
        "bindings[9].from_component: missing; a binding needs 'from_component' and 'to_component' (or 'from'/'to')",
        "bindings[10].to: expected 'component.port', got 'nodot'",
    ]


def test_source_has_no_inputs_and_single_input_ports(tmp_path: Path) -> None:
    text = """
    system:
      name: x
      components:
        - {name: a, type: Source}
        - {name: b, type: Source}
        - {name: t, type: Transformer}
      bindings:
        - {from: a.out, to: b.input}
        - {from: a.out, to: t.input}
        - {from: b.out, to: t.other}
    """
    assert errors_of(text, tmp_path) == [
        "bindings[0].to: component 'b' (Source) has no input ports",
        "bindings[2]: 't' (Transformer) reads a single input port, but it is bound on 'input' (bindings[1]) "
        "and 'other'; bind both to the same port to merge them",
    ]


def test_unknown_config_key_is_a_warning_and_an_error_when_strict(tmp_path: Path) -> None:
    text = "system: {name: x, components: [{name: s, type: Sink, config: {mod: log, retry_enabled: true}}]}\n"
    path = write(tmp_path, text)
    expected = (f"{path}: components[0].config.mod: unknown key, ignored (Sink keys are: mode, level, path, keep_last)"
                "; did you mean 'mode'?")  # retry_enabled: a framework key, ignored silently
    assert System.from_yaml(path).warnings == [expected]
    with pytest.raises(BlueprintError) as info:
        System.from_yaml(path, strict=True)
    assert info.value.errors == [expected.replace("unknown key, ignored", "unknown key (--strict)")]


def test_validate_prints_warnings_and_strict_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "system: {name: x, components: [{name: s, type: Sink, config: {mod: log}}]}\n")
    assert cli_main(["validate", str(path)]) == 0
    assert "warning: " in capsys.readouterr().err
    assert cli_main(["validate", "--strict", str(path)]) == 1
    assert "components[0].config.mod: unknown key" in capsys.readouterr().err


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        BlueprintError, match=r"nope.yaml: cannot read the blueprint: No such file or directory$"
    ):
        System.from_yaml(tmp_path / "nope.yaml")


def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, PIPE + "    - {from: src.out, to: sink.in}\n")
    system = System.from_yaml(path, overrides={"src": {"data_count": 2}})
    assert system.blueprint.system.components[0].config == {"data_count": 2, "data_delay": 0}
    with pytest.raises(
        BlueprintError, match=r"^overrides: no component named 'nope'; components are: src, sink$"
    ):
        System.from_yaml(path, overrides={"nope": {}})
    with pytest.raises(
        BlueprintError, match=r"^overrides: src.data_count=-2: expected an integer >= 0, got -2$"
    ):
        System.from_yaml(path, overrides={"src": {"data_count": -2}})


# -- binding forms and the runner -------------------------------------------------------------------


async def run_system(system: System) -> System:
    with anyio.fail_after(TIMEOUT):
        await system.run(handle_signals=False)
    return system


@pytest.mark.parametrize(
    "binding",
    [
        "{from_component: src, to_component: sink, stream_name: data}",
        "{from_component: src, to_component: sink}",
        "{from_component: src, from_port: out, to_component: sink, to_port: in}",
        "{from: src.out, to: sink.in}",
        "{from: src, to: sink}",
        "{from: src.out, to: [sink.in]}",
    ],
)
async def test_binding_forms(tmp_path: Path, binding: str) -> None:
    system = await run_system(System.from_yaml(write(tmp_path, PIPE + f"    - {binding}\n")))
    sink = system["sink"]
    assert isinstance(sink, Sink)
    assert [i["id"] for i in sink.items] == [0, 1, 2, 3, 4]
    edge = system.edges[0]
    if "stream_name" in binding:
        assert (edge.from_port, edge.to_port) == ("data", "data")
    elif "out" in binding:
        assert (edge.from_port, edge.to_port) == ("out", "in")
    else:
        assert (edge.from_port, edge.to_port) == ("output", "input")


async def test_fan_out_and_fan_in() -> None:
    system = System.from_dict(
        {
            "system": {
                "name": "fan",
                "components": [
                    {"name": "a", "type": "Source", "config": {"data_count": 300, "data_delay": 0}},
                    {
                        "name": "b",
                        "type": "Source",
                        "config": {"data_count": 200, "data_delay": 0, "start": 1000},
                    },
                    {"name": "t", "type": "Transformer", "config": {"set": {"seen": True}}},
                    {"name": "s1", "type": "Sink", "config": {"keep_last": None}},
                    {"name": "s2", "type": "Sink", "config": {"keep_last": None}},
                ],
                "bindings": [
                    {"from": "a.out", "to": ["s1.in", "t.in"], "buffer_size": 10},
                    {"from": "b.out", "to": "t.in"},
                    {"from": "t.out", "to": "s2.in"},
                ],
            }
        }
    )
    await run_system(system)
    assert isinstance(system["a"].send_streams.get("out", None), (FanOutSendStream, type(None)))
    assert [i["id"] for i in system["s1"].items] == list(range(300))  # type: ignore[attr-defined]
    got = system["s2"].items  # type: ignore[attr-defined]
    assert sorted(i["id"] for i in got) == [*range(300), *range(1000, 1200)]
    assert all(i["seen"] for i in got)


class Exploding(ComposedComponent):
    async def process(self) -> None:
        stream = next(iter(self.receive_streams.values()))
        await stream.receive()
        raise RuntimeError("boom")


class Doubler(ComposedComponent):
    async def process_item(self, item: Any) -> Any:
        return {"id": item["id"] * 2}


async def test_failing_component_is_logged_and_others_go_on(caplog: pytest.LogCaptureFixture) -> None:
    system = System.from_dict(
        {
            "system": {
                "name": "fail",
                "components": [
                    {"name": "src", "type": "Source", "config": {"data_count": 50, "data_delay": 0}},
                    {"name": "bad", "type": "test_blueprint:Exploding"},
                    {"name": "double", "type": "test_blueprint:Doubler"},
                    {"name": "sink", "type": "Sink"},
                ],
                "bindings": [
                    {"from": "src.out", "to": ["bad.in", "double.in"], "buffer_size": 1},
                    {"from": "double.out", "to": "sink.in"},
                ],
            }
        }
    )
    await run_system(system)
    assert [i["id"] for i in system["sink"].items] == [2 * i for i in range(50)]  # type: ignore[attr-defined]
    assert system.failures == {"bad": "RuntimeError('boom')"}
    assert system["bad"].error_count == 1
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in failed] == ["system 'fail': component 'bad' failed; the others go on"]


async def test_start_stop_endless_leaves_no_task_behind() -> None:
    before = asyncio.all_tasks()
    system = System.from_string(
        """
        system:
          name: endless
          components:
            - {name: src, type: Source, config: {data_count: null, data_delay: 0.001}}
            - {name: t, type: Transformer}
            - {name: sink, type: Sink}
          bindings:
            - {from: src.out, to: t.in}
            - {from: t.out, to: sink.in}
        """
    )
    await system.start()
    assert system.running
    with anyio.fail_after(TIMEOUT):
        await system["sink"].wait_for(5)  # type: ignore[attr-defined]
    await system.stop()
    assert not system.running
    assert asyncio.all_tasks() == before
    assert [await c.is_ready() for c in system.components.values()] == [False, False, False]
    await system.stop()  # idempotent
    with pytest.raises(RuntimeError, match="already started"):
        await system.start()


async def test_async_with_and_wait() -> None:
    async with System.from_string(PIPE + "    - {from: src.out, to: sink.in}\n") as system:
        with anyio.fail_after(TIMEOUT):
            await system.wait()
        assert system["sink"].count == 5  # type: ignore[attr-defined]
    assert system.status()["sink"]["items_processed"] == system.status()["sink"].items_processed == 5


# -- CLI subcommands ------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastws")
    blueprint_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, PIPE + "    - {from: src.out, to: sink.in}\n")
    args = parse(["validate", str(path)])
    assert args.func(args) == 0
    assert capsys.readouterr().out == f"{path}: OK (system 'pipe': 2 components, 1 stream)\n"


def test_cli_validate_error_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, PIPE + "    - {from: src.out, to: sink.nope, buffer_size: x}\n")
    args = parse(["validate", str(path)])
    assert args.func(args) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == f"error: {path}: bindings[0].buffer_size: expected an integer or null, got 'x'\n"


def test_cli_set_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, PIPE + "    - {from: src.out, to: sink.in}\n")
    assert blueprint_cli.parse_overrides(["src.data_count=null", "src.fields={a: 1}", "a.b.c=x y"]) == {
        "src": {"data_count": None, "fields": {"a": 1}},
        "a.b": {"c": "x y"},
    }
    args = parse(["validate", str(path), "--set", "src.data_delay=-1"])
    assert args.func(args) == 1
    assert capsys.readouterr().err == "error: --set src.data_delay=-1: expected a number >= 0, got -1\n"


def test_cli_run(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    path = write(tmp_path, PIPE + "    - {from: src.out, to: sink.in}\n")
    args = parse(
        ["run", str(path), "--set", "sink.mode=file", "--set", f"sink.path={out}", "--loop", "asyncio"]
    )
    assert args.func(args) == 0
    assert len(out.read_text().splitlines()) == 5


# -- the component contract, as the runner reads it (fastws/component.py) -------------------------


class TwoPorts(ComposedComponent):
    INPUT_PORTS = ("a", "b")
    OUTPUT_PORTS = ("out",)

    async def process(self) -> None:
        await self.close_outputs()


class OwnProcess(ComposedComponent):
    async def process(self) -> None:  # reads its inputs its own way: READS_ALL_INPUTS inferred
        await self.close_outputs()


class OwnProcessOnePort(ComposedComponent):
    READS_ALL_INPUTS = False

    async def process(self) -> None:
        await self.close_outputs()


def _contract_system(to_type: str, ports: tuple[str, str], from_port: str = "output") -> dict[str, Any]:
    return {
        "system": {
            "name": "contract",
            "components": [
                {"name": "src", "type": "Source"},
                {"name": "src2", "type": "Source"},
                {"name": "x", "type": f"{__name__}:{to_type}"},
            ],
            "bindings": [
                {"from": f"src.{from_port}", "to": f"x.{ports[0]}"},
                {"from": "src2.output", "to": f"x.{ports[1]}"},
            ],
        }
    }


def test_runner_reads_declared_ports_and_reads_all_inputs() -> None:
    assert TwoPorts.reads_all_inputs() and OwnProcess.READS_ALL_INPUTS and not OwnProcessOnePort.READS_ALL_INPUTS
    System.from_dict(_contract_system("TwoPorts", ("a", "b")))
    System.from_dict(_contract_system("OwnProcess", ("p", "q")))
    with pytest.raises(BlueprintError) as info:
        System.from_dict(_contract_system("TwoPorts", ("a", "c")))
    assert info.value.errors == [
        f"<dict>: bindings[1].to: component 'x' ({__name__}:TwoPorts) has no input port 'c'; "
        "its input ports are: a, b"
    ]
    with pytest.raises(BlueprintError, match=r"'x' \(.*OwnProcessOnePort\) reads a single input port"):
        System.from_dict(_contract_system("OwnProcessOnePort", ("p", "q")))


def test_stream_processor_variants_declare_their_ports() -> None:
    from fastws.components import StreamProcessor
    from fastws.components.stream_processor import DeduplicatingProcessor, JoiningProcessor

    assert StreamProcessor.input_ports({"variant": "joining"}) == ("left", "right")
    assert StreamProcessor.input_ports({"variant": "windowing"}) is None
    assert not StreamProcessor.reads_all_inputs({"variant": "deduplication"})
    sp = StreamProcessor("j", {"variant": "joining"})
    assert type(sp) is JoiningProcessor and isinstance(sp, StreamProcessor)
    assert type(StreamProcessor("d", {"variant": "deduplication"})) is DeduplicatingProcessor


class HasAPortField(ComposedComponent):
    """A user component with an attribute named ``port`` that is not a listener."""

    port = 6379  # e.g. the port of a database it reads from


async def test_port_reads_the_contract_not_an_attribute_named_port() -> None:
    system = System.from_dict({"system": {"name": "p", "components": [
        {"name": "db", "type": "tests.test_blueprint:HasAPortField"},
        {"name": "ws", "type": "WebSocket", "config": {"host": "127.0.0.1", "port": 0}},
    ]}})
    with pytest.raises(ValueError, match="is the system started"):
        system.port()  # port 0 is not a bound port yet
    async with system:
        port = system.port()
        assert port == system["ws"].listening_port() != 0
        with pytest.raises(ValueError, match="no bound port"):
            system.port("db")
