"""Types shared by the server and the modules that plug into its handshake.

Kept apart so that ``auth``, ``metrics`` and ``page`` need not import ``server``
(and ``server`` can import them): one direction only, no import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["HTTPResponse", "Refusal", "Route", "HandshakeCheck"]

#: What a route handler returns: (status, headers, body).
HTTPResponse = tuple[int, dict[str, str], bytes]
#: What a refusing handshake check returns: (HTTP status, reason counted in stats).
Refusal = tuple[int, str]
#: A plain-HTTP ``GET`` handler; its argument is picows' ``WSUpgradeRequest`` (``None`` on ``metrics_port``).
Route = Callable[[Any], HTTPResponse]
#: A handshake check: ``None`` lets the client in, a :data:`Refusal` refuses it before the upgrade.
HandshakeCheck = Callable[[Any], "Refusal | None"]
