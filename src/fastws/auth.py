"""Authentication and authorization at the WebSocket handshake (opt-in).

Everything here runs in the upgrade request handler, before the ``101``: a refused
client gets an HTTP error response (401 or 403) and no WebSocket. Each refusal is
counted in ``Server.stats()["rejected"][reason]`` and in the ``/metrics`` output.

* **Static bearer tokens** (``auth.tokens``), compared in constant time.
* **HS256 JWTs** (``auth.jwt_secret``): signature, ``exp`` and ``nbf`` (with
  ``auth.leeway`` seconds of clock skew), ``aud`` when ``auth.jwt_audience`` is set.
  Only ``alg: HS256`` is accepted (never ``none``). A token without ``exp`` is
  refused unless ``auth.require_exp`` is false. Standard library only. Whatever a
  client sends as a token (malformed base64, deeply nested JSON, non-ASCII bytes),
  the answer is a 401, never a 500: refusals are counted and logged (at most once a
  second per reason, with the count since the previous line).
* The token comes from ``Authorization: Bearer <token>`` or, when
  ``auth.query_param`` is set (default ``token``), from ``?token=<token>`` (browsers
  cannot set headers on a WebSocket).
* **Origin allow-list** (``auth.allowed_origins``): the ``Origin`` header must be in
  it (403 otherwise); ``null`` in the list admits clients that send no ``Origin``.
* **Pluggable check**: ``Server(auth_check=fn)``, ``fn(request)`` returns ``None``
  (let in) or ``(status, reason)`` (refuse).
* **Topic grants** (issue 15): a JWT's ``topics`` claim (a list of topic names and
  ``prefix*`` patterns) or ``auth.token_topics[token]`` limits what the client may
  subscribe to; :meth:`Authenticator.grants` gives it to the topic parser
  (:func:`fastws.topics.subscription_parser`). A ``topics`` claim that is not such a
  list refuses the token (403 ``topic_forbidden``).

Refusal reasons: ``origin_not_allowed`` (403), ``missing_token``, ``invalid_token``,
``token_expired`` (401), ``topic_forbidden`` (403, a malformed ``topics`` claim),
``auth_check_error`` (500, the pluggable check raised).

This module does not know the server: :func:`handshake_checks` builds the checks from
the config and the server runs them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from ._types import Record
from .config import AuthConfig
from .http_types import HandshakeCheck, HTTPRequest, Refusal
from .topics import Grants, check_pattern

if TYPE_CHECKING:  # pragma: no cover
    from picows import WSUpgradeRequest

__all__ = ["Authenticator", "TokenError", "encode_jwt", "decode_jwt", "handshake_checks", "topic_grants"]

logger = logging.getLogger("fastws.auth")

MISSING_TOKEN = (401, "missing_token")
INVALID_TOKEN = (401, "invalid_token")
TOKEN_EXPIRED = (401, "token_expired")
ORIGIN_NOT_ALLOWED = (403, "origin_not_allowed")
CHECK_FAILED = (500, "auth_check_error")
TOPICS_CLAIM_INVALID = (403, "topic_forbidden")

#: Longest token looked at (picows refuses request heads over 16 KiB anyway).
MAX_TOKEN_LENGTH = 8192
#: Deepest JSON nesting accepted in a JWT header or claims (json.loads would recurse).
MAX_JSON_DEPTH = 32
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(ValueError):
    """A JWT was refused; ``reason`` is ``invalid_token`` or ``token_expired``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


# -- JWT (HS256, RFC 7519 / 7515) ---------------------------------------------------------


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise TokenError("invalid_token", "bad base64url segment")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TokenError("invalid_token", "bad base64url segment") from None


def encode_jwt(claims: Record, secret: str | bytes, headers: Record | None = None) -> str:
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


def _json_segment(segment: str, what: str) -> object:
    raw = _b64decode(segment)
    # json.loads recurses once per level: 5,000 "[" would raise RecursionError. Brackets
    # inside strings count too, which only makes the bound stricter.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        depth = 0
        for byte in raw:
            if byte in b"[{":
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise TokenError("invalid_token", f"{what} is nested too deeply")
            elif byte in b"]}":
                depth -= 1
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise TokenError("invalid_token", f"{what} is not JSON") from None


def _number(value: object, claim: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TokenError("invalid_token", f"{claim} is not a number")
    try:
        number = float(value)
    except OverflowError:
        raise TokenError("invalid_token", f"{claim} is out of range") from None
    if number != number:
        raise TokenError("invalid_token", f"{claim} is not a number")
    return number


def decode_jwt(
    token: str,
    secret: str | bytes,
    *,
    audience: str | None = None,
    leeway: float = 0.0,
    now: float | None = None,
    require_exp: bool = False,
) -> Record:
    """Verify an HS256 JWT and return its claims; raise :class:`TokenError` if refused.

    ``require_exp``: refuse a token without an ``exp`` claim (``invalid_token``).
    Any malformed input raises :class:`TokenError`, never another exception.
    """
    key = secret.encode() if isinstance(secret, str) else secret
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("invalid_token", "not a JWS compact token")
    parts = token.split(".")
    if len(parts) != 3:
        raise TokenError("invalid_token", "not a JWS compact token")
    if not all(_B64URL.fullmatch(part) for part in parts):
        raise TokenError("invalid_token", "bad base64url segment")
    head_b64, body_b64, sig_b64 = parts
    header = _json_segment(head_b64, "header")
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise TokenError("invalid_token", "alg must be HS256")
    expected = hmac.new(key, f"{head_b64}.{body_b64}".encode("ascii"), hashlib.sha256).digest()
    # compare the base64url text: decoding would also take the 3 other spellings of its last character
    if not hmac.compare_digest(_b64encode(expected), sig_b64):
        raise TokenError("invalid_token", "bad signature")
    claims = _json_segment(body_b64, "claims")
    if not isinstance(claims, dict):
        raise TokenError("invalid_token", "claims are not an object")
    t = time.time() if now is None else now
    exp = claims.get("exp")
    if exp is None and require_exp:
        raise TokenError("invalid_token", "exp is required (auth.require_exp)")
    if exp is not None:
        if t >= _number(exp, "exp") + leeway:
            raise TokenError("token_expired", "token expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if t + leeway < _number(nbf, "nbf"):
            raise TokenError("invalid_token", "token not valid yet")
    if audience is not None:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if audience not in auds:
            raise TokenError("invalid_token", "audience mismatch")
    return claims


# -- the handshake check ----------------------------------------------------------------------


def _bearer(request: HTTPRequest, query_param: str | None) -> str | None:
    value: str | None = request.headers.get("Authorization")
    if value:
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    if query_param:
        path: bytes = request.path
        _, sep, query = path.partition(b"?")
        if sep:
            values = parse_qs(query.decode("latin-1"), keep_blank_values=False).get(query_param)
            if values:
                return values[0]
    return None


def _normalize_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class _RefusalLog:
    """Logs refusals at most once per ``interval`` seconds per reason, with the count since."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}

    def __call__(self, reason: str, detail: str) -> None:
        self._pending[reason] = self._pending.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.interval:
            return
        self._last[reason] = now
        n = self._pending.pop(reason)
        logger.warning("refused %d upgrade(s) with %s in the last %.0fs; latest: %s",
                       n, reason, self.interval, detail)


def topics_claim(claims: Record) -> tuple[tuple[str, ...] | None, str]:
    """The topic patterns of a JWT's ``topics`` claim (``None``: no claim, any topic), or
    ``((), why)`` when the claim is malformed (the token is refused)."""
    if "topics" not in claims:
        return None, ""
    value = claims["topics"]
    if not isinstance(value, list):
        return (), f"the topics claim must be a list of topic names or patterns, got {type(value).__name__}"
    for pattern in value:
        why = check_pattern(pattern)
        if why is not None:
            return (), f"the topics claim: {why}"
    return tuple(value), ""


class Authenticator:
    """The handshake check built from an :class:`AuthConfig` (see :func:`handshake_checks`).

    It also knows what each token may subscribe to: :meth:`grants`.
    """

    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self._tokens = tuple(t.encode() for t in config.tokens)
        self._token_topics = tuple(config.token_topics.get(t) for t in config.tokens)
        self._secret = config.jwt_secret.encode() if config.jwt_secret is not None else None
        self._origins: frozenset[str | None] | None = None
        if config.allowed_origins is not None:
            self._origins = frozenset(
                None if o is None else _normalize_origin(o) for o in config.allowed_origins
            )
        self._needs_token = bool(self._tokens) or self._secret is not None
        self.log = _RefusalLog()
        # The grant of the last request let in, kept for grants(request) right after the check
        # (the same object: no second JWT verification). Taken once; a reference, so no id reuse.
        self._granted: tuple[HTTPRequest, tuple[str, ...] | None] | None = None

    def reasons(self) -> list[str]:
        """Every reason this check can refuse with (shown at 0 in stats from the start)."""
        found = [ORIGIN_NOT_ALLOWED[1]] if self._origins is not None else []
        if self._needs_token:
            found += [MISSING_TOKEN[1], INVALID_TOKEN[1]]
        if self._secret is not None:
            found += [TOKEN_EXPIRED[1], TOPICS_CLAIM_INVALID[1]]
        return found

    def __call__(self, request: HTTPRequest) -> Refusal | None:
        self._granted = None
        refusal, detail, grant = self._check_safely(request)
        if refusal is not None:
            self.log(refusal[1], detail)
        else:
            self._granted = (request, grant)
        return refusal

    def grants(self, request: HTTPRequest) -> tuple[str, ...] | None:
        """The topic patterns ``request`` may subscribe to; ``None``: any topic.

        Call it for a request this check let in: right after the check, the grant it found
        is returned (the token is not verified again). For any other request the token is
        checked again, and a request that would be refused gets ``()`` (no topic at all).
        """
        granted, self._granted = self._granted, None
        if granted is not None and granted[0] is request:
            return granted[1]
        refusal, _, grant = self._check_safely(request)
        return () if refusal is not None else grant

    def _check_safely(self, request: HTTPRequest) -> tuple[Refusal | None, str, tuple[str, ...] | None]:
        try:
            return self._check(request)
        except Exception as exc:  # a malformed request must never become a 500
            return INVALID_TOKEN, f"unreadable request ({type(exc).__name__})", ()

    def _check(self, request: HTTPRequest) -> tuple[Refusal | None, str, tuple[str, ...] | None]:
        if self._origins is not None:
            origin = request.headers.get("Origin")
            if (None if origin is None else _normalize_origin(origin)) not in self._origins:
                return ORIGIN_NOT_ALLOWED, f"Origin {origin!r:.80} is not in auth.allowed_origins", ()
        if not self._needs_token:
            return None, "", None
        token = _bearer(request, self.config.query_param)
        if token is None:
            return MISSING_TOKEN, "no bearer token", ()
        return self._verify(token)

    def check_token(self, token: str) -> Refusal | None:
        """``None`` if ``token`` is let in, else the refusal (never raises)."""
        return self._verify(token)[0]

    def check_token_detail(self, token: str) -> tuple[Refusal | None, str]:
        refusal, detail, _ = self._verify(token)
        return refusal, detail

    def token_grants(self, token: str) -> tuple[str, ...] | None:
        """The topic patterns ``token`` may subscribe to (``None``: any; ``()`` if it is refused)."""
        refusal, _, grant = self._verify(token)
        return () if refusal is not None else grant

    def _verify(self, token: str) -> tuple[Refusal | None, str, tuple[str, ...] | None]:
        """(refusal or None, why, the token's topic patterns: None for any topic)."""
        raw = token.encode("utf-8", "surrogateescape")
        match = -1
        for i, known in enumerate(self._tokens):  # every token is compared: no early exit on a match
            if hmac.compare_digest(raw, known):
                match = i
        if match >= 0:
            return None, "", self._token_topics[match]
        if self._secret is None:
            return INVALID_TOKEN, "unknown token", ()
        c = self.config
        try:
            claims = decode_jwt(token, self._secret, audience=c.jwt_audience, leeway=c.leeway,
                                require_exp=c.require_exp)
        except TokenError as exc:
            return (TOKEN_EXPIRED if exc.reason == "token_expired" else INVALID_TOKEN), str(exc), ()
        except Exception as exc:  # decode_jwt raises only TokenError; this is the last line of defence
            logger.error("JWT check failed unexpectedly (%s); refusing the token", type(exc).__name__)
            return INVALID_TOKEN, f"malformed token ({type(exc).__name__})", ()
        grant, why = topics_claim(claims)
        if why:
            return TOPICS_CLAIM_INVALID, why, ()
        return None, "", grant


def guarded(check: HandshakeCheck) -> HandshakeCheck:
    """``check`` that refuses with 500 ``auth_check_error`` instead of raising."""

    def run(request: WSUpgradeRequest) -> Refusal | None:
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


def topic_grants(checks: list[HandshakeCheck]) -> Grants | None:
    """The topic grant of a request, from the :class:`Authenticator` among ``checks``
    (``None`` when there is none: every client may subscribe to any topic).

    The server passes it to :func:`fastws.topics.subscription_parser` and runs the parser
    after every check let the request in.
    """
    for check in checks:
        if isinstance(check, Authenticator):
            return check.grants
    return None


def handshake_checks(config: AuthConfig | None,
                     auth_check: HandshakeCheck | None = None) -> tuple[list[HandshakeCheck], list[str]]:
    """The checks to run on every upgrade, in order (origin and tokens first, then
    ``auth_check``), and the refusal reasons they can give (for stats at 0 from the start)."""
    checks: list[HandshakeCheck] = []
    reasons: list[str] = []
    if config is not None:
        authenticator = Authenticator(config)
        checks.append(authenticator)
        reasons += authenticator.reasons()
    if auth_check is not None:
        checks.append(guarded(auth_check))
    return checks, reasons
