"""The ``fastws run`` and ``fastws validate`` subcommands.

``fastws.cli`` calls :func:`register` with its ``add_subparsers()`` object.
User errors (an invalid blueprint, a port in use) print one message per
problem on stderr and exit with status 1; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

import msgspec
import msgspec.yaml

from fastws.blueprint.runner import System
from fastws.exceptions import ConfigError, FastWSError
from fastws.loop import run as run_loop

__all__ = ["main", "register", "run_command", "validate_command"]

EXIT_OK = 0
EXIT_ERROR = 1


def register(subparsers: Any) -> None:
    """Add ``run`` and ``validate`` to an argparse subparsers object."""
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
        choices=["auto", "asyncio", "uvloop"],
        help="event loop: uvloop when installed (auto), or the asyncio default",
    )
    run.set_defaults(func=run_command)

    validate = subparsers.add_parser(
        "validate",
        help="check a blueprint without running it",
        description="Check SYSTEM.yaml: syntax, schema, component types and configs, bindings.",
    )
    validate.add_argument("blueprint", metavar="SYSTEM.yaml", help="blueprint file")
    _add_set_option(validate)
    validate.add_argument(
        "--strict", action="store_true", help="treat warnings (unknown config keys) as errors"
    )
    validate.set_defaults(func=validate_command)


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="COMPONENT.KEY=VALUE",
        help="override a component config value (VALUE is YAML: --set websocket_server.port=9000); repeatable",
    )


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["ws.port=0", "src.data_count=null"]`` -> ``{"ws": {"port": 0}, "src": {"data_count": None}}``."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, raw = item.partition("=")
        comp, dot, key = target.rpartition(".")
        if not eq or not dot or not comp or not key:
            raise ConfigError(f"--set {item!r}: expected COMPONENT.KEY=VALUE")
        try:
            value = msgspec.yaml.decode(raw) if raw.strip() else ""
        except msgspec.DecodeError:
            value = raw
        overrides.setdefault(comp, {})[key] = value
    return overrides


def _load(args: argparse.Namespace) -> System:
    system = System.from_yaml(
        args.blueprint, overrides=parse_overrides(args.set), strict=getattr(args, "strict", False)
    )
    for warning in system.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return system


def _fail(exc: BaseException) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_ERROR


def validate_command(args: argparse.Namespace) -> int:
    try:
        system = _load(args)
    except ConfigError as exc:
        return _fail(exc)
    print(
        f"{args.blueprint}: OK (system {system.name!r}: {len(system.blueprint.system.components)} components, {len(system.edges)} streams)"
    )
    return EXIT_OK


def _configure_logging(level: str) -> None:
    # fastws.cli.main configures logging (--log-level); only do it when called on our own.
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_command(args: argparse.Namespace) -> int:
    try:
        system = _load(args)
    except ConfigError as exc:
        return _fail(exc)
    _configure_logging(getattr(args, "log_level", "INFO"))
    try:
        run_loop(system.run(), getattr(args, "loop", "auto"))
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
    parser = argparse.ArgumentParser(prog="fastws")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
