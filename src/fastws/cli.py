"""The ``fastws`` command line.

``fastws serve``      a standalone server that broadcasts each line of standard input
``fastws run F``      run a blueprint (YAML system of components)
``fastws validate F`` check a blueprint without running it

The flags of ``serve`` are generated from the fields of :class:`~fastws.config.ServerConfig`
(:func:`server_flags`): a new config key gets a flag, its type check and its default
without any change here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import msgspec
import msgspec.inspect
import msgspec.json
import msgspec.yaml

from ._cliutil import (
    LOOPS,
    Parser,
    UsageError,
    describe_error,
    hide_listening_log,
    interfaces_note,
    plural,
    url,
)
from ._types import ConfigDict, ConfigValue, Item
from .blueprint.cli import register as register_blueprint_commands
from .config import ServerConfig
from .exceptions import ConfigError, EncodeError, FastWSError
from .loop import run as run_loop
from .topics import topic_reader

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ServerFlag", "build_parser", "main", "server_config_from_args", "server_flags"]

logger = logging.getLogger("fastws.cli")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# -- serve's flags, generated from ServerConfig ---------------------------------------------

#: ServerConfig keys without a flag: ``reuse_port`` is set by fastws for each worker,
#: ``max_batch`` only matters to a WebSocket component, and a key password belongs in
#: ``--config FILE``, not in the process list; so does ``auth.token_topics`` (a mapping
#: whose keys are tokens).
NO_FLAG = frozenset({"reuse_port", "max_batch", "ssl.password", "auth.token_topics"})

#: Flag names that differ from the generated ``--<key>`` / ``--<struct>-<key>`` (kept from
#: before the flags were generated, so scripts keep working).
FLAG_NAMES = {
    "ssl.certfile": "--certfile",
    "ssl.keyfile": "--keyfile",
    "auth.tokens": "--auth-token",
    "auth.jwt_secret": "--jwt-secret",
    "auth.jwt_audience": "--jwt-audience",
    "auth.allowed_origins": "--allowed-origin",
}

#: Environment variables read for a key: a list is extended (comma-separated), a value
#: is used when no flag sets it.
ENVIRONMENT = {"auth.tokens": "FASTWS_AUTH_TOKENS", "auth.jwt_secret": "FASTWS_JWT_SECRET"}

#: The help of each flag: what the key does, for a user at the command line. A key added to
#: ServerConfig without an entry here gets a flag whose help sends the reader to the reference.
HELP = {
    "host": "address to listen on; :: for every IPv6 and IPv4 address",
    "port": "port to listen on, 0 for any free one",
    "max_connections": "clients over this are closed with 1008",
    "heartbeat_interval": "seconds between pings to every client",
    "heartbeat_timeout": "seconds a client has to answer a ping (default: the interval)",
    "max_queued_bytes": "unsent bytes a client may hold before the slow-client policy applies",
    "slow_client_policy": "what happens to a client over --max-queued-bytes",
    "max_message_size": "largest message a client may send, in bytes; also the longest stdin line broadcast",
    "handshake_timeout": "seconds a new connection has to complete the upgrade",
    "transport": "sockets through the event loop's transports (loop, 4 KiB less per client) or aiofastnet's; auto: loop without TLS",
    "ssl.certfile": "PEM certificate chain: serve wss:// (with --keyfile)",
    "ssl.keyfile": "PEM private key (default: the key is in --certfile)",
    "auth.tokens": "accept this bearer token (repeatable; also $FASTWS_AUTH_TOKENS, comma-separated)",
    "auth.jwt_secret": "accept HS256 JWTs signed with this secret (default $FASTWS_JWT_SECRET)",
    "auth.jwt_audience": "required 'aud' claim of JWTs",
    "auth.leeway": "seconds of clock skew allowed on a JWT's exp/nbf",
    "auth.allowed_origins": "accept browsers only from this Origin (repeatable), e.g. https://app.example.com",
    "auth.query_param": "also take the token from this query parameter; 'off': header only",
    "max_messages_per_second": "per-client inbound message rate; over it the client is closed with 1008",
    "burst": "messages a client may send back to back (token bucket size; default: the rate, at least 1)",
    "broadcast_rate_limit": "broadcast at most this many messages per second; the input waits, nothing is dropped",
    "health_path": "path of the JSON health check, 'off' to disable",
    "metrics_path": "path of the Prometheus metrics, 'off' to disable",
    "metrics_port": "serve health and metrics on this port instead of the WebSocket port",
    "close_timeout": "on stop, seconds to wait for clients to answer CLOSE 1001",
    "backlog": "listen(2) backlog",
    "page": "serve the built-in live page (connection state, messages, charts)",
    "page_path": "path of the live page",
    "workers": "worker processes sharing the port (SO_REUSEPORT); 'auto': one per CPU core",
    "backplane": "fan out across nodes through a broker: redis://host:port/db or nats://host:port",
    "backplane_channel": "Redis channel / NATS subject the nodes share",
    "fragment_timeout": "seconds a client may keep a fragmented message unfinished; past it: CLOSE 1008",
    "metrics_host": "address of the --metrics-port server (default: 127.0.0.1, loopback only)",
    "metrics_token": "bearer token required by the health and metrics paths (prefer --config FILE)",
    "auth.require_exp": "refuse JWTs without an exp claim",
    # permessage-deflate (issue 11)
    "compression": "deflate: accept clients' permessage-deflate offers (each message compressed once); off: none",
    "compression_level": "zlib level 1-9 of the compressed messages",
    "compression_min_size": "messages shorter than this many bytes go uncompressed",
    # topics and recovery (issue 15)
    "topic_field": "each stdin line is JSON; this field (dotted path) names its topic; without it: every client",
    "firehose": "clients without ?topics= also get broadcasts that have a topic",
    "client_subscriptions": "clients may send {\"subscribe\": T} / {\"unsubscribe\": T} messages",
    "history_size": "messages kept per topic for recovery (?since=); 0: no history",
    "history_ttl": "seconds a history entry is kept; 0: until --history-size evicts it",
    "deliver_latest": "a new client with ?topics= first gets the latest message of each of its topics",
    "topic_idle_ttl": "seconds after its last message a topic without exact subscribers or history is "
                      "forgotten; 0: never",
    "max_topics_per_client": "topics one client may subscribe to; more: 400 too_many_topics",
    "max_topic_length": "characters in a topic name; longer: 400 topic_invalid",
    "topic_metrics": "per-topic metric series for at most this many topics; 0: none",
}

_NULL_WORDS = ("off", "none", "null")


@dataclass(frozen=True)
class ServerFlag:
    """One ``serve`` flag and the ServerConfig key it sets."""

    key: str  # "port", "auth.tokens"
    flag: str  # "--port", "--auth-token"
    help: str
    kind: str  # "value", "list" (repeatable), "switch" (store_true), "negatable" (--x/--no-x)
    parse: Callable[[str], object]
    metavar: str | None
    default: object

    @property
    def dest(self) -> str:
        return "config:" + self.key


def _expected(types: Sequence[msgspec.inspect.Type]) -> str:
    words: list[str] = []
    for t in types:
        if isinstance(t, msgspec.inspect.IntType):
            words.append("an integer")
        elif isinstance(t, msgspec.inspect.FloatType):
            words.append("a number")
        elif isinstance(t, msgspec.inspect.LiteralType):
            words.extend(repr(v) for v in t.values)
        elif isinstance(t, msgspec.inspect.NoneType):
            words.append("'off'")
        elif isinstance(t, msgspec.inspect.StrType):
            words.append("text")
    return " or ".join(dict.fromkeys(words))


def _value_parser(types: Sequence[msgspec.inspect.Type]) -> Callable[[str], object]:
    """A parser for one command-line value of a field typed as the union of ``types``."""
    nullable = any(isinstance(t, msgspec.inspect.NoneType) for t in types)
    expected = _expected(types)

    def parse(text: str) -> object:
        if nullable and text.lower() in _NULL_WORDS:
            return None
        for t in types:
            if isinstance(t, msgspec.inspect.LiteralType):
                for value in t.values:
                    if isinstance(value, str) and text.lower() == value.lower():
                        return value
            elif isinstance(t, msgspec.inspect.IntType):
                try:
                    return int(text)
                except ValueError:
                    pass
            elif isinstance(t, msgspec.inspect.FloatType):
                try:
                    return float(text)
                except ValueError:
                    pass
            elif isinstance(t, msgspec.inspect.StrType):
                return text
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")

    return parse


def _metavar(types: Sequence[msgspec.inspect.Type], key: str, single: bool = False) -> str:
    literals = [v for t in types if isinstance(t, msgspec.inspect.LiteralType) for v in t.values]
    others = [t for t in types if not isinstance(t, (msgspec.inspect.LiteralType, msgspec.inspect.NoneType))]
    if literals and not others:
        return "{" + ",".join(map(str, literals)) + "}"
    leaf = key.rsplit(".", 1)[-1]
    if any(isinstance(t, msgspec.inspect.IntType) for t in others):
        word = "N"
    elif any(isinstance(t, msgspec.inspect.FloatType) for t in others):
        word = "SECONDS" if leaf.endswith(("timeout", "interval", "leeway", "ttl")) else "NUMBER"
    else:
        word = leaf.rsplit("_", 1)[-1].upper()  # metrics_host -> HOST
        if single:  # a repeatable flag takes one item at a time
            word = word.removesuffix("S")
    return "|".join([word, *map(str, literals)])


def _describe_default(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "none"
    return str(value)


def _field_flags(cls: type[msgspec.Struct], prefix: str = "") -> list[ServerFlag]:
    flags: list[ServerFlag] = []
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        key = prefix + field.name
        if key in NO_FLAG:
            continue
        members = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        struct = next((m for m in members if isinstance(m, msgspec.inspect.StructType)), None)
        if struct is not None:
            flags.extend(_field_flags(struct.cls, key + "."))
            continue
        default = None if field.default is msgspec.NODEFAULT else field.default
        name = FLAG_NAMES.get(key, "--" + key.replace(".", "-").replace("_", "-"))
        text = HELP.get(key, f"the {key} setting (see docs/reference.md)")
        values = [m for m in members if not isinstance(m, msgspec.inspect.NoneType)]
        if len(values) == 1 and isinstance(values[0], msgspec.inspect.BoolType):
            kind = "negatable" if default else "switch"
            flags.append(ServerFlag(key, name, text, kind, str, None, default))
            continue
        if len(values) == 1 and isinstance(values[0], (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)):
            item = values[0].item_type
            items = item.types if isinstance(item, msgspec.inspect.UnionType) else (item,)
            items = tuple(t for t in items if not isinstance(t, msgspec.inspect.NoneType))
            flags.append(ServerFlag(key, name, text, "list", _value_parser(items), _metavar(items, key, True), default))
            continue
        if "default" not in text:
            text += f" (default {_describe_default(default)})"
        flags.append(ServerFlag(key, name, text, "value", _value_parser(members), _metavar(members, key), default))
    return flags


def server_flags() -> list[ServerFlag]:
    """The flags of ``serve``, one per ServerConfig key (nested keys included), in field order."""
    return _field_flags(ServerConfig)


class _ArgumentOptions(TypedDict):
    dest: str
    default: str
    help: str


def _add_server_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server settings (ServerConfig keys; docs/reference.md)")
    for f in server_flags():
        common: _ArgumentOptions = {"dest": f.dest, "default": argparse.SUPPRESS, "help": f.help}
        if f.kind == "switch":
            g.add_argument(f.flag, action="store_true", **common)
        elif f.kind == "negatable":
            g.add_argument(f.flag, action=argparse.BooleanOptionalAction, **common)
        elif f.kind == "list":
            g.add_argument(f.flag, action="append", type=f.parse, metavar=f.metavar, **common)
        else:
            g.add_argument(f.flag, type=f.parse, metavar=f.metavar, **common)


def _set(config: ConfigDict, key: str, value: object) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        child = config.get(part)
        if not isinstance(child, dict):
            child = config[part] = {}
        config = child
    config[leaf] = value


def _get(config: ConfigDict, key: str) -> ConfigValue:
    value: ConfigValue = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _read_config_file(path: str) -> ConfigDict:
    """``serve --config FILE``: a YAML (or JSON) mapping of ServerConfig keys."""
    from .blueprint.schema import split_known, unknown_key_message

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from None
    try:
        raw = msgspec.json.decode(data) if path.endswith(".json") else msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                          f"{' '.join(str(exc).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of ServerConfig keys, got {type(raw).__name__}")
    _, unknown = split_known(ServerConfig.keys(), raw)
    if unknown:
        raise ConfigError("; ".join(f"{path}: {unknown_key_message(k, ServerConfig.keys())}" for k in unknown))
    return {key: _expand(value, f"{path}: {key}") for key, value in raw.items()}


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: object, where: str) -> object:
    """``${NAME}`` in a string of the config file -> the environment variable (secrets stay out of it)."""
    if isinstance(value, dict):
        return {k: _expand(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def env(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(f"{where}: the environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]

    return _ENV_REF.sub(env, value)


def server_config_from_args(args: argparse.Namespace) -> tuple[ConfigDict, dict[str, str]]:
    """The config dict ``serve`` runs with, and which key each flag given set (key -> flag).

    Precedence: ServerConfig defaults < ``--config FILE`` < environment < flags.
    """
    config_file = getattr(args, "config", None)
    config: ConfigDict = _read_config_file(config_file) if config_file else {}
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    given: dict[str, str] = {}
    flags = server_flags()
    for f in flags:
        env = ENVIRONMENT.get(f.key)
        if env and os.environ.get(env) and f.kind != "list":
            _set(config, f.key, os.environ[env])
    for f in flags:
        value = getattr(args, f.dest, argparse.SUPPRESS)
        if value is argparse.SUPPRESS:
            if "." not in f.key and f.key not in config:
                config[f.key] = f.default
            continue
        _set(config, f.key, value)
        given[f.key] = f.flag
    for f in flags:
        env = ENVIRONMENT.get(f.key)
        if env and f.kind == "list":
            extra = [t.strip() for t in os.environ.get(env, "").split(",") if t.strip()]
            if extra:
                _set(config, f.key, [*(_get(config, f.key) or ()), *extra])
    ssl = config.get("ssl")
    if "ssl.keyfile" in given and (not isinstance(ssl, dict) or not ssl.get("certfile")):
        raise ConfigError("options.certfile: --keyfile needs --certfile")
    return config, given


def _server_config(args: argparse.Namespace) -> ConfigDict:
    """The config dict of ``serve`` (kept for tests that build it from parsed flags)."""
    return server_config_from_args(args)[0]


def _blame(exc: ConfigError, given: dict[str, str], config_file: str | None) -> str:
    """Point a config error at the flag that set the key, or at the config file."""
    msg = str(exc)
    if not msg.startswith("options."):
        return msg
    where, sep, why = msg[len("options."):].partition(": ")
    if not sep:
        return msg
    for key, flag in given.items():
        if key == where or key.startswith(where + ".") or where.startswith(key + "."):
            return f"{flag}: {why}"
    if config_file:
        return f"{config_file}: {where}: {why}"
    return msg


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    config, given = server_config_from_args(args)
    try:
        return ServerConfig.from_dict(config, path="options")
    except ConfigError as exc:
        raise ConfigError(_blame(exc, given, getattr(args, "config", None))) from None


# -- the parser ---------------------------------------------------------------------------------


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)} (any case), got {text!r}")
    return level


def add_common_options(p: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--log-level``, accepted before the subcommand (``top``) and after it."""
    p.add_argument("--log-level", type=_log_level, metavar="LEVEL",
                   default="INFO" if top else argparse.SUPPRESS,
                   help="logging level: DEBUG, INFO, WARNING or ERROR, any case (default INFO)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = Parser(
        prog="fastws",
        description="fastws: a WebSocket broadcast server. Every message is serialized once and "
        "written to each client once per loop turn.",
    )
    parser.add_argument("--version", action="version", version=f"fastws {__version__}")
    add_common_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="broadcast each line of standard input to every client",
        description="Start a WebSocket server and broadcast each line read from standard input "
        "to every connected client, as a text message (e.g. `tail -f app.log | fastws serve`). "
        "The server keeps running after standard input ends; Ctrl-C or SIGTERM stops it and "
        "clients get CLOSE 1001.",
    )
    serve.add_argument("--config", metavar="FILE",
                       help="YAML or JSON file of server settings (ServerConfig keys); flags override it")
    serve.add_argument("--exit-on-eof", action="store_true", help="stop when standard input ends")
    serve.add_argument("--loop", default="auto", choices=LOOPS,
                       help="event loop: uvloop when installed (auto), or the asyncio default")
    add_common_options(serve)
    _add_server_options(serve)
    serve.set_defaults(func=_cmd_serve)
    register_blueprint_commands(sub, add_common_options)
    return parser


#: Standard fds that were closed when the process started (now /dev/null).
_closed_at_start: set[int] = set()


def _reserve_std_fds() -> None:
    """Point closed fds 0-2 at /dev/null, so that no socket is created on them.

    With standard input closed, the listening socket would otherwise get fd 0 and be
    mistaken for standard input.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _closed_at_start.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv: Sequence[str] | None = None) -> int:
    _reserve_std_fds()
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            prog = f"fastws {args.command}" if getattr(args, "command", None) else "fastws"
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not getattr(args, "func", None):
        print("fastws: error: a command is required: serve, run or validate (see fastws --help)", file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hide_listening_log()
    if args.log_level != "DEBUG":
        # picows logs every connection and disconnection at INFO: with thousands of
        # clients that is noise; --log-level DEBUG shows it
        logging.getLogger("fastws.picows").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ImportError as exc:  # --loop uvloop without uvloop
        print(f"fastws: error: --loop: {exc}", file=sys.stderr)
        return 1
    except (FastWSError, OSError) as exc:
        print(f"fastws: error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- serve ----------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    config = _serve_config(args)
    stdin_kind = stdin_kind_of(0)  # before any socket exists
    return run_loop(_serve(config, stdin_kind, args.exit_on_eof), args.loop)


async def _serve(config: ServerConfig, stdin_kind: str, exit_on_eof: bool) -> int:
    from .server import Server

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = Server(config)
    await server.start()
    scheme = "wss" if config.ssl else "ws"
    page = f", live page on {url('https' if config.ssl else 'http', config.host, server.port, config.page_path)}"
    print(f"fastws: serving on {url(scheme, config.host, server.port)} (broadcasting standard input"
          f"{', which is ' + stdin_kind if stdin_kind in ('closed', '/dev/null') else ''})"
          f"{page if config.page else ''}{interfaces_note(config.host)}", file=sys.stderr, flush=True)
    pump = StdinPump(server, stdin_kind)
    pump.start(on_eof=stop.set if exit_on_eof else None)
    try:
        await stop.wait()
    finally:
        await pump.stop()
        await server.stop()
    return 0


# -- standard input -----------------------------------------------------------------------------


def stdin_kind_of(fd: int) -> str:
    """``pipe`` (FIFO or socket), ``file`` (regular file), ``/dev/null``, ``tty``, ``device``
    or ``closed``. uvloop's pipe transport takes only the first kind: it aborts the process
    on a regular file or /dev/null, so those are read with plain reads in a thread."""
    if fd in _closed_at_start:
        return "closed"
    try:
        st = os.fstat(fd)
    except OSError:
        return "closed"
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return "pipe"
    if stat.S_ISCHR(st.st_mode):
        try:
            null = os.stat(os.devnull)
        except OSError:  # pragma: no cover - no /dev/null
            null = None
        if null is not None and st.st_rdev == null.st_rdev:
            return "/dev/null"
        return "tty" if os.isatty(fd) else "device"
    return "file"


_EOF = b""
#: Chunks of standard input that may wait to be broadcast: the reader pauses above this.
_MAX_CHUNKS = 8
_CHUNK = 256 * 1024


class LineSplitter:
    """Bytes in, complete lines out; a line longer than ``limit`` bytes is skipped whole.

    The skipped line is read and discarded up to its newline, counted in ``skipped`` and
    logged once.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.skipped = 0
        self._pending = bytearray()
        self._skipping: int | None = None  # bytes of the overlong line discarded so far

    def _skip_done(self, size: int) -> None:
        self.skipped += 1
        logger.warning("standard input: skipped a line of %d bytes, longer than max_message_size (%d)",
                       size, self.limit)

    def feed(self, data: bytes) -> list[bytes]:
        start = 0
        if self._skipping is not None:
            nl = data.find(b"\n")
            if nl < 0:
                self._skipping += len(data)
                return []
            self._skip_done(self._skipping + nl)
            self._skipping = None
            start = nl + 1
        parts = data[start:].split(b"\n") if start else data.split(b"\n")
        tail = parts.pop()
        if parts and self._pending:
            self._pending += parts[0]
            parts[0] = bytes(self._pending)
            self._pending.clear()
        limit = self.limit
        lines = []
        for line in parts:
            size = len(line) - (1 if line.endswith(b"\r") else 0)
            if size > limit:
                self._skip_done(size)
            else:
                lines.append(line)
        if tail:
            if len(self._pending) + len(tail) > limit + 1:
                self._skipping = len(self._pending) + len(tail)
                self._pending.clear()
            else:
                self._pending += tail
        return lines

    def finish(self) -> list[bytes]:
        """At the end of input: the last line, if it has no newline."""
        if self._skipping is not None:
            self._skip_done(self._skipping)
            self._skipping = None
        if not self._pending:
            return []
        line = bytes(self._pending)
        self._pending.clear()
        return [line] if len(line) <= self.limit else []

    @property
    def unfinished(self) -> int:
        """Bytes of a line begun but not ended (not broadcast if input stops here)."""
        return len(self._pending) + (self._skipping or 0)


class _PipeProtocol(asyncio.Protocol):
    def __init__(self, pump: StdinPump) -> None:
        self.pump = pump
        self.transport: asyncio.ReadTransport | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's pipe transport

    def data_received(self, data: bytes) -> None:
        self.pump.queue.put_nowait(data)
        if self.pump.queue.qsize() >= _MAX_CHUNKS and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def eof_received(self) -> bool:
        self.pump.queue.put_nowait(_EOF)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            logger.error("standard input: read failed: %s", describe_error(exc))
            self.pump.queue.put_nowait(_EOF)

    def consumed(self) -> None:
        if self.paused and self.pump.queue.qsize() < _MAX_CHUNKS // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()


class StdinPump:
    """Read standard input, broadcast each line; on stop, broadcast what was already read.

    ``kind`` comes from :func:`stdin_kind_of`: a pipe is read by the loop, a file, a tty
    or a device by a thread with plain reads, and /dev/null or a closed fd not at all.
    """

    def __init__(self, server: Server, kind: str, fd: int = 0) -> None:
        from .pacing import Pacer

        self.server = server
        self.kind = kind
        self.fd = fd
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.splitter = LineSplitter(server.config.max_message_size)
        rate = server.config.broadcast_rate_limit
        self.pacer = Pacer(rate) if rate is not None else None  # stdin is read more slowly, nothing dropped
        self.lines = 0
        self.refused = 0  # lines not broadcast (EncodeError: over max_queued_bytes; with --topic-field: not JSON)
        field = server.config.topic_field
        # --topic-field: each line is a JSON value, broadcast decoded (compact JSON) to the topic its field names
        self._topic_of = topic_reader(field, server.config.max_topic_length) if field is not None else None
        self.ended = False
        self._batch: list[bytes] = []
        self._next = 0
        self._task: asyncio.Task[None] | None = None
        self._protocol: _PipeProtocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._stopping = threading.Event()
        self._slots = threading.Semaphore(_MAX_CHUNKS)

    def start(self, on_eof: Callable[[], None] | None = None) -> None:
        self._task = asyncio.create_task(self._run(on_eof), name="fastws-stdin")

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        if self.kind == "pipe":
            protocol = self._protocol = _PipeProtocol(self)
            # a duplicate: closing the transport then never frees fd 0 for a socket to take
            pipe = open(os.dup(self.fd), "rb", buffering=0)  # noqa: SIM115 - the transport closes it
            self._transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
        elif self.kind in ("file", "tty", "device"):
            threading.Thread(target=self._read_thread, args=(loop,), name="fastws-stdin", daemon=True).start()
        else:  # /dev/null or closed: nothing to read
            self.queue.put_nowait(_EOF)

    def _read_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while not self._stopping.is_set():
                self._slots.acquire()
                if self._stopping.is_set():
                    return
                chunk = os.read(self.fd, _CHUNK)
                if self._stopping.is_set():
                    if chunk:
                        logger.warning("standard input: %d bytes read while stopping were not broadcast",
                                       len(chunk))
                    return
                loop.call_soon_threadsafe(self.queue.put_nowait, chunk)
                if not chunk:
                    return
        except OSError as exc:
            logger.error("standard input: read failed: %s", describe_error(exc))
            loop.call_soon_threadsafe(self.queue.put_nowait, _EOF)
        except RuntimeError:  # the loop is closed: the server has stopped
            return

    def _consumed(self) -> None:
        if self._protocol is not None:
            self._protocol.consumed()
        elif self.kind != "pipe":
            self._slots.release()

    @staticmethod
    def _text(line: bytes) -> str:
        text = line.decode("utf-8", "replace")
        return text[:-1] if text.endswith("\r") else text

    def _refused(self, exc: EncodeError) -> None:
        self.refused += 1
        logger.warning("standard input: a line was not broadcast: %s", exc)

    def _decoded(self, line: bytes) -> tuple[Item, str | None]:
        """With --topic-field: the line's JSON value and its topic; EncodeError if it has none."""
        assert self._topic_of is not None
        try:
            item = msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError):
            raise EncodeError(f"--topic-field: the line is not JSON: {self._text(line)[:60]!r}") from None
        return item, self._topic_of(item)

    def _send(self, line: bytes) -> None:
        try:
            if self._topic_of is None:
                self.server.broadcast(self._text(line))
            else:
                item, topic = self._decoded(line)
                self.server.broadcast(item, topic=topic)
        except EncodeError as exc:  # e.g. longer than max_queued_bytes
            self._refused(exc)
        else:
            self.lines += 1

    def _send_batch(self) -> None:
        """The rest of the batch at once (no pacing): one call, one write per client."""
        lines = self._batch[self._next:]
        self._batch, self._next = [], 0
        if self._topic_of is None:
            results = self.server.broadcast_many([self._text(line) for line in lines])
        else:
            items: list[Item] = []
            topics: list[str | None] = []
            for line in lines:
                try:
                    item, topic = self._decoded(line)
                except EncodeError as exc:
                    self._refused(exc)
                    continue
                items.append(item)
                topics.append(topic)
            results = self.server.broadcast_many(items, topics=topics) if items else []
        for result in results:
            if isinstance(result, EncodeError):
                self._refused(result)
            else:
                self.lines += 1

    def _chunk(self, chunk: bytes) -> bool:
        """Split ``chunk`` into ``self._batch``; False at the end of input."""
        self._consumed()
        if chunk is _EOF or not chunk:
            self._batch, self._next = self.splitter.finish(), 0
            self.ended = True
            return False
        self._batch, self._next = self.splitter.feed(chunk), 0
        return True

    async def _run(self, on_eof: Callable[[], None] | None) -> None:
        await self._open()
        more = True
        while more:
            more = self._chunk(await self.queue.get())
            if self.pacer is None:
                self._send_batch()
            while self._next < len(self._batch):
                assert self.pacer is not None
                await self.pacer.wait()
                self._send(self._batch[self._next])
                self._next += 1
            self._batch = []
            # let the hub write this chunk out before the next one is taken
            await asyncio.sleep(0)
        self._close()
        logger.info("standard input ended after %s%s", plural(self.lines, "line"), self._skipped_text())
        if on_eof is not None:
            on_eof()

    def _skipped_text(self) -> str:
        n = self.splitter.skipped
        notes = [f"{plural(n, 'line')} longer than max_message_size skipped"] if n else []
        if self.refused:
            notes.append(f"{plural(self.refused, 'line')} refused by the server")
        return f" ({'; '.join(notes)})" if notes else ""

    def _close(self) -> None:
        self._stopping.set()
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def stop(self) -> None:
        """Stop reading; broadcast every line already read; log what could not be."""
        task = self._task
        if task is None:
            return
        self._close()
        if task.done() and self.ended:
            return  # everything was broadcast and logged at the end of input
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        before = self.lines
        while True:
            self._send_batch()
            if self.ended:
                break
            try:
                chunk = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self._chunk(chunk)
            await asyncio.sleep(0)  # one chunk per write, as while running
        if self.lines > before:
            logger.info("stopping: broadcast the %s already read from standard input",
                        plural(self.lines - before, "line"))
        if not self.ended and self.splitter.unfinished:
            logger.warning("stopping: an unfinished line of %d bytes from standard input was not broadcast",
                           self.splitter.unfinished)
        logger.info("standard input: %s broadcast%s", plural(self.lines, "line"), self._skipped_text())
