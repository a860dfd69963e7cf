"""Every fenced code block in README.md and docs/ is run, so that none can rot.

How each block is checked, by its language:

* ``python``: run as a script in a child process (cwd: a scratch directory holding a link to
  ``examples/``), exit status 0 within a timeout. Marked ``<!-- test: serve -->`` (the line
  right above the fence): it serves until stopped; a real client must receive a message
  from it, then SIGINT must stop it and the client must get close code 1001.
  Marked ``<!-- test: client -->``: a client; it runs against ``fastws run
  examples/realtime_dashboard.yaml`` and must print a metric it received.
* ``bash``/``console``: each command (``$ `` lines in ``console``) runs in ``bash -c`` with a
  ``fastws`` on PATH that runs the fastws this test imports. ``fastws serve``/``fastws run``
  commands are servers, checked like ``serve`` above (lines are fed to their standard input
  and to ``app.log``);
  other commands must exit 0. Not run: ``pip install`` (tests/test_packaging.py installs the
  package) and ``python -m pytest`` (the suite is what is running).
* ``html``/``javascript`` marked ``<!-- test: browser -->``: loaded in headless Chromium
  against the example dashboard; ``console.log`` must show a received metric. Every
  ``javascript`` block is also checked by ``node --check``.
* ``yaml``: parsed; a blueprint, a list of components or a server config mapping is wrapped
  into a blueprint as needed and must pass ``fastws validate``.
  Marked ``<!-- test: save NAME -->``: also written to NAME in the scratch directory in which
  the shell blocks of the same page run (``fastws run hot.yaml``).
* ``json``: parsed.
* ``<!-- test: file PATH -->`` (any language): the block is a verbatim excerpt of PATH, a file
  of the repository that has its own test (deploy/, Dockerfile).
* ``<!-- test: skip REASON -->``: not run (``systemctl``, ``docker``: nothing of the kind here).
* ``text``, or no language: prose (diagrams, program output), not run.

Ports: the docs use 8080 (and 9000); the test swaps them for a free port, and ``0.0.0.0``,
``localhost`` and the example broker host ``10.0.0.5`` for ``127.0.0.1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests import test_browser
from tests.utils import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
#: docs/upstream/ holds reports for other projects, quoting their source: not fastws' docs.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "upstream" not in p.parts)]
METRICS = ("cpu_percent", "memory_percent", "requests_per_second", "latency_ms")
PROSE = {"", "text"}
SHELL = {"bash", "sh", "shell", "console"}
LANGUAGES = PROSE | SHELL | {"python", "yaml", "yml", "json", "javascript", "js", "html"}
MARKERS = {"serve", "client", "browser", "skip", "file", "parse-only", "save"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<kind>[\w-]+)\s*(?P<arg>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    marker: str | None = None
    arg: str = ""

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, each with the ``<!-- test: ... -->`` line above it."""
    lines = page.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, fence = i, m["indent"], m["fence"]
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != fence:
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        assert i < len(lines), f"{page.relative_to(ROOT)}:{start + 1}: unclosed code block"
        marker = MARKER.match(lines[start - 1]) if start else None
        blocks.append(Block(page, start + 1, m["lang"].lower(), "\n".join(body) + "\n",
                            marker["kind"] if marker else None, marker["arg"] if marker else ""))
        i += 1
    return blocks


BLOCKS = [b for page in PAGES for b in extract(page)]


browser = test_browser.browser  # the headless Chromium fixture (skips, or fails with CI=true, without it)


def blocks(*langs: str, marker: str | None = None) -> Any:
    chosen = [b for b in BLOCKS if b.lang in langs and b.marker == marker]
    return pytest.mark.parametrize("block", chosen, ids=[b.id for b in chosen])


def test_every_block_is_checked() -> None:
    """A block in a language this test cannot run, or with an unknown marker, fails here."""
    assert len(BLOCKS) > 20
    for b in BLOCKS:
        assert b.marker is None or b.marker in MARKERS, (
            f"{b.id}: unknown marker <!-- test: {b.marker} -->; known: {sorted(MARKERS)}")
        if b.marker in ("skip", "file", "parse-only", "save"):
            assert b.arg, f"{b.id}: <!-- test: {b.marker} --> needs a reason or a path"
            continue
        assert b.lang in LANGUAGES, (
            f"{b.id}: this test cannot run a {b.lang!r} block; label it as one of {sorted(LANGUAGES)}, "
            "or mark it <!-- test: file PATH --> (an excerpt of a tested file) or <!-- test: skip REASON -->")
        if b.lang == "html":
            assert b.marker == "browser", f"{b.id}: an html block must be marked <!-- test: browser -->"


def test_skips_are_few() -> None:
    skipped = [b.id for b in BLOCKS if b.marker == "skip"]
    assert len(skipped) <= 8, skipped


# -- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def localize(text: str, port: int) -> str:
    """The block as the test runs it: a free port, loopback addresses only."""
    text = re.sub(r"(?<![\d.])(8080|9000)(?!\d)", str(port), text)
    return re.sub(r"0\.0\.0\.0|10\.0\.0\.5|\blocalhost\b", "127.0.0.1", text)


SHIM = '''\
"""`fastws` for the documentation test: this tree, on loopback and on the test's port."""
import os, runpy, sys

import yaml


def main():
    port = os.environ["FASTWS_DOC_PORT"]
    args = sys.argv[1:]
    command = next((i for i, a in enumerate(args) if a in ("serve", "run", "validate")), None)
    if command is not None and args[command] == "serve" and "--host" not in args:
        args += ["--host", "127.0.0.1"]
    if command is not None and args[command] == "run":
        path = next(a for a in args[command + 1:] if not a.startswith("-"))
        with open(path) as f:
            system = yaml.safe_load(f)["system"]
        servers = [c["name"] for c in system["components"] if c.get("type") == "WebSocket"]
        for i, name in enumerate(servers):
            args += ["--set", f"{name}.host=127.0.0.1", "--set", f"{name}.port={port if i == 0 else 0}"]
    sys.argv = ["fastws", *args]
    runpy.run_module("fastws", run_name="__main__")


if __name__ == "__main__":  # workers start with multiprocessing's spawn, which imports this file
    main()
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch cwd with ``examples/``, an ``app.log``, and ``fastws``/``python`` on PATH."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "app.log").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fastws_doc_shim.py").write_text(SHIM)
    (bin_dir / "fastws").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{bin_dir / "fastws_doc_shim.py"}" "$@"\n')
    (bin_dir / "fastws").chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    return tmp_path


def child_env(workdir: Path, port: int) -> dict[str, str]:
    """The children import the fastws this test imports (PYTHONPATH is inherited)."""
    return {
        **os.environ,
        "PATH": f"{workdir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "FASTWS_DOC_PORT": str(port),
    }


async def spawn(args: list[str], workdir: Path, port: int, **kw: Any) -> asyncio.subprocess.Process:
    """Start a child in a process group of its own (stopped as a whole by its id)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return await asyncio.create_subprocess_exec(
        *args, cwd=workdir, env=child_env(workdir, port), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


async def finish(proc: asyncio.subprocess.Process, sig: int = signal.SIGINT) -> bytes:
    """Signal the child's process group, wait for it (bounded); return what it printed."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        async with asyncio.timeout(3 * TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise AssertionError("the process did not stop within the timeout after SIGINT") from None
    return out or b""


async def first_message(port: int, proc: asyncio.subprocess.Process, workdir: Path) -> tuple[Any, Any]:
    """Connect to the server on ``port`` (retrying while it starts); return the client and a message.

    Lines go to the child's standard input and ``app.log`` until one arrives, for servers
    that broadcast what they read.
    """
    async with asyncio.timeout(6 * TIMEOUT):
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"exited with {proc.returncode} before serving")
            try:
                ws = await connect(f"ws://127.0.0.1:{port}/", open_timeout=TIMEOUT)
                break
            except OSError:
                await asyncio.sleep(0.1)
        n = 0
        while True:
            n += 1
            line = b'{"docs_test_line": %d}\n' % n  # JSON: servers with --topic-field take it too
            with open(workdir / "app.log", "ab") as log:
                log.write(line)
            if proc.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    proc.stdin.write(line)
                    await proc.stdin.drain()
            try:
                async with asyncio.timeout(0.3):
                    return ws, await ws.recv()
            except TimeoutError:
                continue


async def close_code(ws: Any) -> int | None:
    async with asyncio.timeout(3 * TIMEOUT):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None


async def check_server(args: list[str], workdir: Path, port: int, what: str) -> None:
    proc = await spawn(args, workdir, port, stdin=subprocess.PIPE)
    try:
        ws, message = await first_message(port, proc, workdir)
        assert message, what
        os.killpg(proc.pid, signal.SIGINT)
        assert await close_code(ws) == 1001, f"{what}: SIGINT did not close the client with 1001"
    finally:
        out = await finish(proc)
    assert b"Traceback" not in out or b"KeyboardInterrupt" in out, out.decode(errors="replace")


@contextlib.asynccontextmanager
async def dashboard(workdir: Path, port: int) -> AsyncIterator[None]:
    """``fastws run examples/realtime_dashboard.yaml`` on ``port``: endless metrics."""
    proc = await spawn(["fastws", "run", "examples/realtime_dashboard.yaml"], workdir, port)
    try:
        ws, _ = await first_message(port, proc, workdir)
        await ws.close()
        yield
    finally:
        await finish(proc)


# -- python ----------------------------------------------------------------------------------


@blocks("python")
async def test_python_block(block: Block, workdir: Path) -> None:
    port = free_port()
    script = workdir / "block.py"
    script.write_text(localize(block.text, port))
    proc = await spawn([sys.executable, str(script)], workdir, port)
    try:
        async with asyncio.timeout(6 * TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        await finish(proc, signal.SIGKILL)
        raise AssertionError(f"{block.id} did not finish; mark it <!-- test: serve --> if it serves") from None
    assert proc.returncode == 0, f"{block.id}:\n{out.decode(errors='replace')}"


@blocks("python", marker="serve")
async def test_python_server_block(block: Block, workdir: Path) -> None:
    port = free_port()
    script = workdir / "block.py"
    script.write_text(localize(block.text, port))
    await check_server([sys.executable, str(script)], workdir, port, block.id)


@blocks("python", marker="client")
async def test_python_client_block(block: Block, workdir: Path) -> None:
    port = free_port()
    script = workdir / "block.py"
    script.write_text(localize(block.text, port))
    async with dashboard(workdir, port):
        proc = await spawn([sys.executable, str(script)], workdir, port)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(3 * TIMEOUT):
                line = (await proc.stdout.readline()).decode()
            assert any(m in line for m in METRICS), f"{block.id} printed {line!r}"
        finally:
            await finish(proc)


# -- shell -----------------------------------------------------------------------------------


def commands(block: Block) -> Iterator[str]:
    """The commands of a shell block, without what the test does not run (see the docstring)."""
    lines = block.text.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + line
        else:
            joined.append(line)
    for line in joined:
        parts = [p.strip() for p in line.split("&&")]
        parts = [p for p in parts if p and not p.startswith("#")
                 and not re.match(r"(python3? -m )?pip3? install|python3? -m pytest", p)]
        if parts:
            yield " && ".join(parts)


def is_server(command: str) -> bool:
    return bool(re.search(r"\bfastws\s+(--\S+\s+\S+\s+)*(serve|run)\b", command)) and "--help" not in command


@blocks(*SHELL)
async def test_shell_block(block: Block, workdir: Path) -> None:
    for saved in BLOCKS:
        if saved.page == block.page and saved.marker == "save":
            (workdir / saved.arg).write_text(saved.text)
    ran = 0
    for command in commands(block):
        port = free_port()
        command = localize(command, port)
        ran += 1
        if is_server(command):
            await check_server(["bash", "-c", command], workdir, port, f"{block.id}: {command}")
            continue
        proc = await spawn(["bash", "-c", command], workdir, port)
        try:
            async with asyncio.timeout(6 * TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            await finish(proc, signal.SIGKILL)
            raise AssertionError(f"{block.id}: {command} did not finish") from None
        assert proc.returncode == 0, f"{block.id}: {command}\n{out.decode(errors='replace')}"
    if ran == 0:
        pytest.skip("only pip install / pytest commands (run by CI and tests/test_packaging.py)")


# -- yaml, json --------------------------------------------------------------------------------


def as_blueprint(data: Any) -> dict[str, Any]:
    """A blueprint for a YAML block: a blueprint, a list of components, or a server config."""
    if isinstance(data, dict) and "system" in data:
        return data
    if isinstance(data, list) and all(isinstance(c, dict) and {"name", "type"} <= set(c) for c in data):
        return {"system": {"name": "doc", "components": data}}
    if isinstance(data, dict):
        return {"system": {"name": "doc", "components": [{"name": "ws", "type": "WebSocket", "config": data}]}}
    raise AssertionError(f"not a blueprint, a list of components or a config mapping: {data!r}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("yaml", "yml") and b.marker in (None, "save")],
                         ids=[b.id for b in BLOCKS if b.lang in ("yaml", "yml") and b.marker in (None, "save")])
def test_yaml_block(block: Block, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fastws.cli import main

    monkeypatch.setenv("FASTWS_JWT_SECRET", "a-secret-for-the-docs-test-0123456789")
    monkeypatch.chdir(ROOT)  # paths in blueprints are relative to where fastws runs
    path = tmp_path / "block.yaml"
    path.write_text(yaml.safe_dump(as_blueprint(yaml.safe_load(block.text)), sort_keys=False))
    status = main(["validate", str(path)])
    assert status == 0, f"{block.id}: fastws validate says:\n{capsys.readouterr().err}"


@blocks("yaml", "yml", marker="parse-only")
def test_yaml_fragment_parses(block: Block) -> None:
    assert yaml.safe_load(block.text) is not None


@blocks("json")
def test_json_block(block: Block) -> None:
    json.loads(block.text)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.marker == "file"],
                         ids=[b.id for b in BLOCKS if b.marker == "file"])
def test_file_excerpt(block: Block) -> None:
    source = ROOT / block.arg
    assert source.is_file(), f"{block.id}: {block.arg} does not exist"
    assert block.text.strip() in source.read_text(), f"{block.id} is not an excerpt of {block.arg}"


# -- javascript, html --------------------------------------------------------------------------


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang in ("javascript", "js")],
                         ids=[b.id for b in BLOCKS if b.lang in ("javascript", "js")])
def test_javascript_syntax(block: Block, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "block.js"
    script.write_text(block.text)
    proc = subprocess.run([node, "--check", str(script)], capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert proc.returncode == 0, f"{block.id}: {proc.stderr}"


def html_page(block: Block, port: int) -> str:
    """The page the browser loads: console.log captured into ``window.logs`` first."""
    capture = ("<script>window.logs = []; const _log = console.log;"
               "console.log = (...a) => { window.logs.push(JSON.stringify(a)); _log(...a); };</script>\n")
    text = localize(block.text, port)
    if block.lang == "html":
        return capture + text
    return f'<!doctype html><meta charset="utf-8">{capture}<script>\n{text}\n</script>'


@pytest.mark.browser
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.marker == "browser"],
                         ids=[b.id for b in BLOCKS if b.marker == "browser"])
def test_browser_block(block: Block, browser: Any, tmp_path: Path) -> None:
    from tests.test_browser import run_example, serve_html, wait_until

    port = free_port()
    with run_example(port, tmp_path / "system.log"), serve_html(html_page(block, port).encode()) as url:
        try:
            browser.get(url)
            logs = wait_until(f"{block.id} to log a received metric", lambda: [
                line for line in browser.execute_script("return window.logs || []")
                if any(m in line for m in METRICS)])
            assert logs
        finally:
            browser.get("about:blank")


