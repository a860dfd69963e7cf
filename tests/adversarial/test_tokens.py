"""Malformed tokens at the handshake, over real sockets: always 401 ``invalid_token`` (never a
500 with Python's error text), each counted, logged at most once a second, and the clients
already connected keep being served."""

from __future__ import annotations

import logging
import random
import time
from urllib.parse import quote

import pytest

from fastws.auth import encode_jwt
from tests.test_auth import MALFORMED_TOKENS, SECRET
from tests.utils import RawClient, raw_http, running_server, upgrade_request, wait_for

pytestmark = pytest.mark.adversarial


async def status_of(port: int, path: str = "/", headers: str = "") -> tuple[int, bytes]:
    status, _, body = await raw_http(port, upgrade_request(port, path, headers))
    return status, body


async def test_malformed_jwts_are_401_counted_logged_once_and_others_served(caplog):
    auth = {"tokens": ["static-token"], "jwt_secret": SECRET, "jwt_audience": "feeds"}
    async with running_server(auth=auth) as server:
        keeper = await RawClient.connect(server.port, headers="Authorization: Bearer static-token\r\n")
        try:
            await wait_for(lambda: server.connection_count == 1)
            sent = too_large = 0
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="fastws.auth"):
                for what, token in MALFORMED_TOKENS.items():
                    # as a query parameter (any bytes, percent-encoded) ...
                    path = "/?token=" + quote(token.encode("utf-8", "surrogatepass"))
                    if len(path) > 16 * 1024:  # over picows' request limit: dropped, counted apart
                        with pytest.raises(ConnectionError):
                            await status_of(server.port, path)
                        too_large += 1
                        continue
                    got = await status_of(server.port, path)
                    assert got == (401, b"401 invalid_token"), (what, got)
                    sent += 1
                    # ... and in the Authorization header when it is a valid header value
                    if token.isascii() and token.isprintable() and len(token) < 12000:
                        got = await status_of(server.port, headers=f"Authorization: Bearer {token}\r\n")
                        assert got == (401, b"401 invalid_token"), (what, got)
                        sent += 1
            rejected = server.stats()["rejected"]
            assert rejected["invalid_token"] == sent
            assert rejected.get("auth_check_error", 0) == 0
            assert too_large >= 1 and rejected["request_too_large"] == too_large
            elapsed = time.monotonic() - started
            lines = [r for r in caplog.records if r.name == "fastws.auth"]
            # one reason (invalid_token): at most one line a second, each with the count since the last
            assert 1 <= len(lines) <= 1 + int(elapsed), [r.getMessage() for r in lines]
            assert "invalid_token" in lines[0].getMessage()
            # everyone else is still served
            assert server.broadcast("still here") == 1
            assert await keeper.read_frame() == (0x1, b"still here")
        finally:
            keeper.close()


async def test_non_ascii_bytes_in_the_authorization_header():
    """Raw bytes >= 0x80 in the header line: refused by picows (400) or by fastws (401), never 500."""
    async with running_server(auth={"jwt_secret": SECRET}) as server:
        for raw in (b"Authorization: Bearer a.b.sig\xe9\xe9\r\n", b"Authorization: Bearer \xff\xfe.\x80.\xc3\r\n",
                    b"Authorization: Bearer " + b"\xe9" * 3000 + b"\r\n"):
            request = upgrade_request(server.port).replace(b"\r\n\r\n", b"\r\n" + raw + b"\r\n")
            status, _, body = await raw_http(server.port, request)
            assert status in (400, 401), (raw[:40], status, body)
            assert status != 500
            if status == 401:
                assert body == b"401 invalid_token"


async def test_random_tokens_over_the_socket_are_refused():
    """A bounded fuzz over real sockets: 150 random tokens, as query parameters."""
    rng = random.Random(1414)
    valid = encode_jwt({"sub": "x", "exp": time.time() + 600}, SECRET)
    async with running_server(auth={"jwt_secret": SECRET}) as server:
        for i in range(150):
            if i % 2:
                token = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
            else:
                chars = bytearray(valid.encode())
                for _ in range(rng.randrange(1, 6)):
                    at = rng.randrange(len(chars))
                    chars[at] = (chars[at] + rng.randrange(1, 256)) % 256  # always a different byte
                token = bytes(chars)
            status, body = await status_of(server.port, "/?token=" + quote(token))
            assert status == 401 and body in (b"401 invalid_token", b"401 token_expired"), (token, status, body)
        assert server.stats()["rejected"]["invalid_token"] + server.stats()["rejected"]["token_expired"] == 150
