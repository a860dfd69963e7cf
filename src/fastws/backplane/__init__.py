"""Cross-node fan-out over an existing broker: :func:`create_backplane` picks the broker by URL.

The protocol, the wire format and the base class are in ``fastws.backplane.base``; each
broker (``redis``, ``nats``, the in-process ``local``) is a module of its own, imported only
when a URL names it (its client library is an optional extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..exceptions import ConfigError
from .base import Backplane, BackplaneOptions, split_frames

if TYPE_CHECKING:  # pragma: no cover
    from typing import Unpack

__all__ = ["Backplane", "BackplaneOptions", "create_backplane", "split_frames"]


def create_backplane(url: str, channel: str = "fastws", **options: Unpack[BackplaneOptions]) -> Backplane:
    """The backplane for ``url``: ``redis://``/``rediss://``, ``nats://``/``tls://``, ``memory://``."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss"):
        from .redis import RedisBackplane

        return RedisBackplane(url, channel, **options)
    if scheme in ("nats", "tls"):
        from .nats import NatsBackplane

        return NatsBackplane(url, channel, **options)
    if scheme == "memory":
        from .local import LocalBackplane

        return LocalBackplane(url, channel, **options)
    raise ConfigError(f"backplane: unsupported URL {url!r} (redis://host:port/db or nats://host:port)")
