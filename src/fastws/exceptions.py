"""Exceptions raised by fastws.

Kept in plain Python (as picows keeps ``picows/types.py``) so that the compiled
core and the pure-Python layer raise the same classes.
"""

from __future__ import annotations

__all__ = ["FastWSError", "ConfigError", "ServerError", "EncodeError"]


class FastWSError(Exception):
    """Base class of every error fastws raises on purpose."""


class ConfigError(FastWSError, ValueError):
    """A configuration value is missing, unknown or out of range.

    The message names the offending key (``config.port``, ``components[1].config.port``).
    """


class ServerError(FastWSError, OSError):
    """The server could not start (port in use, address not available, ...)."""


class EncodeError(FastWSError, TypeError):
    """An item cannot be serialized to a WebSocket frame."""
