"""Types shared by the server and the modules that plug into its handshake.

Kept apart so that ``auth``, ``metrics`` and ``page`` need not import ``server``
(and ``server`` can import them): one direction only, no import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from picows import WSUpgradeRequest

__all__ = ["HTTPResponse", "Refusal", "Route", "HandshakeCheck", "HTTPRequest", "RequestHeaders"]

#: What a route handler returns: (status, headers, body).
HTTPResponse = tuple[int, dict[str, str], bytes]
#: What a refusing handshake check returns: (HTTP status, reason counted in stats).
Refusal = tuple[int, str]
#: A plain-HTTP ``GET`` handler; its argument is picows' ``WSUpgradeRequest``.
Route = Callable[["WSUpgradeRequest"], HTTPResponse]
#: A handshake check: ``None`` lets the client in, a :data:`Refusal` refuses it before the upgrade.
HandshakeCheck = Callable[["WSUpgradeRequest"], "Refusal | None"]


class RequestHeaders(Protocol):
    """What fastws reads of request headers: picows' ``CIMultiDict``, or the ``metrics_port``
    server's case-insensitive dict."""

    def get(self, key: str, /) -> str | None: ...


class HTTPRequest(Protocol):
    """What fastws' own routes and checks read of a request: picows' ``WSUpgradeRequest``
    on the WebSocket port, the ``metrics_port`` server's request there."""

    @property
    def path(self) -> bytes: ...

    @property
    def headers(self) -> RequestHeaders: ...
