"""The built-in page (``page: true``) over real sockets, without a browser.

What the page does in a browser is tested in tests/test_browser.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import fastws
from fastws.cli import _server_config, build_parser
from fastws.config import ServerConfig
from fastws.page import page_bytes
from fastws.websocket import WebSocketComponent
from tests.utils import TIMEOUT, RawClient, running_server

STATIC = Path(fastws.__file__).parent / "static" / "dashboard.html"


async def http_get(port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET (no upgrade); the server closes after one response."""
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/html\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        finally:
            writer.close()
            await writer.wait_closed()
    return int(status_line.split()[1]), headers, body


async def test_page_off_by_default_root_asks_for_upgrade():
    assert ServerConfig().page is False and ServerConfig().page_path == "/"
    async with running_server() as server:
        status, headers, _ = await http_get(server.port)
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"


async def test_page_served_on_root():
    async with running_server(page=True) as server:
        status, headers, body = await http_get(server.port, "/")
        # query strings are ignored when routing (?url= is read by the page itself)
        status_q, _, body_q = await http_get(server.port, "/?max=50")
    assert status == 200 and status_q == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    assert "connect-src ws: wss:" in headers["content-security-policy"]
    assert body == body_q == STATIC.read_bytes() == page_bytes()
    text = body.decode("utf-8")
    assert text.lstrip().lower().startswith("<!doctype html>")
    # the elements the browser test and users rely on
    for element_id in ("state", "count", "messages", "charts", "url"):
        assert f'id="{element_id}"' in text
    # the URL follows the page's scheme
    assert 'location.protocol === "https:" ? "wss://" : "ws://"' in text


def test_page_is_self_contained():
    text = STATIC.read_text("utf-8")
    # nothing fetched from elsewhere: no external scripts, stylesheets, fonts or images
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)=["']?(https?:)?//""", text, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text, re.I)
    assert "<script src" not in text.lower()
    # data is shown as text, never parsed as HTML
    assert "innerHTML" not in text
    assert len(text) < 32 * 1024


async def test_page_and_websocket_share_the_path():
    async with running_server(page=True) as server:
        client = await RawClient.connect(server.port, "/")
        try:
            await asyncio.wait_for(_until(lambda: server.connection_count == 1), TIMEOUT)
            assert server.broadcast({"value": 1.5}) == 1
            opcode, payload = await client.read_frame()
            assert (opcode, payload) == (1, b'{"value":1.5}')
            status, _, _ = await http_get(server.port, "/")
            assert status == 200
        finally:
            client.close()


async def test_page_path():
    async with running_server(page=True, page_path="/live") as server:
        assert (await http_get(server.port, "/live"))[0] == 200
        assert (await http_get(server.port, "/"))[0] == 426
        assert (await http_get(server.port, "/other"))[0] == 404


async def test_a_route_added_before_start_wins():
    server = fastws.Server(host="127.0.0.1", port=0, page=True)
    server.add_route("/", lambda request: (200, {"Content-Type": "text/plain"}, b"mine"))
    await server.start()
    try:
        status, _, body = await http_get(server.port, "/")
    finally:
        await server.stop()
    assert (status, body) == (200, b"mine")


async def test_component_config_turns_the_page_on():
    comp = WebSocketComponent("ws", {"host": "127.0.0.1", "port": 0, "page": True})
    await comp.start()
    try:
        status, headers, _ = await http_get(comp.port, "/")
    finally:
        await comp.stop()
    assert status == 200 and headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"page": "yes"}, "config.page: expected a boolean, got 'yes'"),
        ({"page_path": "live"}, "config.page_path: must be a path starting with '/'"),
        ({"page_path": "/a?b"}, "config.page_path: must be a path starting with '/'"),
    ],
)
def test_page_config_errors(config, message):
    with pytest.raises(fastws.ConfigError, match=re.escape(message)):
        ServerConfig.from_dict(config)


def test_cli_page_flag():
    parser = build_parser()
    assert _server_config(parser.parse_args(["serve"]))["page"] is False
    args = parser.parse_args(["serve", "--page", "--port", "0"])
    config = ServerConfig.from_dict(_server_config(args))
    assert config.page is True and config.page_path == "/"


def test_example_dashboard_turns_the_page_on():
    from fastws.blueprint import load_blueprint

    example = Path(__file__).resolve().parent.parent / "examples" / "realtime_dashboard.yaml"
    (ws,) = [c for c in load_blueprint(example).system.components if c.type == "WebSocket"]
    assert ServerConfig.from_dict(ws.config).page is True


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.005)
