"""The command line, end to end in a spawned process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import fastws
from fastws.cli import NO_FLAG, _server_config, build_parser, main, server_flags
from fastws.config import ServerConfig
from tests.test_docs import struct_keys
from tests.utils import TIMEOUT, fastws_cli, raw_http, spawn_serve, until_received


async def test_serve_broadcasts_stdin_lines_and_stops_on_sigterm():
    proc, port = await spawn_serve()
    try:
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            async def write_line(text):
                proc.stdin.write(f"{text}\n".encode())
                await proc.stdin.drain()

            await until_received(write_line, ws, "ready")
            proc.stdin.write(b'{"level": "info", "msg": "one"}\nplain line two\n')
            await proc.stdin.drain()
            got = []
            async with asyncio.timeout(TIMEOUT):
                while len(got) < 2:
                    msg = await ws.recv()
                    if msg != "ready":
                        got.append(msg)
            assert got == ['{"level": "info", "msg": "one"}', "plain line two"]
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                async with asyncio.timeout(TIMEOUT):
                    while True:
                        await ws.recv()
            assert info.value.rcvd.code == 1001
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_keeps_serving_after_stdin_ends_and_stops_on_sigint():
    proc, port = await spawn_serve()
    try:
        proc.stdin.close()
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            assert ws.protocol.state.name == "OPEN"
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_help_lists_every_server_option(capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--max-connections", "--heartbeat-interval", "--heartbeat-timeout",
                 "--max-queued-bytes", "--slow-client-policy", "--max-message-size", "--exit-on-eof",
                 "--config", "--loop", "--log-level", *(f.flag for f in server_flags())):
        assert flag in out


# -- flags generated from ServerConfig ---------------------------------------------------------


def test_every_server_config_key_has_a_flag():
    keys = {k for k in struct_keys(ServerConfig) if k not in ("ssl", "auth")}
    assert {f.key for f in server_flags()} == keys - NO_FLAG
    for f in server_flags():
        assert f.help and f.flag.startswith("--")


def test_existing_flag_names_still_work():
    args = build_parser().parse_args([
        "serve", "--host", "::", "--port", "0", "--max-connections", "5", "--heartbeat-interval", "2",
        "--heartbeat-timeout", "off", "--max-queued-bytes", "8192", "--slow-client-policy", "DROP",
        "--max-message-size", "4096", "--handshake-timeout", "3", "--certfile", "c.pem", "--keyfile", "k.pem",
        "--auth-token", "t1", "--auth-token", "t2", "--jwt-secret", "x" * 16, "--jwt-audience", "aud",
        "--allowed-origin", "https://a.example", "--max-messages-per-second", "10", "--burst", "3",
        "--broadcast-rate-limit", "100", "--health-path", "off", "--metrics-path", "/m", "--metrics-port", "0",
        "--page", "--workers", "auto", "--backplane", "memory://x", "--backplane-channel", "c",
        # new, generated from the struct
        "--close-timeout", "1.5", "--backlog", "10", "--page-path", "/live", "--auth-leeway", "2",
        "--auth-query-param", "off",
    ])
    c = ServerConfig.from_dict(_server_config(args))
    assert (c.host, c.port, c.max_connections, c.heartbeat_interval, c.heartbeat_timeout) == ("::", 0, 5, 2.0, None)
    assert (c.max_queued_bytes, c.slow_client_policy, c.max_message_size, c.handshake_timeout) == (
        8192, "drop", 4096, 3.0)
    assert c.ssl is not None and (c.ssl.certfile, c.ssl.keyfile) == ("c.pem", "k.pem")
    assert c.auth is not None and c.auth.tokens == ("t1", "t2") and c.auth.allowed_origins == ("https://a.example",)
    assert (c.auth.jwt_audience, c.auth.leeway, c.auth.query_param) == ("aud", 2.0, None)
    assert (c.max_messages_per_second, c.burst, c.broadcast_rate_limit) == (10.0, 3, 100.0)
    assert (c.health_path, c.metrics_path, c.metrics_port, c.page, c.page_path) == (None, "/m", 0, True, "/live")
    assert (c.workers, c.backplane, c.backplane_channel, c.close_timeout, c.backlog) == (
        "auto", "memory://x", "c", 1.5, 10)


def test_no_flag_keeps_the_defaults():
    assert ServerConfig.from_dict(_server_config(build_parser().parse_args(["serve"]))) == ServerConfig()


# -- one process per test: the conventions a user sees -----------------------------------------


async def test_version():
    assert await fastws_cli("--version") == (0, f"fastws {fastws.__version__}\n", "")


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["serve", "--bogus"], "--bogus"),
        (["serve", "--port", "abc"], "--port: expected an integer, got 'abc'"),
        (["serve", "--port", "70000"], "--port: must be 1-65535"),
        (["serve", "--slow-client-policy", "nope"], "--slow-client-policy: expected 'disconnect' or 'drop'"),
        (["serve", "--workers", "many"], "--workers: expected an integer or 'auto'"),
        (["--log-level", "chatty", "serve"], "--log-level: expected one of DEBUG, INFO, WARNING, ERROR"),
        (["serve", "--keyfile", "k.pem"], "--keyfile needs --certfile"),
        (["serve", "--config", "/nonexistent.yaml"], "/nonexistent.yaml: cannot read the config file"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run"], "the following arguments are required: SYSTEM.yaml"),
        ([], "a command is required"),
    ],
)
async def test_bad_command_line_is_one_line_and_status_1(args, names):
    code, out, err = await fastws_cli(*args)
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert names in err and "Traceback" not in err


async def serve_until_sigterm(*args: str) -> tuple[int, str]:
    """``fastws ARGS`` (a serve command) with stdin /dev/null; once it listens, a client
    connects, then SIGTERM; returns (status, all of stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", *args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    err = ""
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            while not (m := re.search(r"serving on ws://127\.0\.0\.1:(\d+)/", err)):
                line = (await proc.stderr.readline()).decode()
                assert line, err
                err += line
        async with connect(f"ws://127.0.0.1:{m.group(1)}/", open_timeout=TIMEOUT):
            pass
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            err += (await proc.stderr.read()).decode()
            return await proc.wait(), err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    "args",
    [
        ["--log-level", "warning", "serve"],
        ["serve", "--log-level", "Warning"],
        ["--log-level", "debug", "serve", "--log-level", "WARNING"],  # the last one wins
    ],
)
async def test_log_level_any_case_before_or_after_the_command(args):
    code, err = await serve_until_sigterm(*args, "--host", "127.0.0.1", "--port", "0")
    assert code == 0
    assert " INFO " not in err and " DEBUG " not in err, err


async def test_serve_announces_itself_once():
    code, err = await serve_until_sigterm("--log-level", "info", "serve", "--host", "127.0.0.1", "--port", "0")
    assert code == 0
    port = re.search(r"127\.0\.0\.1:(\d+)", err).group(1)  # type: ignore[union-attr]
    assert err.count(f":{port}") == 1, err
    assert "standard input ended after 0 lines" in err


@pytest.mark.parametrize(("loop", "selector"), [("asyncio", True), ("uvloop", False)])
async def test_serve_loop(loop, selector):
    code, err = await serve_until_sigterm("--log-level", "debug", "serve", "--loop", loop,
                                          "--host", "127.0.0.1", "--port", "0")
    assert code == 0
    assert ("Using selector" in err) is selector  # asyncio's loop logs its selector at DEBUG


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
async def test_serve_config_file_and_flags_over_it(tmp_path: Path, suffix: str):
    settings = {"host": "127.0.0.1", "port": 0, "page": True, "page_path": "/from-file", "max_connections": 7}
    path = tmp_path / f"server{suffix}"
    path.write_text(json.dumps(settings) if suffix == ".json" else msgspec.yaml.encode(settings).decode())
    proc, port = await spawn_serve("--config", str(path), "--page-path", "/from-flag")
    try:
        status, _, body = await raw_http(port, b"GET /from-flag HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and b"<html" in body.lower()
        status, _, _ = await raw_http(port, b"GET /from-file HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 404
    finally:
        proc.kill()
        await proc.wait()


async def test_serve_config_file_takes_secrets_from_the_environment(tmp_path: Path):
    path = tmp_path / "server.yaml"
    path.write_text("host: 127.0.0.1\nport: 0\nauth: {tokens: ['${CLI_TEST_TOKEN}']}\n")
    os.environ["CLI_TEST_TOKEN"] = "s3cret-from-env"
    try:
        proc, port = await spawn_serve("--config", str(path))
    finally:
        del os.environ["CLI_TEST_TOKEN"]
    try:
        with pytest.raises(Exception, match="401"):
            async with connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT):
                pass
        async with connect(f"ws://127.0.0.1:{port}/?token=s3cret-from-env", open_timeout=TIMEOUT) as ws:
            assert ws.protocol.state.name == "OPEN"
    finally:
        proc.kill()
        await proc.wait()
    code, _, err = await fastws_cli("serve", "--config", str(path))
    assert (code, err) == (1, f"fastws: error: {path}: auth.tokens: the environment variable CLI_TEST_TOKEN "
                              "is not set\n")


async def test_serve_config_file_errors_name_the_file(tmp_path: Path):
    path = tmp_path / "server.yaml"
    path.write_text("port: 0\nprot: 1\nmax_connections: 0\n")
    code, _, err = await fastws_cli("serve", "--config", str(path))
    assert (code, err) == (1, f"fastws: error: {path}: prot: unknown key; known keys are: "
                              f"{', '.join(ServerConfig.keys())}; did you mean 'port'?\n")
    path.write_text("port: 0\nmax_connections: 0\n")
    code, _, err = await fastws_cli("serve", "--config", str(path))
    assert (code, err) == (1, f"fastws: error: {path}: max_connections: must be a positive integer, got 0\n")
    code, _, err = await fastws_cli("serve", "--config", str(path), "--max-connections", "-1")
    assert (code, err) == (1, "fastws: error: --max-connections: must be a positive integer, got -1\n")


# -- run and validate ---------------------------------------------------------------------------------

ENDLESS = """
system:
  name: live
  components:
    - {name: feed, type: Source, config: {data_count: null, data_delay: 0.05}}
    - {name: ws, type: WebSocket, config: {host: 127.0.0.1, port: 0, page: true}}
  bindings:
    - {from: feed.output, to: ws.input}
"""


async def test_run_prints_the_address_of_each_websocket_component(tmp_path: Path):
    bp = tmp_path / "live.yaml"
    bp.write_text(ENDLESS)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "run", str(bp), "--log-level", "warning",
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            line = (await proc.stderr.readline()).decode()
        m = re.fullmatch(r"fastws: ws: serving on ws://127\.0\.0\.1:(\d+)/, "
                         r"live page on http://127\.0\.0\.1:(\d+)/\n", line)
        assert m and m.group(1) == m.group(2), line
        async with connect(f"ws://127.0.0.1:{m.group(1)}/", open_timeout=TIMEOUT) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
            assert (await proc.stderr.read()) == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_validate_warns_about_unknown_keys_and_strict_refuses_them(tmp_path: Path):
    bp = tmp_path / "s.yaml"
    bp.write_text("system:\n  name: s\n  components:\n    - {name: s, type: Sink, config: {mode: log, mod: x, lvl: 2}}\n")
    ignored = "unknown key, ignored (Sink keys are: mode, level, path, keep_last); did you mean {!r}?"
    refused = "unknown key (--strict) (Sink keys are: mode, level, path, keep_last); did you mean {!r}?"
    code, out, err = await fastws_cli("validate", str(bp))
    assert code == 0
    assert err.splitlines() == [
        f"warning: {bp}: components[0].config.mod: {ignored.format('mode')}",
        f"warning: {bp}: components[0].config.lvl: {ignored.format('level')}",
    ]
    assert out == f"{bp}: OK (system 's': 1 component, 0 streams; 2 warnings)\n"
    code, out, err = await fastws_cli("validate", "--strict", str(bp))
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"error: {bp}: components[0].config.mod: {refused.format('mode')}",
        f"error: {bp}: components[0].config.lvl: {refused.format('level')}",
    ]
    # a bad --set value is blamed on the --set (every one of them); the warnings still show
    code, _, err = await fastws_cli("validate", str(bp), "--set", "s.keep_last=-1", "--set", "s.mode=nope")
    assert code == 1
    assert err.splitlines() == [
        f"warning: {bp}: components[0].config.mod: {ignored.format('mode')}",
        f"warning: {bp}: components[0].config.lvl: {ignored.format('level')}",
        "error: --set s.mode=nope: expected one of 'memory', 'log', 'file', got 'nope'",
        "error: --set s.keep_last=-1: expected an integer >= 0, got -1",
    ]


async def test_validate_reports_every_problem_with_bindings(tmp_path: Path):
    bp = tmp_path / "s.yaml"
    bp.write_text(
        "system:\n  name: s\n  components:\n"
        "    - {name: src, type: Source, config: {data_count: -1, dta_delay: 2, data_delay: x}}\n"
        "    - {name: ws, type: WebSocket, config: {port: 70000, max_connections: 0}}\n"
        "    - {name: out, type: Sink}\n"
        "  bindings:\n"
        "    - {from: src.output, to: nowhere.input}\n"
        "    - {from: out.output, to: ws.input}\n"
    )
    code, out, err = await fastws_cli("validate", str(bp))
    known = "generator, data_count, data_delay, start, metrics, seed, path, fields"
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        f"warning: {bp}: components[0].config.dta_delay: unknown key, ignored (Source keys are: {known})"
        "; did you mean 'data_delay'?",
        f"error: {bp}: components[0].config.data_count: expected an integer >= 0, got -1",
        f"error: {bp}: components[0].config.data_delay: expected a number, got 'x'",
        f"error: {bp}: components[1].config.port: must be 1-65535 (0 picks a free port), got 70000",
        f"error: {bp}: components[1].config.max_connections: must be a positive integer, got 0",
        f"error: {bp}: bindings[0].to: no component named 'nowhere'; components are: src, ws, out",
        f"error: {bp}: bindings[1].from: component 'out' (Sink) has no output ports",
    ]


@pytest.mark.parametrize("value", ["[", "{a: 1", "'unterminated"])
async def test_set_with_invalid_yaml_is_an_error(tmp_path: Path, value: str):
    bp = tmp_path / "s.yaml"
    bp.write_text(ENDLESS)
    code, _, err = await fastws_cli("validate", str(bp), "--set", f"feed.start={value}")
    assert code == 1
    assert err.startswith(f"error: --set feed.start={value}: VALUE is not valid YAML") and err.count("\n") == 1


async def test_plurals(tmp_path: Path):
    bp = tmp_path / "one.yaml"
    bp.write_text("system:\n  name: one\n  components:\n    - {name: a, type: Source, config: {data_count: 1}}\n"
                  "    - {name: b, type: Sink}\n  bindings:\n    - {from: a.output, to: b.input}\n")
    assert (await fastws_cli("validate", str(bp)))[1] == f"{bp}: OK (system 'one': 2 components, 1 stream)\n"
    r, w = os.pipe()
    os.write(w, b"just one\n")
    os.close(w)
    try:
        code, _, err = await fastws_cli("--log-level", "info", "serve", "--host", "127.0.0.1", "--port", "0",
                                        "--exit-on-eof", stdin=r)
    finally:
        os.close(r)
    assert code == 0
    assert "standard input ended after 1 line\n" in err


async def test_run_log_counts_in_english(tmp_path: Path):
    """``fastws run`` announces "1 component, 1 binding", not "1 components, 1 bindings"."""
    bp = tmp_path / "one.yaml"
    bp.write_text("system:\n  name: one\n  components:\n    - {name: a, type: Source, config: {data_count: 1, data_delay: 0}}\n"
                  "    - {name: b, type: Sink}\n  bindings:\n    - {from: a.output, to: b.input}\n")
    code, _, err = await fastws_cli("--log-level", "info", "run", str(bp))
    assert code == 0, err
    assert "system 'one' started: 2 components, 1 binding\n" in err, err
    bp.write_text("system:\n  name: one\n  components:\n    - {name: a, type: Source, config: {data_count: 1, data_delay: 0}}\n")
    code, _, err = await fastws_cli("--log-level", "info", "run", str(bp))
    assert code == 0, err
    assert "system 'one' started: 1 component, 0 bindings\n" in err, err
