"""The ``fastws run`` and ``fastws validate`` subcommands.

``fastws.cli`` calls :func:`register` with its ``add_subparsers()`` object.
User errors (an invalid blueprint, a port in use, a component that fails to
build or start) print one line per problem on stderr and exit with status 1;
no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec
import msgspec.yaml

from fastws._cliutil import (
    LOOPS,
    Parser,
    UsageError,
    describe_error,
    hide_listening_log,
    interfaces_note,
    plural,
    url,
)
from fastws._types import ConfigDict
from fastws.blueprint.runner import System
from fastws.blueprint.schema import BlueprintError, ComponentError
from fastws.exceptions import ConfigError, FastWSError
from fastws.loop import run as run_loop

__all__ = ["main", "parse_overrides", "register", "run_command", "validate_command"]

EXIT_OK = 0
EXIT_ERROR = 1


_P = TypeVar("_P", bound=argparse.ArgumentParser)


def register(
    subparsers: argparse._SubParsersAction[_P], add_common: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add ``run`` and ``validate`` to an argparse subparsers object.

    ``add_common(parser)`` adds the options every subcommand takes (``--log-level``).
    """
    run = subparsers.add_parser(
        "run",
        help="run a blueprint (a system of components)",
        description="Load SYSTEM.yaml, check it, start its components and run until the "
        "sources end and the streams drain, or until SIGINT/SIGTERM.",
    )
    run.add_argument("blueprint", metavar="SYSTEM.yaml", help="blueprint file")
    _add_set_option(run)
    run.add_argument(
        "--loop",
        default="auto",
        choices=LOOPS,
        help="event loop: uvloop when installed (auto), or the asyncio default",
    )
    run.set_defaults(func=run_command)

    validate = subparsers.add_parser(
        "validate",
        help="check a blueprint without running it",
        description="Check SYSTEM.yaml: syntax, schema, component types and configs, bindings. "
        "Every problem is reported, one line each.",
    )
    validate.add_argument("blueprint", metavar="SYSTEM.yaml", help="blueprint file")
    _add_set_option(validate)
    validate.add_argument(
        "--strict",
        action="store_true",
        help="treat warnings (unknown keys in a component config) as errors",
    )
    validate.set_defaults(func=validate_command)
    if add_common is not None:
        add_common(run)
        add_common(validate)


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="COMPONENT.KEY=VALUE",
        help="override a component config value (VALUE is YAML: --set websocket_server.port=9000); repeatable",
    )


def parse_overrides(items: Sequence[str]) -> dict[str, ConfigDict]:
    """``["ws.port=0", "src.data_count=null"]`` -> ``{"ws": {"port": 0}, "src": {"data_count": None}}``.

    VALUE is YAML; text that is not valid YAML (``x=[``) is an error, not a string:
    quote it (``x='"["'``) to mean the text.
    """
    overrides: dict[str, ConfigDict] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        comp, dot, key = target.rpartition(".")
        if not eq or not dot or not comp or not key:
            raise ConfigError(f"--set {item}: expected COMPONENT.KEY=VALUE")
        try:
            value = msgspec.yaml.decode(raw) if raw.strip() else ""
        except msgspec.DecodeError as exc:
            problem = str(exc).splitlines()[0] if str(exc) else "invalid"
            raise ConfigError(
                f"--set {item}: VALUE is not valid YAML ({problem}); quote it to pass it as text"
            ) from None
        overrides.setdefault(comp, {})[key] = value
    return overrides


def _load(args: argparse.Namespace, strict: bool = False) -> System:
    return System.from_yaml(args.blueprint, overrides=parse_overrides(args.set), strict=strict)


def _set_blamed(line: str) -> str:
    """``overrides: ws.port=x: ...`` (the runner's words) -> ``--set ws.port=x: ...`` (the user's)."""
    if not line.startswith("overrides: "):
        return line
    rest = line[len("overrides: "):]
    return f"--set {rest}" if "=" in rest.partition(": ")[0] else f"--set: {rest}"


def _fail(exc: BaseException) -> int:
    for warning in exc.warnings if isinstance(exc, BlueprintError) else ():
        print(f"warning: {_set_blamed(warning)}", file=sys.stderr)
    lines = exc.errors if isinstance(exc, BlueprintError) else [describe_error(exc)]
    for line in lines:
        print(f"error: {_set_blamed(line)}", file=sys.stderr)
    return EXIT_ERROR


def validate_command(args: argparse.Namespace) -> int:
    strict = bool(getattr(args, "strict", False))
    # validate reports each problem itself, once; a component class that also logs what it
    # ignores (an unknown key) would say it a second time
    logging.disable(logging.WARNING)
    try:
        system = _load(args, strict)
    except ConfigError as exc:
        return _fail(exc)
    finally:
        logging.disable(logging.NOTSET)
    for warning in system.warnings:
        print(f"warning: {_set_blamed(warning)}", file=sys.stderr)
    n = len(system.blueprint.system.components)
    notes = f"; {plural(len(system.warnings), 'warning')}" if system.warnings else ""
    print(
        f"{args.blueprint}: OK (system {system.name!r}: {plural(n, 'component')}, "
        f"{plural(len(system.edges), 'stream')}{notes})"
    )
    return EXIT_OK


def _configure_logging(level: str) -> None:
    # fastws.cli.main configures logging (--log-level); only do it when called on our own.
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hide_listening_log()


def announce(system: System) -> None:
    """Print the ``ws://`` address (and the page's) of each WebSocket component of ``system``."""
    for name, comp in system.components.items():
        config = getattr(comp, "server_config", None)
        port = getattr(comp, "port", None)
        if config is None or not isinstance(port, int):
            continue
        tls = config.ssl is not None
        line = f"fastws: {name}: serving on {url('wss' if tls else 'ws', config.host, port)}"
        if config.page:
            line += f", live page on {url('https' if tls else 'http', config.host, port, config.page_path)}"
        print(line + interfaces_note(config.host), file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    try:
        system = _load(args)
    except ConfigError as exc:
        return _fail(exc)
    _configure_logging(getattr(args, "log_level", "INFO"))
    try:
        run_loop(system.run(on_started=announce), getattr(args, "loop", "auto"))
    except ComponentError as exc:
        cause = describe_error(exc.error)
        print(f"error: component {exc.component!r} ({exc.type_name}): {exc.stage} failed: {cause}",
              file=sys.stderr)
        return EXIT_ERROR
    except (FastWSError, OSError) as exc:
        return _fail(exc)
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    if system.failures:
        for name, error in system.failures.items():
            print(f"error: component {name!r} failed: {error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (``python -m fastws.blueprint.cli run SYSTEM.yaml``)."""
    parser = Parser(prog="fastws")
    register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return EXIT_ERROR
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
