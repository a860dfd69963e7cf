"""Authentication and authorization at the WebSocket handshake (opt-in).

Everything here runs in the upgrade request handler, before the ``101``: a refused
client gets an HTTP error response (401 or 403) and no WebSocket. Each refusal is
counted in ``Server.stats()["rejected"][reason]`` and in the ``/metrics`` output.

* **Static bearer tokens** (``auth.tokens``), compared in constant time.
* **HS256 JWTs** (``auth.jwt_secret``): signature, ``exp`` and ``nbf`` (with
  ``auth.leeway`` seconds of clock skew), ``aud`` when ``auth.jwt_audience`` is set.
  Only ``alg: HS256`` is accepted (never ``none``). Standard library only.
* The token comes from ``Authorization: Bearer <token>`` or, when
  ``auth.query_param`` is set (default ``token``), from ``?token=<token>`` (browsers
  cannot set headers on a WebSocket).
* **Origin allow-list** (``auth.allowed_origins``): the ``Origin`` header must be in
  it (403 otherwise); ``null`` in the list admits clients that send no ``Origin``.
* **Pluggable check**: ``Server(auth_check=fn)``, ``fn(request)`` returns ``None``
  (let in) or ``(status, reason)`` (refuse).

Refusal reasons: ``origin_not_allowed`` (403), ``missing_token``, ``invalid_token``,
``token_expired`` (401), ``auth_check_error`` (500, the pluggable check raised).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from .config import AuthConfig
from .http_types import HandshakeCheck, Refusal

__all__ = ["Authenticator", "TokenError", "encode_jwt", "decode_jwt", "handshake_checks"]

logger = logging.getLogger("fastws.auth")

MISSING_TOKEN = (401, "missing_token")
INVALID_TOKEN = (401, "invalid_token")
TOKEN_EXPIRED = (401, "token_expired")
ORIGIN_NOT_ALLOWED = (403, "origin_not_allowed")
CHECK_FAILED = (500, "auth_check_error")


class TokenError(ValueError):
    """A JWT was refused; ``reason`` is ``invalid_token`` or ``token_expired``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# -- JWT (HS256, RFC 7519 / 7515) ---------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise TokenError("invalid_token", "bad base64url segment")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("invalid_token", "bad base64url segment") from None


def encode_jwt(claims: dict[str, Any], secret: str | bytes, headers: dict[str, Any] | None = None) -> str:
    """An HS256 JWT of ``claims`` (for tests and for services that mint tokens)."""
    key = secret.encode() if isinstance(secret, str) else secret
    header = {"alg": "HS256", "typ": "JWT", **(headers or {})}
    signing_input = (
        _b64encode(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64encode(sig)


def decode_jwt(
    token: str,
    secret: str | bytes,
    *,
    audience: str | None = None,
    leeway: float = 0.0,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify an HS256 JWT and return its claims; raise :class:`TokenError` if refused."""
    key = secret.encode() if isinstance(secret, str) else secret
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("invalid_token", "not a JWS compact token")
    head_b64, body_b64, sig_b64 = parts
    try:
        header = json.loads(_b64decode(head_b64))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("invalid_token", "header is not JSON") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("invalid_token", "alg must be HS256")
    expected = hmac.new(key, f"{head_b64}.{body_b64}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _b64decode(sig_b64)):
        raise TokenError("invalid_token", "bad signature")
    try:
        claims = json.loads(_b64decode(body_b64))
    except (ValueError, UnicodeDecodeError):
        raise TokenError("invalid_token", "claims are not JSON") from None
    if not isinstance(claims, dict):
        raise TokenError("invalid_token", "claims are not an object")
    t = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is not None:
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenError("invalid_token", "exp is not a number")
        if t >= exp + leeway:
            raise TokenError("token_expired", "token expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise TokenError("invalid_token", "nbf is not a number")
        if t + leeway < nbf:
            raise TokenError("invalid_token", "token not valid yet")
    if audience is not None:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in auds:
            raise TokenError("invalid_token", "audience mismatch")
    return claims


# -- the handshake check ----------------------------------------------------------------------


def _bearer(request: Any, query_param: str | None) -> str | None:
    value = request.headers.get("Authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if query_param:
        _, sep, query = request.path.partition(b"?")
        if sep:
            values = parse_qs(query.decode("latin-1"), keep_blank_values=False).get(query_param)
            if values:
                return values[0]
    return None


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class Authenticator:
    """The handshake check built from an :class:`AuthConfig` (``Server`` installs it)."""

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._tokens = tuple(t.encode() for t in config.tokens)
        self._secret = config.jwt_secret.encode() if config.jwt_secret is not None else None
        self._origins: frozenset[str | None] | None = None
        if config.allowed_origins is not None:
            self._origins = frozenset(
                None if o is None else _normalize_origin(o) for o in config.allowed_origins
            )
        self._needs_token = bool(self._tokens) or self._secret is not None

    def __call__(self, request: Any) -> Refusal | None:
        if self._origins is not None:
            origin = request.headers.get("Origin")
            if (None if origin is None else _normalize_origin(origin)) not in self._origins:
                return ORIGIN_NOT_ALLOWED
        if not self._needs_token:
            return None
        token = _bearer(request, self.config.query_param)
        if token is None:
            return MISSING_TOKEN
        return self.check_token(token)

    def check_token(self, token: str) -> Refusal | None:
        raw = token.encode("utf-8", "surrogateescape")
        ok = False
        for known in self._tokens:  # every token is compared: no early exit on a match
            ok |= hmac.compare_digest(raw, known)
        if ok:
            return None
        if self._secret is None:
            return INVALID_TOKEN
        c = self.config
        try:
            decode_jwt(token, self._secret, audience=c.jwt_audience, leeway=c.leeway)
        except TokenError as exc:
            return TOKEN_EXPIRED if exc.reason == "token_expired" else INVALID_TOKEN
        return None


def guarded(check: Callable[[Any], Refusal | None]) -> Callable[[Any], Refusal | None]:
    """``check`` that refuses with 500 ``auth_check_error`` instead of raising."""

    def run(request: Any) -> Refusal | None:
        try:
            refusal = check(request)
        except Exception:
            logger.exception("auth_check raised; refusing the connection")
            return CHECK_FAILED
        if refusal is None:
            return None
        status, reason = refusal
        return int(status), str(reason)

    return run


def handshake_checks(
    config: AuthConfig | None, auth_check: HandshakeCheck | None = None
) -> tuple[list[HandshakeCheck], list[str]]:
    """The handshake checks for ``config`` (origin and tokens first, then ``auth_check``).

    Also returns every refusal reason they can give, so that ``stats()`` and
    ``/metrics`` show each one from the start, at 0.
    """
    checks: list[HandshakeCheck] = []
    reasons: list[Refusal] = []
    if config is not None:
        checks.append(Authenticator(config))
        if config.allowed_origins is not None:
            reasons.append(ORIGIN_NOT_ALLOWED)
        if config.tokens or config.jwt_secret is not None:
            reasons += [MISSING_TOKEN, INVALID_TOKEN]
        if config.jwt_secret is not None:
            reasons.append(TOKEN_EXPIRED)
    if auth_check is not None:
        checks.append(guarded(auth_check))
    return checks, [reason for _, reason in reasons]
