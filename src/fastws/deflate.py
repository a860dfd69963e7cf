"""permessage-deflate negotiation (RFC 7692 section 7.1), for the upgrade handler.

fastws compresses each broadcast once for every client that negotiated the extension
(``fastws._deflate``), which needs each message compressed on its own: the answer
always carries ``server_no_context_takeover``. The offer's other parameters:

* ``server_max_window_bits=N``: accepted and echoed; broadcasts are compressed with
  the smallest window any connected deflate client asked for (a smaller window is
  valid for every larger limit), messages sent to one client with its own.
* ``client_max_window_bits`` (with or without a value): accepted; the answer leaves it
  out, which RFC 7692 7.1.2.2 allows: fastws inflates with a 32 KiB window, which
  decodes any window the client uses.
* ``client_no_context_takeover``: accepted and echoed; the client's messages then need
  no decompressor of their own between messages.

An offer with an unknown parameter, a repeated one or a value out of range is
declined (the next offer is tried; none left: the connection opens uncompressed).
The handshake never fails because of an offer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["Agreement", "negotiate", "parse_offers"]

EXTENSION = "permessage-deflate"
_PARAMS = frozenset(
    {"server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits", "client_max_window_bits"}
)


class Agreement(NamedTuple):
    """What the server answered: the header value and what it means for the connection."""

    header: str  # the Sec-WebSocket-Extensions value of the 101 response
    window_bits: int  # server_max_window_bits: the largest window fastws may compress with
    client_no_context_takeover: bool  # the client resets its compressor after each message


def parse_offers(headers: Iterable[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Split ``Sec-WebSocket-Extensions`` header values into ``(name, [(param, value)])`` offers."""
    offers: list[tuple[str, list[tuple[str, str | None]]]] = []
    for header in headers:
        for item in header.split(","):
            parts = [p.strip() for p in item.split(";")]
            if not parts[0]:
                continue
            params: list[tuple[str, str | None]] = []
            for part in parts[1:]:
                if not part:
                    continue
                name, eq, value = part.partition("=")
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                params.append((name.strip().lower(), value if eq else None))
            offers.append((parts[0].lower(), params))
    return offers


def _bits(value: str | None) -> int | None:
    # RFC 7692 7.1.2: 1*DIGIT without leading zeros, 8-15
    if value is None or not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= 15:
        return None
    return int(value)


def _accept(params: list[tuple[str, str | None]]) -> Agreement | None:
    names = [n for n, _ in params]
    if len(set(names)) != len(names) or not set(names) <= _PARAMS:
        return None
    window_bits = 15
    client_nct = False
    answer = [EXTENSION, "server_no_context_takeover"]
    for name, value in params:
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            if name == "client_no_context_takeover":
                client_nct = True
                answer.append(name)
        elif name == "server_max_window_bits":
            bits = _bits(value)
            if bits is None:
                return None
            window_bits = bits
            answer.append(f"server_max_window_bits={bits}")
        elif value is not None and _bits(value) is None:  # client_max_window_bits
            return None
    return Agreement("; ".join(answer), window_bits, client_nct)


def negotiate(headers: Iterable[str]) -> Agreement | None:
    """The answer to the first acceptable permessage-deflate offer, or None (no extension)."""
    for name, params in parse_offers(headers):
        if name == EXTENSION:
            agreed = _accept(params)
            if agreed is not None:
                return agreed
    return None
