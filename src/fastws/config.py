"""Server configuration: one frozen msgspec Struct, validated with errors that name the key.

Every key is documented in ``docs/reference.md``.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

import msgspec

from ._paths import MISSING, get_path
from ._types import ConfigMapping
from .exceptions import ConfigError
from .optional import missing_extra
from .topics import check_pattern

__all__ = [
    "AuthConfig",
    "ConfigRequirement",
    "FRAMEWORK_KEYS",
    "SSLConfig",
    "ServerConfig",
    "UPSTREAM_KEYS",
    "config_requirements",
    "parse_struct",
    "translate_validation_error",
]

#: Keys that the original component (autocoder_cc ``WebSocketComponent``), its base
#: class and its tests read, declare or tolerate. Accepted and ignored: fastws has
#: its own way to do each (``auth``, ``max_messages_per_second``, ...), see docs/dropin.md.
UPSTREAM_KEYS = frozenset(
    {
        "retry",
        "circuit_breaker_enabled",
        "circuit_breaker",
        "rate_limiter_enabled",
        "rate_limiter",
        "schema_validation",
        "messaging",
        "websocket_url",
        "reconnect_interval",
        "message_format",
        "require_auth",
        "jwt_secret",
    }
)

#: Keys that component frameworks put into component configs (the upstream keys
#: included); accepted and ignored without a warning.
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
    | UPSTREAM_KEYS
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
    # issue 14 (edge)
    require_exp: bool = True  # refuse JWTs without an ``exp`` claim
    # topics (issue 15): static token -> the topic names / ``prefix*`` patterns it may subscribe to
    token_topics: dict[str, tuple[str, ...]] = {}


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
    #: The transports under picows: ``loop`` the event loop's own (uvloop's), ``aiofastnet``
    #: aiofastnet's; ``auto``: ``loop`` for plain TCP, ``aiofastnet`` with TLS (docs/reference.md).
    transport: Literal["auto", "loop", "aiofastnet"] = "auto"
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
    # issue 14 (edge): protect /health and /metrics
    metrics_host: str | None = None  # host of metrics_port; None: 127.0.0.1 (loopback only)
    metrics_token: str | None = None  # bearer token (or ?token=) required by /health and /metrics
    # permessage-deflate (issue 11; docs/reference.md "Compression")
    compression: Literal["deflate", "off"] = "deflate"  # negotiate permessage-deflate with clients that offer it
    compression_level: int = 6  # zlib level 1-9 (each message is compressed once for all clients)
    compression_min_size: int = 128  # shorter messages go uncompressed (legal per message)
    # topics and recovery (issue 15; docs/topics.md)
    topic_field: str | None = None  # dotted path of the item field that names its topic (component, stdin)
    firehose: bool = True  # unrestricted clients without ?topics= also get topic broadcasts
    client_subscriptions: bool = False  # clients may send {"subscribe": T} / {"unsubscribe": T}
    history_size: int = 0  # messages kept per topic for recovery (0: no history)
    history_ttl: float = 0.0  # seconds a history entry is kept (0: until history_size evicts it)
    deliver_latest: bool = False  # a new client first gets the latest message of each of its topics
    topic_idle_ttl: float = 300.0  # seconds after its last message an unused, empty topic is forgotten (0: never)
    max_topics_per_client: int = 64  # topics one client may subscribe to
    max_topic_length: int = 128  # characters in a topic name
    topic_metrics: int = 0  # per-topic metric series for at most this many topics (0: none)

    def __post_init__(self) -> None:
        _check(self)

    @property
    def effective_heartbeat_timeout(self) -> float:
        return self.heartbeat_interval if self.heartbeat_timeout is None else self.heartbeat_timeout

    @property
    def topic_sweep_interval(self) -> float:
        """Seconds between two looks for idle topics (with ``topic_idle_ttl`` > 0): a topic goes
        between ``topic_idle_ttl`` and that plus two of these after its last message."""
        return min(self.topic_idle_ttl / 2, 30.0)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return cls.__struct_fields__

    @classmethod
    def from_dict(cls, config: ConfigMapping | ServerConfig | None, path: str = "config") -> ServerConfig:
        """Build a config from a plain dict (a YAML mapping, keyword arguments).

        Strict: framework flags (:data:`FRAMEWORK_KEYS`) are ignored, but any other
        unknown key, a wrong type or a value out of range raises :class:`ConfigError`
        naming ``path.key``. (A ``WebSocketComponent`` is lenient instead: it ignores
        unknown keys with a warning, as the original component did; docs/dropin.md.)
        """
        if isinstance(config, ServerConfig):
            return config
        return parse_struct(cls, config, path)[0]


#: Makes the ConfigError of a bad value: ``bad(key, why, value)``.
_Bad = Callable[[str, str, object], ConfigError]


def _check(c: ServerConfig) -> None:
    def bad(key: str, why: str, value: object) -> ConfigError:
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
    if not 0 <= c.close_timeout < math.inf:  # NaN and inf too
        raise bad("close_timeout", "must be >= 0 seconds", c.close_timeout)
    if not 0 < c.fragment_timeout < math.inf:  # the Hub refuses these too, but at start, as a traceback
        raise bad("fragment_timeout", "must be a positive number of seconds", c.fragment_timeout)
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
    _check_topics(c, bad)


def _check_topics(c: ServerConfig, bad: _Bad) -> None:
    if c.topic_field is not None and (not c.topic_field or c.topic_field.startswith(".") or ".." in c.topic_field
                                      or c.topic_field.endswith(".")):
        raise bad("topic_field", "must be a field name or a dotted path like 'meta.topic'", c.topic_field)
    if c.history_size < 0:
        raise bad("history_size", "must be >= 0 messages per topic (0: no history)", c.history_size)
    if not 0 <= c.history_ttl < math.inf:
        raise bad("history_ttl", "must be >= 0 seconds (0: no expiry)", c.history_ttl)
    if not 0 <= c.topic_idle_ttl < math.inf:
        raise bad("topic_idle_ttl", "must be >= 0 seconds (0: topics are never evicted)", c.topic_idle_ttl)
    if c.max_topics_per_client < 1:
        raise bad("max_topics_per_client", "must be a positive integer", c.max_topics_per_client)
    if not 1 <= c.max_topic_length <= 1024:
        raise bad("max_topic_length", "must be 1-1024 characters", c.max_topic_length)
    if c.topic_metrics < 0:
        raise bad("topic_metrics", "must be >= 0 topics (0: no per-topic series)", c.topic_metrics)


def _check_scaling(c: ServerConfig, bad: _Bad) -> None:
    if c.workers != "auto" and c.workers < 1:
        raise bad("workers", "must be a positive integer or 'auto'", c.workers)
    if c.backplane is not None and c.backplane.partition("://")[0] not in ("redis", "rediss", "nats", "tls", "memory"):
        raise bad("backplane", "must be a redis://host:port/db, nats://host:port or memory://name URL", c.backplane)
    missing = missing_extra(c.backplane)
    if missing is not None:  # the same message at validate time and at run time
        raise ConfigError(missing)
    if not c.backplane_channel or any(ch in c.backplane_channel for ch in " *>"):
        raise bad("backplane_channel", "must be a non-empty name without spaces, '*' or '>'", c.backplane_channel)


def _check_hardening(c: ServerConfig, bad: _Bad) -> None:
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
        if not 0 <= a.leeway < math.inf:  # NaN or inf would accept every expired token
            raise bad("auth.leeway", "must be >= 0 seconds", a.leeway)
        if a.query_param == "":
            raise bad("auth.query_param", "must be a parameter name or null", a.query_param)
        if not a.tokens and a.jwt_secret is None and a.allowed_origins is None:
            raise bad("auth", "set tokens, jwt_secret or allowed_origins (or leave auth out)", {})
        if a.jwt_audience is not None and a.jwt_secret is None:
            raise bad("auth.jwt_audience", "needs auth.jwt_secret", a.jwt_audience)
        for token, patterns in a.token_topics.items():
            if token not in a.tokens:
                # the token itself is a secret: name it by its place, never print it
                raise ConfigError("auth.token_topics: a key is not one of auth.tokens (each key is a static "
                                  "token, whose topics it lists)")
            for i, pattern in enumerate(patterns):
                why = check_pattern(pattern, c.max_topic_length)
                if why is not None:
                    raise ConfigError(f"auth.token_topics: the topics of auth.tokens[{a.tokens.index(token)}], "
                                      f"entry {i}: {why} (a topic name, prefix* or *)")
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
    if c.metrics_host is not None and (c.metrics_port is None or not c.metrics_host):
        raise bad("metrics_host", "needs metrics_port (and must not be empty)", c.metrics_host)
    if c.metrics_token is not None and not c.metrics_token.strip():
        raise bad("metrics_token", "must not be empty (leave it out for no token)", c.metrics_token)


# -- parsing a config mapping, and the one wording of its errors ---------------------------

S = TypeVar("S", bound=msgspec.Struct)


def parse_struct(
    struct_type: type[S],
    config: ConfigMapping | None,
    path: str = "config",
    *,
    ignore: frozenset[str] = FRAMEWORK_KEYS,
    unknown: Literal["error", "ignore"] = "error",
) -> tuple[S, tuple[str, ...]]:
    """Check ``config`` against ``struct_type``; return ``(settings, ignored keys)``.

    Keys in ``ignore`` are dropped silently. Any other unknown key raises
    :class:`ConfigError` (``unknown="error"``) or is returned in the ignored keys
    (``unknown="ignore"``; the caller warns). A wrong type or a value out of range
    raises :class:`ConfigError` whose message starts with the key's path
    (``components[1].config.data_delay: ...``). Range checks live in the struct's
    ``__post_init__``, raising ``ConfigError("key: why, got value")``.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings, got {config!r}")
    known = struct_type.__struct_fields__
    values: dict[str, object] = {}
    ignored: list[str] = []
    for key, value in config.items():
        if key in known:
            values[key] = value
        elif key in ignore:
            continue
        elif unknown == "ignore":
            ignored.append(str(key))
        else:
            raise ConfigError(f"{path}.{key}: unknown key; known keys are: {', '.join(known)}{did_you_mean(key, known)}")
    try:
        settings = msgspec.convert(values, type=struct_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(translate_validation_error(exc, path, values, struct_type)) from None
    return settings, tuple(ignored)


def did_you_mean(key: object, known: typing.Iterable[str]) -> str:
    """``"; did you mean 'port'?"`` when ``key`` looks like a typo of a known key, else ``""``."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_AT_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_TICKS_RE = re.compile(r"`([^`]*)`")
_OWN_RE = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")  # raised by a __post_init__: "port: must be ..."
_STEP_RE = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _friendly_type(spec: str) -> str:
    parts = [p.strip() for p in spec.split("|")]
    names = [_TYPE_NAMES.get(p, p) for p in parts]
    if set(parts) >= {"int", "float"}:
        names = [n for n in names if n != "an integer"]
    return " or ".join(dict.fromkeys(names))


def _join(base: str, subpath: str) -> str:
    if not base:
        return subpath.lstrip(".") or "<root>"
    return base + subpath


def _choices(struct_type: type[msgspec.Struct] | None, subpath: str) -> tuple[object, ...]:
    """The allowed values of a ``Literal`` field at the top level of ``struct_type``."""
    key = subpath.lstrip(".")
    if struct_type is None or not key or not key.isidentifier():
        return ()
    hint = typing.get_type_hints(struct_type).get(key)
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    out: list[object] = []
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            out.extend(typing.get_args(arg))
        elif arg is not type(None):
            return ()  # "int | Literal['auto']": msgspec's own wording says it better
    return tuple(out)


def translate_validation_error(
    exc: msgspec.ValidationError,
    base: str,
    data: object = None,
    struct_type: type[msgspec.Struct] | None = None,
) -> str:
    """Turn msgspec's "Expected `int`, got `str` - at `$.x.y`" into "base.x.y: expected an integer, got 'a'".

    The one wording of config and blueprint errors: ``<path>: <what is wrong>, got <value>``.
    """
    m = _AT_RE.match(str(exc))
    assert m is not None
    msg, subpath = m.group("msg"), m.group("path") or ""
    if _OWN_RE.match(msg):
        return f"{_join(base, subpath)}.{msg}" if base or subpath else msg
    unknown = re.match(r"Object contains unknown field `([^`]*)`", msg)
    missing = re.match(r"Object missing required field `([^`]*)`", msg)
    if unknown:
        return f"{_join(base, subpath + '.' + unknown.group(1))}: unknown field"
    if missing:
        return f"{_join(base, subpath + '.' + missing.group(1))}: missing required field"
    steps = [k if k else int(i) for k, i in _STEP_RE.findall(subpath)]
    value = get_path(data, steps) if data is not None else MISSING
    choices = _choices(struct_type, subpath) if msg.startswith("Invalid enum value") else ()
    if choices:
        msg = f"expected one of {', '.join(map(repr, choices))}"
    else:
        got = re.search(r", got `[^`]*`$", msg)
        if got:
            msg = msg[: got.start()]
        msg = _TICKS_RE.sub(lambda t: _friendly_type(t.group(1)), msg)
        msg = msg[:1].lower() + msg[1:]
        msg = re.sub(r"([<>]=? -?\d+)\.0\b", r"\1", msg)  # ">= 0.0" -> ">= 0"
        if value is MISSING and got:
            msg += ", got " + _friendly_type(got.group(0)[7:-1])
    if value is not MISSING and not msg.startswith("invalid enum value"):
        msg += f", got {value!r}"
    return f"{_join(base, subpath)}: {msg}"


# -- the original's get_config_requirements() -----------------------------------------------


@dataclass(frozen=True)
class ConfigRequirement:
    """One config key, as the original's ``get_config_requirements()`` lists it."""

    name: str
    type: str
    description: str
    required: bool = False
    default: object = None
    example: object = None


#: One line per ServerConfig key (the full text is in docs/reference.md) and an example value.
SERVER_KEY_DOCS: dict[str, tuple[str, object]] = {
    "host": ("address to listen on", "127.0.0.1"),
    "port": ("port to listen on; 0 picks a free one", 8080),
    "max_connections": ("clients beyond this are closed with 1008 'Max connections reached'", 500),
    "heartbeat_interval": ("seconds between pings", 15),
    "heartbeat_timeout": ("seconds a client has to answer a ping (default: the interval)", 10),
    "max_queued_bytes": ("bytes queued for one client before the slow-client policy applies", 4194304),
    "slow_client_policy": ("'disconnect' or 'drop' a client over max_queued_bytes", "drop"),
    "max_message_size": ("largest message a client may send (bytes); larger: 1009", 65536),
    "handshake_timeout": ("seconds a connection has to complete the upgrade", 5),
    "transport": ("transports under picows: auto, loop (uvloop's) or aiofastnet", "aiofastnet"),
    "ssl": ("serve wss:// with this certificate (certfile, keyfile, password)", {"certfile": "cert.pem"}),
    "auth": ("who may connect: tokens, jwt_secret, allowed_origins", {"tokens": ["s3cret"]}),
    "max_messages_per_second": ("per-client inbound message rate; over it: 1008", 20),
    "burst": ("messages a client may send back to back (needs max_messages_per_second)", 40),
    "broadcast_rate_limit": ("items per second the component broadcasts, by waiting", 1000),
    "health_path": ("GET path of the JSON health check; null disables it", "/health"),
    "metrics_path": ("GET path of the Prometheus metrics; null disables it", "/metrics"),
    "metrics_port": ("serve health and metrics on this separate port", 9100),
    "close_timeout": ("seconds to wait for clients to answer CLOSE on stop", 2),
    "backlog": ("listen(2) backlog", 1024),
    "max_batch": ("input items a component broadcasts in one write at most", 256),
    "page": ("serve the built-in live page on page_path", True),
    "page_path": ("path of the live page", "/"),
    "workers": ("processes sharing the port, or 'auto'", 4),
    "reuse_port": ("set SO_REUSEPORT on the listening socket", True),
    "backplane": ("redis:// or nats:// URL to fan out across nodes", "redis://127.0.0.1:6379/0"),
    "backplane_channel": ("Redis channel / NATS subject shared by the nodes", "prices"),
    "topic_field": ("dotted path of the item field that names its topic", "symbol"),
    "firehose": ("clients without ?topics= also get broadcasts that have a topic", False),
    "client_subscriptions": ("clients may send {\"subscribe\": T} / {\"unsubscribe\": T}", True),
    "history_size": ("messages kept per topic for recovery (0: none)", 1000),
    "history_ttl": ("seconds a history entry is kept (0: until evicted)", 300),
    "deliver_latest": ("a new client with ?topics= first gets each topic's latest message", True),
    "topic_idle_ttl": ("seconds after its last message a topic nothing holds is forgotten (0: never)", 300),
    "max_topics_per_client": ("topics one client may subscribe to", 16),
    "max_topic_length": ("characters in a topic name", 64),
    "topic_metrics": ("per-topic metric series for at most this many topics (0: none)", 20),
}


def _type_name(hint: object) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("fastws.config.", "").replace("NoneType", "None")


def config_requirements(
    struct_type: type[msgspec.Struct], docs: Mapping[str, tuple[str, object]] | None = None
) -> list[ConfigRequirement]:
    """The keys of ``struct_type`` as :class:`ConfigRequirement` objects, in field order."""
    hints = typing.get_type_hints(struct_type, include_extras=False)
    out = []
    for f in msgspec.structs.fields(struct_type):
        description, example = (docs or {}).get(f.name, ("", None))
        if f.default is not msgspec.NODEFAULT:
            default = f.default
        elif f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
        else:
            default = None
        if default is msgspec.UNSET:
            default = None
        out.append(
            ConfigRequirement(
                name=f.name,
                type=_type_name(hints.get(f.name)),
                description=description,
                required=f.required,
                default=default,
                example=default if example is None else example,
            )
        )
    return out
