"""Optional dependencies: which extra a feature needs, checked without importing it.

``fastws validate`` and the runtime use :func:`missing_extra` so that a blueprint with
``backplane: redis://...`` fails the same way, with the same message, in both.
"""

from __future__ import annotations

import importlib.util

__all__ = ["BACKPLANE_EXTRAS", "missing_extra"]

#: URL scheme -> (importable module, the distribution that provides it, the fastws extra)
BACKPLANE_EXTRAS: dict[str, tuple[str, str, str]] = {
    "redis": ("redis", "redis", "redis"),
    "rediss": ("redis", "redis", "redis"),
    "nats": ("nats", "nats-py", "nats"),
    "tls": ("nats", "nats-py", "nats"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        return False


def missing_extra(url: str | None) -> str | None:
    """The problem with backplane ``url`` if its client library is not installed, else ``None``.

    ``missing_extra("redis://10.0.0.5:6379/0")`` is ``None`` when the ``redis`` package can be
    imported, and otherwise ``"backplane: redis:// needs the redis package (the fastws[redis]
    extra): pip install redis"``. ``None``, ``memory://`` and unknown schemes are not this function's
    concern (the config check reports bad URLs).
    """
    if not url:
        return None
    scheme = url.partition("://")[0].lower()
    if scheme not in BACKPLANE_EXTRAS:
        return None
    module, dist, extra = BACKPLANE_EXTRAS[scheme]
    if _installed(module):
        return None
    return f"backplane: {scheme}:// needs the {dist} package (the fastws[{extra}] extra): pip install {dist}"
