"""Real browsers' upgrade requests, and the token lists RFC 6455 allows in Connection/Upgrade.

The browser requests are the header sets and orders these browsers send for
``new WebSocket(url)`` (Firefox with ``Connection: keep-alive, Upgrade`` as releases before
ESR 153 send it, Chromium, Safari), replayed over a raw socket: the server must answer 101
with the right ``Sec-WebSocket-Accept``, negotiate no extension (fastws has none), and the
client must then receive a broadcast.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket

import pytest

from tests.utils import TIMEOUT, RawClient, raw_http, running_server, wait_for

pytestmark = pytest.mark.adversarial

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

FIREFOX = """GET /prices HTTP/1.1
Host: 127.0.0.1:{port}
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0
Accept: */*
Accept-Language: en-US,en;q=0.5
Accept-Encoding: gzip, deflate, br, zstd
Sec-WebSocket-Version: 13
Origin: http://127.0.0.1:{port}
Sec-WebSocket-Extensions: permessage-deflate
Sec-WebSocket-Key: {key}
Connection: keep-alive, Upgrade
Sec-Fetch-Dest: empty
Sec-Fetch-Mode: websocket
Sec-Fetch-Site: same-origin
Pragma: no-cache
Cache-Control: no-cache
Upgrade: websocket
"""

FIREFOX_ESR_153 = FIREFOX.replace("Connection: keep-alive, Upgrade", "Connection: Upgrade").replace(
    "rv:128.0) Gecko/20100101 Firefox/128.0", "rv:153.0) Gecko/20100101 Firefox/153.0")

CHROMIUM = """GET /prices HTTP/1.1
Host: 127.0.0.1:{port}
Connection: Upgrade
Pragma: no-cache
Cache-Control: no-cache
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36
Upgrade: websocket
Origin: http://127.0.0.1:{port}
Sec-WebSocket-Version: 13
Accept-Encoding: gzip, deflate, br, zstd
Accept-Language: en-US,en;q=0.9
Sec-WebSocket-Key: {key}
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits
"""

SAFARI = """GET /prices HTTP/1.1
Host: 127.0.0.1:{port}
Origin: http://127.0.0.1:{port}
Sec-WebSocket-Key: {key}
Upgrade: websocket
Sec-WebSocket-Version: 13
Accept-Encoding: gzip, deflate
Connection: Upgrade
Pragma: no-cache
Cache-Control: no-cache
Sec-WebSocket-Extensions: permessage-deflate
User-Agent: Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15
Accept-Language: en-US,en;q=0.9
"""


async def upgrade(port: int, template: str) -> tuple[socket.socket, dict[str, str], bytes]:
    """Send ``template`` as the request; return the socket, the response headers and what followed."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = template.format(port=port, key=key).replace("\n", "\r\n") + "\r\n"
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    async with asyncio.timeout(TIMEOUT):
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    headers[":status"] = lines[0].split(" ")[1] if " " in lines[0] else ""
    expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    headers[":expected-accept"] = expected
    return sock, headers, rest


@pytest.mark.parametrize("browser", ["firefox", "firefox_esr_153", "chromium", "safari"])
async def test_browser_upgrade_requests_connect_and_receive(browser):
    template = {"firefox": FIREFOX, "firefox_esr_153": FIREFOX_ESR_153, "chromium": CHROMIUM, "safari": SAFARI}[browser]
    async with running_server() as server:
        sock, headers, rest = await upgrade(server.port, template)
        try:
            assert headers[":status"] == "101", headers
            assert headers["sec-websocket-accept"] == headers[":expected-accept"]
            assert headers["upgrade"].lower() == "websocket" and headers["connection"].lower() == "upgrade"
            # permessage-deflate (issue 11): every browser offers it; this short message still goes uncompressed
            assert headers["sec-websocket-extensions"] == "permessage-deflate; server_no_context_takeover"
            await wait_for(lambda: server.connection_count == 1)
            assert server.clients[0].path == "/prices"
            server.broadcast({"browser": browser})
            client = RawClient(sock, rest)
            assert await client.read_frame() == (0x1, b'{"browser":"%s"}' % browser.encode())
        finally:
            sock.close()
        await wait_for(lambda: server.connection_count == 0)
        assert not any(server.stats()["rejected"].values())  # every refusal reason at 0


# Connection and Upgrade as token lists: any order, any case, spaces or none, several lines.
ACCEPTED = {
    "keep-alive, Upgrade": "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n",
    "Upgrade, keep-alive": "Connection: Upgrade, keep-alive\r\nUpgrade: websocket\r\n",
    "lower case, no space": "connection: keep-alive,upgrade\r\nupgrade: websocket\r\n",
    "upper case": "CONNECTION: UPGRADE\r\nUPGRADE: WEBSOCKET\r\n",
    "mixed case values": "Connection: KeeP-AlivE ,  uPgRaDe\r\nUpgrade: WebSocket\r\n",
    "three tokens": "Connection: close, Upgrade, TE\r\nUpgrade: websocket\r\n",
    "two Connection lines": "Connection: keep-alive\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n",
    "Upgrade list": "Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n",
    "two Upgrade lines": "Connection: Upgrade\r\nUpgrade: h2c\r\nUpgrade: websocket\r\n",
    "tabs": "Connection:\tkeep-alive,\tUpgrade\r\nUpgrade:\twebsocket\r\n",
}


def request_with(port: int, connection_and_upgrade: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{connection_and_upgrade}"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


async def test_connection_and_upgrade_token_lists_are_accepted():
    async with running_server() as server:
        for what, lines in ACCEPTED.items():
            template = ("GET / HTTP/1.1\nHost: 127.0.0.1:{port}\n" + lines.replace("\r\n", "\n")
                        + "Sec-WebSocket-Key: {key}\nSec-WebSocket-Version: 13\n")
            sock, headers, rest = await upgrade(server.port, template)
            try:
                assert headers[":status"] == "101", (what, headers)
                assert headers["sec-websocket-accept"] == headers[":expected-accept"], what
                await wait_for(lambda: server.connection_count == 1)
                server.broadcast(what)
                assert await RawClient(sock, rest).read_frame() == (0x1, what.encode()), what
            finally:
                sock.close()
            await wait_for(lambda: server.connection_count == 0)


async def test_requests_that_do_not_ask_for_a_websocket_are_refused_and_others_served():
    async with running_server() as server:
        keeper = await RawClient.connect(server.port)
        try:
            await wait_for(lambda: server.connection_count == 1)
            cases = {
                # not an upgrade at all: plain GET of "/", answered 426 with Upgrade: websocket
                "keep-alive only": ("Connection: keep-alive\r\nUpgrade: websocket\r\n", 426),
                "no Connection": ("Upgrade: websocket\r\n", 426),
                "Upgrade as a substring": ("Connection: Upgraded, keep-alive\r\nUpgrade: websocket\r\n", 426),
                # an upgrade, but not to websocket: picows answers 400
                "Upgrade: h2c": ("Connection: Upgrade\r\nUpgrade: h2c\r\n", 400),
                "websocketx": ("Connection: Upgrade\r\nUpgrade: websocketx\r\n", 400),
                "no Upgrade": ("Connection: Upgrade\r\n", 400),
            }
            for what, (lines, status) in cases.items():
                got, headers, _ = await raw_http(server.port, request_with(server.port, lines))
                assert got == status, (what, got)
                if status == 426:
                    assert headers["upgrade"] == "websocket", what
            assert server.connection_count == 1
            server.broadcast("still here")
            assert await keeper.read_frame() == (0x1, b"still here")
        finally:
            keeper.close()


def test_header_tokens_and_accept_upgrade_on_a_multidict():
    from multidict import CIMultiDict

    from fastws.handshake import accept_upgrade, header_tokens

    h = CIMultiDict([("Connection", "keep-alive"), ("connection", " Upgrade ,"), ("Upgrade", "WebSocket")])
    assert header_tokens(h, "CONNECTION") == ["keep-alive", "upgrade"]
    assert accept_upgrade(h) is True
    assert h.getall("Connection") == ["Upgrade"] and h.getall("Upgrade") == ["websocket"]
    h = CIMultiDict([("Connection", "Upgrade"), ("Upgrade", "h2c")])
    assert accept_upgrade(h) is True and h["Upgrade"] == "h2c"  # left for picows to refuse
    assert accept_upgrade(CIMultiDict([("Connection", "keep-alive")])) is False
    assert accept_upgrade(CIMultiDict()) is False


# -- a real browser: headless Firefox driven over WebDriver BiDi ------------------------------


def _firefox() -> str | None:
    import shutil

    return shutil.which("firefox-esr") or shutil.which("firefox")


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(_firefox() is None, reason="firefox-esr is not installed (apt-get install firefox-esr)")
async def test_headless_firefox_connects_and_receives(tmp_path):
    """Firefox started with --remote-debugging-port speaks WebDriver BiDi, itself a WebSocket
    protocol: the websockets client drives it (session.new, browsingContext.navigate,
    script.evaluate); the page opens a WebSocket to fastws and returns the first message."""
    import json
    import subprocess

    from websockets.asyncio.client import connect

    seen: list[dict[str, str]] = []

    def record(request):  # a handshake check that admits everyone and keeps the headers it saw
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return None

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        bidi_port = s.getsockname()[1]
    browser = subprocess.Popen(
        [_firefox(), "--headless", "--no-remote", "--profile", str(tmp_path), f"--remote-debugging-port={bidi_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async with running_server(auth_check=record) as server:
            port = server.port
            server.add_route("/blank", lambda request: (200, {"Content-Type": "text/html; charset=utf-8"},
                                                        b"<!doctype html><title>fastws</title>"))
            async with asyncio.timeout(TIMEOUT * 6):
                while True:
                    try:
                        bidi = await connect(f"ws://127.0.0.1:{bidi_port}/session", max_size=None)
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
            ids = iter(range(1, 1000))

            async def call(method: str, params: dict) -> dict:
                n = next(ids)
                await bidi.send(json.dumps({"id": n, "method": method, "params": params}))
                async with asyncio.timeout(TIMEOUT * 4):
                    while True:
                        msg = json.loads(await bidi.recv())
                        if msg.get("id") == n:
                            assert msg["type"] == "success", msg
                            return msg["result"]

            try:
                await call("session.new", {"capabilities": {}})
                context = (await call("browsingContext.getTree", {}))["contexts"][0]["context"]
                await call("browsingContext.navigate", {"context": context, "wait": "complete",
                                                        "url": f"http://127.0.0.1:{server.port}/blank"})
                script = f"""new Promise((resolve, reject) => {{
                    const ws = new WebSocket("ws://127.0.0.1:{server.port}/firefox");
                    ws.onmessage = (e) => {{ resolve(e.data); ws.close(1000); }};
                    ws.onerror = () => reject(new Error("WebSocket error"));
                }})"""
                evaluate = asyncio.create_task(call("script.evaluate", {
                    "expression": script, "target": {"context": context}, "awaitPromise": True}))
                await wait_for(lambda: server.connection_count == 1 or evaluate.done(), TIMEOUT * 2)
                server.broadcast({"hello": "firefox"})
                result = await evaluate
                assert result["type"] == "success", json.dumps(result)[:2000]
                assert json.loads(result["result"]["value"]) == {"hello": "firefox"}
                await wait_for(lambda: server.connection_count == 0)
                assert server.stats()["disconnect_reasons"]["client_close"] == 1
            finally:
                await bidi.close()
        assert len(seen) == 1
        assert "upgrade" in seen[0]["connection"].lower()
        assert seen[0]["origin"] == f"http://127.0.0.1:{port}"
        assert seen[0]["user-agent"].startswith("Mozilla/5.0") and "Firefox/" in seen[0]["user-agent"]
    finally:
        browser.terminate()
        try:
            browser.wait(TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
