"""Helpers shared by the ``fastws`` subcommands (``serve`` in fastws.cli, ``run``/``validate``
in fastws.blueprint.cli): one-line usage errors, addresses, plurals.

Kept apart so that neither command module imports the other.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import NoReturn

__all__ = [
    "LOOPS",
    "Parser",
    "UsageError",
    "describe_error",
    "hostport",
    "hide_listening_log",
    "plural",
    "url",
]

#: Choices of ``--loop``.
LOOPS = ("auto", "asyncio", "uvloop")


class UsageError(Exception):
    """A bad command line; the message is one line, ready to print."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``fastws serve: error: ...``), exit status 1."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def plural(n: int, word: str, words: str | None = None) -> str:
    """``plural(1, "line")`` -> ``"1 line"``; ``plural(2, "line")`` -> ``"2 lines"``."""
    return f"{n} {word if n == 1 else (words or word + 's')}"


def hostport(host: str, port: int) -> str:
    """``hostport("::", 8080)`` -> ``"[::]:8080"`` (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


#: Hosts that bind every interface.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def url(scheme: str, host: str, port: int, path: str = "/") -> str:
    """``url("ws", "::1", 8080)`` -> ``"ws://[::1]:8080/"``. A wildcard host (every interface)
    is shown as ``localhost``, an address a browser on this machine can open (browsers
    refuse ``0.0.0.0``)."""
    return f"{scheme}://{hostport('localhost' if host in WILDCARD_HOSTS else host, port)}{path}"


def interfaces_note(host: str) -> str:
    """``", on every interface (0.0.0.0)"`` for a wildcard host, else nothing."""
    return f", on every interface ({host or '0.0.0.0'})" if host in WILDCARD_HOSTS else ""


def _bind_reason(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, found by trying it (uvloop's error can lose the errno)."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host!r}: {exc.strerror}"
    for family, type_, proto, _, addr in infos:
        try:
            with socket.socket(family, type_, proto) as sock:
                sock.bind(addr)
        except OSError as exc:
            return _oserror_text(exc)
    return None


def _oserror_text(exc: OSError) -> str:
    """``Address already in use (errno 98)``: the errno once, in words and number."""
    if exc.errno is None:
        return str(exc.strerror or exc.args[-1] if exc.args else exc)
    return f"{exc.strerror or os.strerror(exc.errno)} (errno {exc.errno})"


def describe_error(exc: BaseException) -> str:
    """One line for an error a user can fix, without Python's ``[Errno N]`` decoration.

    A ``cannot listen on HOST:PORT`` error is explained by binding that address again,
    because uvloop reports several addresses as ``[Errno None]``.
    """
    from .exceptions import FastWSError, ServerError

    if isinstance(exc, FastWSError) and not isinstance(exc, ServerError):
        return str(exc)
    if isinstance(exc, ServerError):
        text = exc.strerror if exc.strerror else str(exc)
        head, sep, _ = text.partition(": ")
        if head.startswith("cannot listen on ") and sep:
            where = head[len("cannot listen on "):]
            extra = ""
            if " (" in where:  # "host:port (metrics_port)"
                where, _, rest = where.partition(" (")
                extra = f" ({rest}"
            host, _, port_text = where.rpartition(":")
            host = host.strip("[]")
            try:
                reason = _bind_reason(host, int(port_text))
            except ValueError:
                reason = None
            if reason is None and exc.errno is not None:
                reason = _oserror_text(OSError(exc.errno, os.strerror(exc.errno)))
            if reason is not None:
                return f"cannot listen on {hostport(host, int(port_text))}{extra}: {reason}"
        return text
    if isinstance(exc, OSError):
        if exc.filename is not None:
            return f"{exc.filename}: {_oserror_text(exc)}"
        return _oserror_text(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _HideListening(logging.Filter):
    """The CLI prints the address itself (with the scheme and the page); the server's own
    "fastws listening on" line would say it a second time."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "fastws.server" and str(record.msg).startswith("fastws listening on"))


def hide_listening_log() -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_HideListening())
