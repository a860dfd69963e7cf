"""Server configuration: one frozen msgspec Struct, validated with errors that name the key.

Every key is documented in ``docs/reference.md``.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

import msgspec

from .exceptions import ConfigError

__all__ = ["ServerConfig", "FRAMEWORK_KEYS"]

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
    close_timeout: float = 2.0
    backlog: int = 1024
    max_batch: int = 256

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
    if sep and head in ServerConfig.__struct_fields__:
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
