"""TLS (``wss://``): the server-side ``ssl.SSLContext`` built from ``ssl:`` in the config.

``Server(ssl_context=ctx)`` takes a ready context instead (client certificates,
custom ciphers, SNI callbacks...). With TLS on, the fan-out still goes through
aiofastnet's C-level ``write_c`` (its TLS transport overrides it), so a broadcast is
still framed once; only the encryption is per client.
"""

from __future__ import annotations

import os
import ssl

from .config import SSLConfig
from .exceptions import ConfigError

__all__ = ["server_context"]


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
