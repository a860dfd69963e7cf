"""Authentication and authorization at the handshake: tokens, HS256 JWTs, Origin, custom checks."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
from websockets.asyncio.client import connect

import fastws
from fastws.auth import TokenError, decode_jwt, encode_jwt
from fastws.cli import _server_config, build_parser
from fastws.topics import REFUSAL_REASONS
from tests.utils import TIMEOUT, RawClient, raw_http, running_server, upgrade_request, url, wait_for

SECRET = "s3cret-s3cret-s3cret"


async def refused(server, path="/", headers=""):
    """Attempt an upgrade; return (status, body) of the refusal (asserts the socket was closed, no 101)."""
    status, _, body = await raw_http(server.port, upgrade_request(server.port, path, headers))
    assert status != 101
    return status, body


async def accepted(server, path="/", headers=""):
    """Open a WebSocket and check that it receives a broadcast; close it."""
    before = server.connection_count
    raw = await RawClient.connect(server.port, path=path, headers=headers)
    try:
        await wait_for(lambda: server.connection_count == before + 1)
        server.broadcast("hi")
        opcode, payload = await raw.read_frame()
        assert (opcode, payload) == (0x1, b"hi")
    finally:
        raw.close()
    await wait_for(lambda: server.connection_count == before)


async def test_static_tokens_header_and_query_param():
    async with running_server(auth={"tokens": ["alpha", "beta"]}) as server:
        await accepted(server, headers="Authorization: Bearer alpha\r\n")
        await accepted(server, headers="authorization: bearer beta\r\n")
        await accepted(server, path="/feed?x=1&token=beta")
        assert await refused(server) == (401, b"401 missing_token")
        assert await refused(server, headers="Authorization: Basic YWxwaGE=\r\n") == (401, b"401 missing_token")
        assert (await refused(server, headers="Authorization: Bearer alph\r\n"))[0] == 401
        assert (await refused(server, path="/?token=gamma"))[0] == 401
        stats = server.stats()
        assert stats["rejected"] == {"max_connections": 0, "missing_token": 2, "invalid_token": 2,
                                     **dict.fromkeys(REFUSAL_REASONS, 0)}
        assert stats["connections_total"] == 3
        assert stats["connections"] == 0


async def test_query_param_can_be_turned_off_or_renamed():
    async with running_server(auth={"tokens": ["alpha"], "query_param": None}) as server:
        assert (await refused(server, path="/?token=alpha"))[0] == 401
        await accepted(server, headers="Authorization: Bearer alpha\r\n")
    async with running_server(auth={"tokens": ["alpha"], "query_param": "key"}) as server:
        await accepted(server, path="/?key=alpha")


async def test_jwt_valid_expired_leeway_audience_and_forged():
    now = time.time()
    async with running_server(auth={"jwt_secret": SECRET, "jwt_audience": "feeds", "leeway": 30}) as server:
        ok = encode_jwt({"sub": "ann", "exp": now + 60, "aud": "feeds"}, SECRET)
        await accepted(server, headers=f"Authorization: Bearer {ok}\r\n")
        await accepted(server, path=f"/?token={ok}")
        in_leeway = encode_jwt({"exp": now - 10, "aud": ["x", "feeds"]}, SECRET)
        await accepted(server, path=f"/?token={in_leeway}")
        expired = encode_jwt({"exp": now - 60, "aud": "feeds"}, SECRET)
        assert await refused(server, path=f"/?token={expired}") == (401, b"401 token_expired")
        cases = {
            "wrong audience": encode_jwt({"exp": now + 60, "aud": "other"}, SECRET),
            "no audience": encode_jwt({"exp": now + 60}, SECRET),
            "other secret": encode_jwt({"exp": now + 60, "aud": "feeds"}, "another-secret-123456"),
            "not yet valid": encode_jwt({"nbf": now + 3600, "aud": "feeds"}, SECRET),
            "alg none": _unsigned({"aud": "feeds", "exp": now + 60}),
            "alg HS512 header": encode_jwt({"aud": "feeds", "exp": now + 60}, SECRET, headers={"alg": "HS512"}),
            "garbage": "not.a.jwt",
        }
        for what, token in cases.items():
            assert await refused(server, path=f"/?token={token}") == (401, b"401 invalid_token"), what
        rejected = server.stats()["rejected"]
        assert rejected["token_expired"] == 1
        assert rejected["invalid_token"] == len(cases)
        assert rejected["missing_token"] == 0


def _unsigned(claims):
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


async def test_tokens_and_jwt_together():
    async with running_server(auth={"tokens": ["alpha"], "jwt_secret": SECRET}) as server:
        await accepted(server, path="/?token=alpha")
        await accepted(server, path=f"/?token={encode_jwt({'sub': 'x', 'exp': time.time() + 60}, SECRET)}")
        assert (await refused(server, path="/?token=beta"))[0] == 401


async def test_require_exp_is_on_by_default_and_can_be_turned_off(caplog):
    forever = encode_jwt({"sub": "x"}, SECRET)
    async with running_server(auth={"jwt_secret": SECRET}) as server:
        assert server.config.auth.require_exp is True
        with caplog.at_level("WARNING", logger="fastws.auth"):
            assert await refused(server, path=f"/?token={forever}") == (401, b"401 invalid_token")
        assert server.stats()["rejected"]["invalid_token"] == 1
        assert "exp is required (auth.require_exp)" in caplog.text
        await accepted(server, path=f"/?token={encode_jwt({'sub': 'x', 'exp': time.time() + 60}, SECRET)}")
    async with running_server(auth={"jwt_secret": SECRET, "require_exp": False}) as server:
        await accepted(server, path=f"/?token={forever}")


async def test_origin_allow_list():
    origins = ["https://app.example.com", "http://localhost:3000"]
    async with running_server(auth={"allowed_origins": origins}) as server:
        await accepted(server, headers="Origin: https://app.example.com\r\n")
        await accepted(server, headers="Origin: HTTP://LOCALHOST:3000\r\n")  # scheme and host are case-insensitive
        assert await refused(server, headers="Origin: https://evil.example\r\n") == (403, b"403 origin_not_allowed")
        assert (await refused(server))[0] == 403  # no Origin: not a listed browser page
        assert server.stats()["rejected"]["origin_not_allowed"] == 2
    async with running_server(auth={"allowed_origins": ["https://app.example.com", None]}) as server:
        await accepted(server)  # null in the list: clients without an Origin header are let in
        assert (await refused(server, headers="Origin: https://evil.example\r\n"))[0] == 403


async def test_origin_is_checked_before_the_token():
    async with running_server(auth={"tokens": ["alpha"], "allowed_origins": ["https://a.example"]}) as server:
        assert (await refused(server, path="/?token=alpha", headers="Origin: https://b.example\r\n"))[0] == 403
        assert (await refused(server, headers="Origin: https://a.example\r\n"))[0] == 401
        await accepted(server, path="/?token=alpha", headers="Origin: https://a.example\r\n")


async def test_pluggable_check_refuses_counts_and_survives_exceptions(caplog):
    seen = []

    def check(request):
        seen.append(request.path)
        if request.path.startswith(b"/admin"):
            return 403, "admin_only"
        if request.path.startswith(b"/boom"):
            raise RuntimeError("bug in the check")
        return None

    async with running_server(auth_check=check, auth={"tokens": ["alpha"]}) as server:
        async with connect(url(server) + "?token=alpha") as ws:
            await wait_for(lambda: server.connection_count == 1)
            assert await refused(server, path="/admin?token=alpha") == (403, b"403 admin_only")
            assert await refused(server, path="/boom?token=alpha") == (500, b"500 auth_check_error")
            assert (await refused(server, path="/admin"))[0] == 401  # the token check runs first
            server.broadcast("ok")
            async with asyncio.timeout(TIMEOUT):
                assert await ws.recv() == "ok"
        rejected = server.stats()["rejected"]
        assert (rejected["admin_only"], rejected["auth_check_error"], rejected["missing_token"]) == (1, 1, 1)
        assert seen == [b"/?token=alpha", b"/admin?token=alpha", b"/boom?token=alpha"]
        assert any("auth_check raised" in r.getMessage() for r in caplog.records)


async def test_health_and_metrics_need_no_token():
    async with running_server(auth={"tokens": ["alpha"]}) as server:
        status, _, body = await raw_http(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and json.loads(body)["status"] == "ok"
        await refused(server)
        status, _, body = await raw_http(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert 'fastws_connections_rejected_total{reason="missing_token"} 1\n' in body.decode()


# -- JWT unit tests --------------------------------------------------------------------------


def test_decode_jwt_claims_and_errors():
    token = encode_jwt({"sub": "ann", "exp": 1000, "nbf": 900}, SECRET)
    assert decode_jwt(token, SECRET, now=950)["sub"] == "ann"
    with pytest.raises(TokenError) as info:
        decode_jwt(token, SECRET, now=1000)
    assert info.value.reason == "token_expired"
    assert decode_jwt(token, SECRET, now=1004, leeway=5)["sub"] == "ann"
    with pytest.raises(TokenError, match="not valid yet"):
        decode_jwt(token, SECRET, now=899)
    head, body, sig = token.split(".")
    with pytest.raises(TokenError, match="bad signature"):
        decode_jwt(f"{head}.{body}.{sig[:-2]}AA", SECRET, now=950)
    for bad in ("", "a.b", "a.b.c.d", "!!.!!.!!", f"{head}.{body}."):
        with pytest.raises(TokenError) as info:
            decode_jwt(bad, SECRET, now=950)
        assert info.value.reason == "invalid_token"
    with pytest.raises(TokenError, match="exp is not a number"):
        decode_jwt(encode_jwt({"exp": "soon"}, SECRET), SECRET)
    no_exp = encode_jwt({"sub": "ann"}, SECRET)
    assert decode_jwt(no_exp, SECRET)["sub"] == "ann"
    with pytest.raises(TokenError, match="exp is required"):
        decode_jwt(no_exp, SECRET, require_exp=True)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _signed_raw(header: bytes, claims: bytes) -> str:
    """A correctly signed token whose header and claims are these exact bytes."""
    import hashlib
    import hmac

    signing_input = f"{_b64(header)}.{_b64(claims)}"
    return signing_input + "." + _b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())


MALFORMED_TOKENS = {
    "header of 5,000 [": f"{_b64(b'[' * 5000)}.{_b64(b'{}')}.AAAA",
    "claims of 5,000 [ (signed)": _signed_raw(b'{"alg":"HS256"}', b"[" * 5000),
    "claims of 100 nested objects (signed)": _signed_raw(b'{"alg":"HS256"}', b'{"a":' * 100 + b"1" + b"}" * 100),
    "non-ASCII signature": f"{_b64(b'{}')}.{_b64(b'{}')}.sig\u00e9\u00e9",
    "non-ASCII header": f"h\u00e9ader.{_b64(b'{}')}.AAAA",
    "lone surrogate": "a.b.\udcff",
    "NUL bytes": "a\x00.b\x00.c\x00",
    "header not UTF-8": _b64(bytes([0xFF, 0xFE, 0x7B])) + "." + _b64(b"{}") + ".AAAA",
    "header is a list": _signed_raw(b'["HS256"]', b"{}"),
    "alg is a dict": _signed_raw(b'{"alg":{"x":1}}', b"{}"),
    "exp NaN (signed)": _signed_raw(b'{"alg":"HS256"}', b'{"exp":NaN}'),
    "exp a huge int (signed)": _signed_raw(b'{"alg":"HS256"}', b'{"exp":' + b"9" * 4000 + b"}"),
    "aud a dict (signed)": _signed_raw(b'{"alg":"HS256"}', b'{"exp":9999999999,"aud":{"a":1}}'),
    "padding": f"{_b64(b'{}')}==.{_b64(b'{}')}.AAAA",
    "20,000 dots": "." * 20000,
    "one huge segment": "A" * 9000 + ".A.A",
}


def test_malformed_jwts_are_invalid_token_never_an_exception():
    from fastws.auth import Authenticator
    from fastws.config import AuthConfig

    auth = Authenticator(AuthConfig(jwt_secret=SECRET, jwt_audience="feeds"))
    for what, token in MALFORMED_TOKENS.items():
        assert auth.check_token(token) == (401, "invalid_token"), what
        with pytest.raises(TokenError) as info:
            decode_jwt(token, SECRET, audience="feeds", require_exp=True)
        assert info.value.reason == "invalid_token", what


def test_random_bytes_as_jwts_are_refused_without_an_exception():
    """A bounded fuzz: 3,000 tokens of random bytes, and random mutations of a valid token."""
    import random

    from fastws.auth import Authenticator
    from fastws.config import AuthConfig

    rng = random.Random(14)
    auth = Authenticator(AuthConfig(jwt_secret=SECRET))
    valid = encode_jwt({"sub": "ann", "exp": time.time() + 3600}, SECRET)
    alphabet = "AZaz09-_.=+/[]{}\"\\\u00e9\x00 "
    for i in range(3000):
        if i % 3 == 0:
            token = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).decode("latin-1")
        elif i % 3 == 1:
            token = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
        else:
            chars = list(valid)
            for _ in range(rng.randrange(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            token = "".join(chars)
        refusal = auth.check_token(token)
        assert refusal in ((401, "invalid_token"), (401, "token_expired"), None), token
        if refusal is None:  # only a "mutation" that wrote back the same characters
            assert token == valid


def test_auth_config_errors_name_the_key():
    with pytest.raises(fastws.ConfigError, match=r"config\.auth\.jwt_secret: must be at least 16"):
        fastws.ServerConfig.from_dict({"auth": {"jwt_secret": "short"}})
    with pytest.raises(fastws.ConfigError, match=r"config\.auth\.token: unknown field"):
        fastws.ServerConfig.from_dict({"auth": {"token": "x"}})
    with pytest.raises(fastws.ConfigError, match=r"config\.auth\.tokens\[0\]: expected a string"):
        fastws.ServerConfig.from_dict({"auth": {"tokens": [1]}})
    with pytest.raises(fastws.ConfigError, match=r"config\.auth: set tokens, jwt_secret or allowed_origins"):
        fastws.ServerConfig.from_dict({"auth": {}})


def test_cli_auth_flags(monkeypatch):
    monkeypatch.setenv("FASTWS_AUTH_TOKENS", "t3, t4")
    monkeypatch.delenv("FASTWS_JWT_SECRET", raising=False)
    args = build_parser().parse_args([
        "serve", "--auth-token", "t1", "--auth-token", "t2", "--jwt-secret", SECRET,
        "--jwt-audience", "feeds", "--allowed-origin", "https://a.example",
    ])
    auth = fastws.ServerConfig.from_dict(_server_config(args)).auth
    assert auth.tokens == ("t1", "t2", "t3", "t4")
    assert (auth.jwt_secret, auth.jwt_audience, auth.allowed_origins) == (SECRET, "feeds", ("https://a.example",))
    monkeypatch.delenv("FASTWS_AUTH_TOKENS")
    assert fastws.ServerConfig.from_dict(_server_config(build_parser().parse_args(["serve"]))).auth is None


def test_a_signature_in_non_canonical_base64_is_refused():
    """A 32-byte HMAC is 43 base64url characters; the last carries 2 unused bits. A decoder
    that ignores them takes 4 spellings of one signature (tests/adversarial/test_tokens'
    fuzz then got a 101 now and then); only the canonical one is the token."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for sub in range(8):  # tokens whose signatures end in different characters
        token = encode_jwt({"sub": str(sub), "exp": time.time() + 600}, SECRET)
        assert decode_jwt(token, SECRET)["sub"] == str(sub)
        last = alphabet.index(token[-1])
        for variant in (alphabet[(last & ~3) | low] for low in range(4) if low != last & 3):
            with pytest.raises(TokenError, match="bad signature"):
                decode_jwt(token[:-1] + variant, SECRET)
