"""TLS (``wss://``): the server-side ``ssl.SSLContext`` built from ``ssl:`` in the config.

``Server(ssl_context=ctx)`` takes a ready context instead (client certificates,
custom ciphers, SNI callbacks...). With TLS on, the fan-out still goes through
aiofastnet's C-level ``write_c`` (its TLS transport overrides it), so a broadcast is
still framed once; only the encryption is per client.

TLS handshake timeouts (``handshake_timeout``) are counted in ``handshake_timeouts``:
aiofastnet drops a connection whose TLS handshake is too slow without telling
anyone (the protocol is only created after the handshake), so :func:`watch_handshakes`
keeps its own deadline per accepted connection, closes it and counts it; aiofastnet's
own timeout stays as a backstop (:func:`backstop_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import weakref
from collections.abc import Callable
from typing import Protocol, cast

from .config import SSLConfig
from .exceptions import ConfigError

__all__ = ["server_context", "backstop_timeout", "watch_handshakes"]

logger = logging.getLogger("fastws.tls")


class _HookedServer(Protocol):
    """aiofastnet's ``Server``: calls ``_attach(transport)`` for each accepted connection."""

    _attach: Callable[[asyncio.Transport], object]


def server_context(config: SSLConfig, path: str = "config.ssl") -> ssl.SSLContext:
    """A TLS server context (TLS 1.2+, Python's secure defaults) for ``config``.

    Raises :class:`ConfigError` naming ``ssl.certfile`` or ``ssl.keyfile`` when the
    files cannot be read or do not match.
    """
    for key in ("certfile", "keyfile"):
        name = getattr(config, key)
        if name is not None and not os.path.isfile(name):
            raise ConfigError(f"{path}.{key}: no such file: {name}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.certfile, config.keyfile, config.password)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{path}.certfile: cannot load the certificate chain and key "
            f"({config.certfile}, {config.keyfile or 'key in certfile'}): {exc.reason or exc}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}.certfile: {exc.strerror or exc}: {exc.filename or config.certfile}") from None
    return ctx


#: Seconds after both handshake deadlines before a connection that never upgraded is dropped.
LINGER_GRACE = 0.5


def backstop_timeout(handshake_timeout: float) -> float:
    """The ``ssl_handshake_timeout`` for aiofastnet: later than fastws' own deadline, so
    that :func:`watch_handshakes` sees (and counts) every timeout first."""
    return handshake_timeout * 2 + 1.0


def watch_handshakes(server: asyncio.AbstractServer, timeout: float, on_timeout: Callable[[], None]) -> bool:
    """Close and count (``on_timeout()``) each TLS connection of ``server`` that has not
    finished its handshake ``timeout`` seconds after it was accepted.

    ``server`` is what picows' ``ws_create_server`` returned with ``ssl=``: aiofastnet's
    ``Server``, which calls ``_attach(transport)`` for every accepted connection as soon
    as its TLS handshake starts. Returns False (and logs) if that hook is not there, in
    which case aiofastnet's own timeout applies, uncounted.
    """
    attach = getattr(server, "_attach", None)
    if attach is None or not callable(attach):
        logger.warning("TLS handshake timeouts will not be counted: unexpected server type %s",
                       type(server).__name__)
        return False
    loop = asyncio.get_running_loop()

    def check(ref: weakref.ref[asyncio.Transport]) -> None:
        transport = ref()
        if transport is None or transport.is_closing():
            return  # gone already: finished and closed, or failed before the deadline
        if transport.get_extra_info("cipher") is None:  # set when the handshake completes
            on_timeout()
            transport.abort()

    def drop_if_never_upgraded(ref: weakref.ref[asyncio.Transport]) -> None:
        # picows closes a connection that did not upgrade in time gracefully, and aiofastnet's TLS
        # transport then waits ~30 s for the client's close_notify: a silent client would hold a
        # descriptor that long (docs/upstream/picows-handshake-timeout-future.md). By now the TLS
        # deadline and picows' upgrade deadline have both passed: drop what never upgraded.
        transport = ref()
        if transport is None:
            return
        if getattr(transport.get_protocol(), "listener", None) is None:
            transport.abort()

    def attach_and_watch(transport: asyncio.Transport) -> object:
        ref = weakref.ref(transport)  # aiofastnet keeps the transports in a WeakSet too
        loop.call_later(timeout, check, ref)
        loop.call_later(2 * timeout + LINGER_GRACE, drop_if_never_upgraded, ref)
        return attach(transport)

    cast(_HookedServer, server)._attach = attach_and_watch
    return True
