"""Server configuration: one frozen msgspec Struct, validated with errors that name the key.

Every key is documented in ``docs/reference.md``.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import msgspec

from .exceptions import ConfigError

__all__ = ["ServerConfig", "SSLConfig", "AuthConfig", "FRAMEWORK_KEYS"]

#: Keys that component frameworks put into configs written for the original
#: component; they are accepted and ignored.
FRAMEWORK_KEYS = frozenset(
    {
        "type",
        "name",
        "description",
        "retry_enabled",
        "max_retries",
        "retry_delay",
        "schema_validation_enabled",
        "metrics_enabled",
        "tracing_enabled",
        "logging_enabled",
        "health_check_enabled",
        "timeout",
        "qos",
    }
)

KiB = 1024
MiB = 1024 * 1024


class SSLConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``ssl:``: serve ``wss://`` with this certificate chain (PEM) and private key."""

    certfile: str
    keyfile: str | None = None  # None: the key is in certfile
    password: str | None = None  # for an encrypted keyfile


class AuthConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """``auth:``: who may open a WebSocket; checked at the handshake (see fastws.auth)."""

    tokens: tuple[str, ...] = ()  # static bearer tokens
    jwt_secret: str | None = None  # HS256 JWTs signed with this secret
    jwt_audience: str | None = None  # required ``aud`` claim
    leeway: float = 0.0  # seconds of clock skew allowed on ``exp``/``nbf``
    allowed_origins: tuple[str | None, ...] | None = None  # None: any Origin; null in the list: no Origin header
    query_param: str | None = "token"  # also take the token from ?token=...; None: header only


class ServerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Settings of one fastws server. See ``docs/reference.md`` for each key."""

    host: str = "0.0.0.0"
    port: int = 8080
    max_connections: int = 100
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float | None = None
    max_queued_bytes: int = 1 * MiB
    slow_client_policy: Literal["disconnect", "drop"] = "disconnect"
    max_message_size: int = 1 * MiB
    handshake_timeout: float = 5.0
    # hardening (docs/reference.md)
    ssl: SSLConfig | None = None
    auth: AuthConfig | None = None
    max_messages_per_second: float | None = None  # per client; over it: close 1008
    burst: int | None = None  # token bucket size (default: max(1, max_messages_per_second))
    broadcast_rate_limit: float | None = None  # WebSocketComponent paces its input to this many items/s
    health_path: str | None = "/health"
    metrics_path: str | None = "/metrics"
    metrics_port: int | None = None  # None: health and metrics on the WebSocket port
    close_timeout: float = 2.0
    backlog: int = 1024
    max_batch: int = 256
    #: Serve the built-in live page (static/dashboard.html) on ``GET page_path``.
    page: bool = False
    page_path: str = "/"
    # scaling (docs/reference.md)
    workers: int | Literal["auto"] = 1  # processes sharing the port; "auto": one per CPU core
    reuse_port: bool = False  # SO_REUSEPORT on the listening socket (set for each worker)
    backplane: str | None = None  # "redis://host:port/db" or "nats://host:port": fan out across nodes
    backplane_channel: str = "fastws"  # Redis channel / NATS subject shared by the nodes
    # issue 14.15 (core): seconds a fragmented message may stay unfinished; past it: CLOSE 1008
    fragment_timeout: float = 10.0
    # permessage-deflate (issue 11; docs/reference.md "Compression")
    compression: Literal["deflate", "off"] = "deflate"  # negotiate permessage-deflate with clients that offer it
    compression_level: int = 6  # zlib level 1-9 (each message is compressed once for all clients)
    compression_min_size: int = 128  # shorter messages go uncompressed (legal per message)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def effective_heartbeat_timeout(self) -> float:
        return self.heartbeat_interval if self.heartbeat_timeout is None else self.heartbeat_timeout

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return cls.__struct_fields__

    @classmethod
    def from_dict(cls, config: dict[str, Any] | None, path: str = "config") -> ServerConfig:
        """Build a config from a plain dict (a component config, a YAML mapping).

        Framework flags are ignored; an unknown key, a wrong type or a value out of
        range raises :class:`ConfigError` naming ``path.key``.
        """
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        if not isinstance(config, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(config).__name__}")
        known = cls.keys()
        values = {}
        for key, value in config.items():
            if key in known:
                values[key] = value
            elif key not in FRAMEWORK_KEYS:
                raise ConfigError(
                    f"{path}.{key}: unknown setting {key!r}; known settings: {', '.join(sorted(known))}"
                )
        try:
            return msgspec.convert(values, cls, strict=True)
        except msgspec.ValidationError as exc:
            raise ConfigError(_readable(exc, path)) from None


def _readable(exc: msgspec.ValidationError, path: str) -> str:
    msg = str(exc)
    head, sep, _ = msg.partition(":")
    if sep and head.split(".")[0] in ServerConfig.__struct_fields__:
        # raised by _check(): "port: must be 1-65535 ..., got 70000 - at `$`"
        return f"{path}.{msg.removesuffix(' - at `$`')}"
    # "Expected `int`, got `str` - at `$.port`"  ->  "config.port: expected `int`, got `str`"
    if " - at `$" in msg:
        text, _, where = msg.rpartition(" - at `$")
        where = where.rstrip("`")
        key = where.lstrip(".").split(".")[0].split("[")[0]
        choices = typing.get_args(typing.get_type_hints(ServerConfig).get(key))
        if text.startswith("Invalid enum value") and choices:
            text = f"expected one of {', '.join(map(repr, choices))}, got {text.rpartition(' ')[2]}"
        return f"{path}{where}: {text[0].lower()}{text[1:]}"
    return f"{path}: {msg}"


def _check(c: ServerConfig) -> None:
    def bad(key: str, why: str, value: Any) -> ConfigError:
        # from_dict() prefixes the path; msgspec.convert reports this as a ValidationError.
        return ConfigError(f"{key}: {why}, got {value!r}")

    if not 1 <= c.port <= 65535 and c.port != 0:
        raise bad("port", "must be 1-65535 (0 picks a free port)", c.port)
    if c.max_connections < 1:
        raise bad("max_connections", "must be a positive integer", c.max_connections)
    if not c.heartbeat_interval > 0:
        raise bad("heartbeat_interval", "must be a positive number of seconds", c.heartbeat_interval)
    if c.heartbeat_timeout is not None and not c.heartbeat_timeout > 0:
        raise bad("heartbeat_timeout", "must be a positive number of seconds", c.heartbeat_timeout)
    if c.max_queued_bytes < 4 * KiB:
        raise bad("max_queued_bytes", "must be at least 4096", c.max_queued_bytes)
    if c.max_message_size < 125:
        raise bad("max_message_size", "must be at least 125", c.max_message_size)
    if not c.handshake_timeout > 0:
        raise bad("handshake_timeout", "must be a positive number of seconds", c.handshake_timeout)
    if c.close_timeout < 0:
        raise bad("close_timeout", "must be >= 0 seconds", c.close_timeout)
    if c.backlog < 1:
        raise bad("backlog", "must be a positive integer", c.backlog)
    if c.max_batch < 1:
        raise bad("max_batch", "must be a positive integer", c.max_batch)
    if not c.host:
        raise bad("host", "must not be empty", c.host)
    _check_hardening(c, bad)
    if not c.page_path.startswith("/") or any(ch in c.page_path for ch in "?# "):
        raise bad("page_path", "must be a path starting with '/' (no query, no spaces)", c.page_path)
    _check_scaling(c, bad)
    # permessage-deflate (issue 11)
    if not 1 <= c.compression_level <= 9:
        raise bad("compression_level", "must be 1-9 (zlib level; use compression: off for none)", c.compression_level)
    if c.compression_min_size < 0:
        raise bad("compression_min_size", "must be >= 0 bytes", c.compression_min_size)


def _check_scaling(c: ServerConfig, bad: Any) -> None:
    if c.workers != "auto" and c.workers < 1:
        raise bad("workers", "must be a positive integer or 'auto'", c.workers)
    if c.backplane is not None and c.backplane.partition("://")[0] not in ("redis", "rediss", "nats", "tls", "memory"):
        raise bad("backplane", "must be a redis://host:port/db, nats://host:port or memory://name URL", c.backplane)
    if not c.backplane_channel or any(ch in c.backplane_channel for ch in " *>"):
        raise bad("backplane_channel", "must be a non-empty name without spaces, '*' or '>'", c.backplane_channel)


def _check_hardening(c: ServerConfig, bad: Any) -> None:
    if c.ssl is not None:
        if not c.ssl.certfile:
            raise bad("ssl.certfile", "must name a PEM file", c.ssl.certfile)
        if c.ssl.keyfile == "":
            raise bad("ssl.keyfile", "must name a PEM file or be left out", c.ssl.keyfile)
    a = c.auth
    if a is not None:
        if any(not t for t in a.tokens):
            raise bad("auth.tokens", "must not contain empty tokens", list(a.tokens))
        if a.jwt_secret is not None and len(a.jwt_secret) < 16:
            raise bad("auth.jwt_secret", "must be at least 16 characters", "<hidden>")
        if a.leeway < 0:
            raise bad("auth.leeway", "must be >= 0 seconds", a.leeway)
        if a.query_param == "":
            raise bad("auth.query_param", "must be a parameter name or null", a.query_param)
        if not a.tokens and a.jwt_secret is None and a.allowed_origins is None:
            raise bad("auth", "set tokens, jwt_secret or allowed_origins (or leave auth out)", {})
        if a.jwt_audience is not None and a.jwt_secret is None:
            raise bad("auth.jwt_audience", "needs auth.jwt_secret", a.jwt_audience)
    if c.max_messages_per_second is not None and not c.max_messages_per_second > 0:
        raise bad("max_messages_per_second", "must be a positive number or null", c.max_messages_per_second)
    if c.burst is not None:
        if c.burst < 1:
            raise bad("burst", "must be a positive integer", c.burst)
        if c.max_messages_per_second is None:
            raise bad("burst", "needs max_messages_per_second", c.burst)
    if c.broadcast_rate_limit is not None and not c.broadcast_rate_limit > 0:
        raise bad("broadcast_rate_limit", "must be a positive number of messages per second or null",
                  c.broadcast_rate_limit)
    for key in ("health_path", "metrics_path"):
        path = getattr(c, key)
        if path is not None and (not path.startswith("/") or any(ch in path for ch in "?# ")):
            raise bad(key, "must be a path starting with '/' (no query, no spaces) or null", path)
    if c.health_path is not None and c.health_path == c.metrics_path:
        raise bad("metrics_path", "must differ from health_path", c.metrics_path)
    if c.metrics_port is not None and not 0 <= c.metrics_port <= 65535:
        raise bad("metrics_port", "must be 0-65535 (0 picks a free port) or null", c.metrics_port)
