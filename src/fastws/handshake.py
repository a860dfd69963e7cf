"""The upgrade request as RFC 6455 reads it, in front of picows' stricter check.

picows 2.3.1 refuses an upgrade unless ``Connection`` is exactly ``upgrade`` and
``Upgrade`` exactly ``websocket`` (any case): ``Connection: keep-alive, Upgrade``
(sent by Firefox before ESR 153 and by some proxies) gets 400 "CONNECTION header
value is not 'upgrade'". RFC 6455 section 4.2.1 asks only that ``Connection``
*contain* the token ``Upgrade`` and that ``Upgrade`` contain ``websocket``, both
case-insensitive, and RFC 9110 lets either header be a comma-separated list,
possibly over several header lines.

picows calls fastws' listener factory *before* it validates the request, with the
parsed headers (a mutable ``CIMultiDict``): :func:`accept_upgrade` reads the token
lists there and, when they ask for a WebSocket, rewrites both headers to the single
values picows accepts. See docs/upstream/picows-connection-header.md.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

__all__ = ["header_tokens", "accept_upgrade"]


def header_tokens(headers: Mapping[str, str], name: str) -> list[str]:
    """The comma-separated tokens of every ``name`` header line, stripped and lower-cased."""
    values: list[str] = headers.getall(name, []) if hasattr(headers, "getall") else (
        [headers[name]] if name in headers else [])
    return [token.strip().lower() for value in values for token in value.split(",") if token.strip()]


def accept_upgrade(headers: MutableMapping[str, str]) -> bool:
    """True if the request asks to upgrade (``Connection`` has the ``upgrade`` token).

    If it also names ``websocket`` in ``Upgrade``, both headers are rewritten to the
    single values picows checks for; otherwise they are left as sent (picows answers 400).
    """
    if "upgrade" not in header_tokens(headers, "Connection"):
        return False
    if "websocket" in header_tokens(headers, "Upgrade"):
        headers["Connection"] = "Upgrade"  # CIMultiDict: replaces every line of that name
        headers["Upgrade"] = "websocket"
    return True
