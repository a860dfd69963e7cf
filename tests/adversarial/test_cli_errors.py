"""What ``fastws run`` and ``fastws serve`` print when something a user controls goes wrong:
one line naming the component or the address, exit status 1, no traceback."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import TIMEOUT, fastws_cli

pytestmark = pytest.mark.adversarial


async def fastws(*args: str, env_path: Path | None = None) -> tuple[int, str, str]:
    """``python -m fastws ARGS`` (bounded), with ``env_path`` first on PYTHONPATH if given."""
    env = {**os.environ}
    if env_path is not None:
        env["PYTHONPATH"] = f"{env_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return await fastws_cli(*args, env=env)


BROKEN = '''
from fastws.component import ComposedComponent


class InitFails(ComposedComponent):
    def __init__(self, name, config=None):
        raise RuntimeError("cannot open the widget")


class StartFails(ComposedComponent):
    async def start(self):
        raise ValueError("the widget is not plugged in")
'''


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        ("InitFails", "error: component 'w' (broken_mod:InitFails): __init__ failed: "
                      "RuntimeError: cannot open the widget"),
        ("StartFails", "error: component 'w' (broken_mod:StartFails): start() failed: "
                       "ValueError: the widget is not plugged in"),
    ],
)
async def test_component_that_raises_is_one_line(tmp_path: Path, cls: str, expected: str) -> None:
    (tmp_path / "broken_mod.py").write_text(BROKEN)
    bp = tmp_path / "system.yaml"
    bp.write_text(
        "system:\n  name: s\n  components:\n"
        "    - {name: ws, type: WebSocket, config: {host: 127.0.0.1, port: 0}}\n"
        f"    - {{name: w, type: 'broken_mod:{cls}'}}\n"
    )
    code, _, err = await fastws("--log-level", "warning", "run", str(bp), env_path=tmp_path)
    assert code == 1
    assert err.splitlines() == [expected], err


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


async def test_serve_port_in_use(busy_port: int) -> None:
    code, _, err = await fastws("serve", "--host", "127.0.0.1", "--port", str(busy_port))
    assert code == 1
    assert err == f"fastws: error: cannot listen on 127.0.0.1:{busy_port}: Address already in use (errno 98)\n"


async def test_run_port_in_use_names_the_component(tmp_path: Path, busy_port: int) -> None:
    bp = tmp_path / "system.yaml"
    bp.write_text(
        "system:\n  name: s\n  components:\n"
        f"    - {{name: feed, type: WebSocket, config: {{host: 127.0.0.1, port: {busy_port}}}}}\n"
    )
    code, _, err = await fastws("run", str(bp))
    assert code == 1
    assert err.splitlines()[-1] == (
        f"error: component 'feed' (WebSocket): start() failed: cannot listen on 127.0.0.1:{busy_port}: "
        "Address already in use (errno 98)"
    )
    assert "Traceback" not in err and "Errno" not in err


async def test_address_that_is_not_local() -> None:
    """uvloop reports it as ``[Errno None]``; fastws names the real reason, once."""
    code, _, err = await fastws("serve", "--host", "192.0.2.1", "--port", "0")  # TEST-NET-1
    assert code == 1
    assert err == "fastws: error: cannot listen on 192.0.2.1:0: Cannot assign requested address (errno 99)\n"


async def test_ipv6_any_address_is_printed_as_localhost() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "serve", "--host", "::", "--port", "0",
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(TIMEOUT * 2):
            line = (await proc.stderr.readline()).decode()
        assert line.startswith("fastws: serving on ws://localhost:"), line  # a browser cannot open [::]
        assert line.rstrip().endswith(", on every interface (::)"), line
        port = int(line.split("ws://localhost:")[1].split("/")[0])
        from websockets.asyncio.client import connect

        async with connect(f"ws://[::1]:{port}/", open_timeout=TIMEOUT) as ws:
            assert ws.protocol.state.name == "OPEN"
        proc.terminate()
        async with asyncio.timeout(TIMEOUT):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
