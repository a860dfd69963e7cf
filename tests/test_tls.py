"""wss:// with a certificate made at test time (trustme): fan-out, backlog, config errors."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl

import pytest
import trustme
from websockets.asyncio.client import connect

import fastws
from fastws.cli import _server_config, build_parser
from tests.utils import TIMEOUT, running_server, wait_for


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, tmp_path_factory):
    """(certfile, keyfile) for 127.0.0.1 and localhost, signed by ``ca``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    cert.private_key_pem.write_to_path(keyfile)
    return str(certfile), str(keyfile)


@pytest.fixture(scope="module")
def client_ctx(ca):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


def wss(server):
    return f"wss://127.0.0.1:{server.port}/"


async def test_config_ssl_serves_wss_and_fans_out(cert_files, client_ctx):
    certfile, keyfile = cert_files
    n_clients, n_messages = 10, 30
    async with running_server(ssl={"certfile": certfile, "keyfile": keyfile}) as server:
        clients = [await connect(wss(server), ssl=client_ctx) for _ in range(n_clients)]
        await wait_for(lambda: server.connection_count == n_clients)
        assert all(c.transport.is_secure for c in server.clients)
        for i in range(n_messages):
            assert server.broadcast({"seq": i}) == n_clients
            if i % 3 == 2:
                await asyncio.sleep(0)  # several items per turn, several turns
        for ws in clients:
            async with asyncio.timeout(TIMEOUT):
                got = [json.loads(await ws.recv())["seq"] for _ in range(n_messages)]
            assert got == list(range(n_messages))
            await ws.close()
        stats = server.stats()
        assert stats["deliveries"] == n_clients * n_messages
        assert stats["flushes"] == 10


async def test_ssl_context_from_python_and_large_frames_through_the_tls_backlog(cert_files, client_ctx):
    """Frames far bigger than a TLS record and the socket buffer: write_c queues the rest, in order."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert_files)
    async with running_server(ssl_context=ctx, max_queued_bytes=64 << 20) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel takes little at a time
        sock.connect(("127.0.0.1", server.port))
        async with connect(wss(server), sock=sock, ssl=client_ctx, server_hostname="127.0.0.1",
                           max_size=None, compression=None) as ws:  # uncompressed: the frames stay large
            await wait_for(lambda: server.connection_count == 1)
            sizes = [0, 125, 70_000, 1_000_000, 3, 2_500_000]
            for i, size in enumerate(sizes):
                server.broadcast(str(i % 10) * size)
            assert server.flush() == 1
            assert server.clients[0].write_buffer_size() > 0  # the TLS transport holds a backlog
            for i, size in enumerate(sizes):
                async with asyncio.timeout(TIMEOUT):
                    msg = await ws.recv()
                assert msg == str(i % 10) * size
            await wait_for(lambda: server.clients[0].write_buffer_size() == 0)


async def test_plain_client_on_a_tls_port_does_not_disturb_others(cert_files, client_ctx):
    certfile, keyfile = cert_files
    async with running_server(ssl={"certfile": certfile, "keyfile": keyfile}) as server:
        good = await connect(wss(server), ssl=client_ctx)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            rest = await reader.read()  # the TLS layer refuses plain text and closes
        assert b"101" not in rest
        writer.close()
        await writer.wait_closed()
        assert server.broadcast("still here") == 1
        async with asyncio.timeout(TIMEOUT):
            assert await good.recv() == "still here"
        await good.close()


async def test_health_over_https(cert_files, client_ctx):
    certfile, keyfile = cert_files
    async with running_server(ssl={"certfile": certfile, "keyfile": keyfile}) as server:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx,
                                                           server_hostname="127.0.0.1")
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = await reader.read()
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body)["status"] == "ok"


@pytest.mark.parametrize("which", ["certfile", "keyfile"])
async def test_missing_files_name_the_key(cert_files, tmp_path, which):
    certfile, keyfile = cert_files
    files = {"certfile": certfile, "keyfile": keyfile, which: str(tmp_path / "nope.pem")}
    server = fastws.Server(host="127.0.0.1", port=0, ssl=files)
    with pytest.raises(fastws.ConfigError, match=rf"config\.ssl\.{which}: no such file"):
        await server.start()
    assert not server.is_serving


async def test_key_that_does_not_match_names_certfile(ca, cert_files, tmp_path):
    other = ca.issue_cert("other.example")
    keyfile = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(keyfile)
    server = fastws.Server(host="127.0.0.1", port=0, ssl={"certfile": cert_files[0], "keyfile": str(keyfile)})
    with pytest.raises(fastws.ConfigError, match=r"config\.ssl\.certfile: cannot load"):
        await server.start()


def test_ssl_config_errors_name_the_key():
    with pytest.raises(fastws.ConfigError, match=r"config\.ssl\.cert: unknown field"):
        fastws.ServerConfig.from_dict({"ssl": {"cert": "x.pem"}})
    with pytest.raises(fastws.ConfigError, match=r"config\.ssl\.certfile: must name a PEM file"):
        fastws.ServerConfig.from_dict({"ssl": {"certfile": ""}})


def test_cli_flags_build_the_ssl_config():
    args = build_parser().parse_args(["serve", "--certfile", "c.pem", "--keyfile", "k.pem"])
    config = fastws.ServerConfig.from_dict(_server_config(args))
    assert config.ssl == fastws.config.SSLConfig(certfile="c.pem", keyfile="k.pem")
    args = build_parser().parse_args(["serve", "--keyfile", "k.pem"])
    with pytest.raises(fastws.ConfigError, match="options.certfile"):
        _server_config(args)


async def test_tls_handshake_timeouts_are_counted_and_closed_on_time(cert_files, client_ctx):
    """A client that never starts the TLS handshake, one that stops in the middle of it, and
    one that finishes TLS but never sends the upgrade: all three are closed after
    handshake_timeout and counted in handshake_timeouts; a good client is not disturbed."""
    import time

    from fastws.tls import backstop_timeout

    certfile, keyfile = cert_files
    timeout = 0.3
    async with running_server(ssl={"certfile": certfile, "keyfile": keyfile}, handshake_timeout=timeout) as server:
        good = await connect(wss(server), ssl=client_ctx)
        loop = asyncio.get_running_loop()
        silent = socket.create_connection(("127.0.0.1", server.port))
        partial = socket.create_connection(("127.0.0.1", server.port))
        partial.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        started = time.monotonic()
        _, tls_only = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ctx,
                                                    server_hostname="127.0.0.1")
        for sock in (silent, partial):
            sock.setblocking(False)
            async with asyncio.timeout(TIMEOUT):
                while True:
                    try:
                        if not await loop.sock_recv(sock, 4096):
                            break
                    except ConnectionResetError:
                        break
            sock.close()
        elapsed = time.monotonic() - started
        assert elapsed < backstop_timeout(timeout) - 0.3, elapsed  # fastws' deadline, not aiofastnet's
        await wait_for(lambda: server.stats()["handshake_timeouts"] == 3)
        tls_only.close()
        assert server.broadcast("still here") == 1
        async with asyncio.timeout(TIMEOUT):
            assert await good.recv() == "still here"
        await good.close()
        assert server.stats()["handshake_timeouts"] == 3


def _server_sockets_to(port: int) -> int:
    """Open descriptors of this process that are the server's end of a connection to ``port``."""
    import os

    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=int(fd))
        except OSError:
            continue
        try:
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM \
                    and s.getsockname()[1] == port and s.getpeername():
                count += 1
        except OSError:
            pass
        finally:
            s.detach()
    return count


async def test_tls_clients_that_never_upgrade_do_not_hold_descriptors(cert_files, client_ctx):
    """TLS done, no upgrade, socket kept open and silent: picows' graceful close would make the
    server wait ~30 s for the client's close_notify; fastws drops them after both deadlines."""
    certfile, keyfile = cert_files
    timeout = 0.3
    async with running_server(ssl={"certfile": certfile, "keyfile": keyfile}, handshake_timeout=timeout) as server:
        good = await connect(wss(server), ssl=client_ctx)

        def handshake_only() -> list[ssl.SSLSocket]:  # blocking TLS handshakes; then never read or write
            return [client_ctx.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                                           server_hostname="127.0.0.1") for _ in range(10)]

        silent = await asyncio.get_running_loop().run_in_executor(None, handshake_only)
        await wait_for(lambda: _server_sockets_to(server.port) == 11)
        await wait_for(lambda: server.stats()["handshake_timeouts"] == 10)
        async with asyncio.timeout(2 * timeout + 2.0):  # the TLS deadline, picows' deadline, the grace
            while _server_sockets_to(server.port) > 1:
                await asyncio.sleep(0.05)
        assert server.broadcast("still here") == 1
        async with asyncio.timeout(TIMEOUT):
            assert await good.recv() == "still here"
        await good.close()
        for sock in silent:
            sock.close()
