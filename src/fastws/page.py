"""The built-in page: ``GET page_path`` (default ``/``) serves ``static/dashboard.html``.

Turned on by ``page: true`` in the server config (``fastws serve --page``). The page
is one self-contained HTML file (inline CSS and JavaScript, nothing fetched from
elsewhere) that connects back to the server it was loaded from and shows the
connection state, a message counter, the last messages as JSON and a live chart
per numeric field; it reconnects with backoff when the server goes away. With topics
chosen (its field, or ``?topics=a,b``) it connects in envelope mode, shows per-topic
counts, offsets and recovery events, and resumes with ``since``/``epoch`` after a drop
(docs/topics.md).
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["PAGE_HEADERS", "page_bytes", "page_route"]

#: Response headers of the page. The CSP allows only the page's own inline code
#: and WebSocket connections (to the page's server, or another one given by ``?url=``).
PAGE_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; connect-src ws: wss:; base-uri 'none'; form-action 'none'"
    ),
}


@functools.cache
def page_bytes() -> bytes:
    """The page's HTML, read once from the package data."""
    return resources.files("fastws").joinpath("static", "dashboard.html").read_bytes()


def page_route(request: object = None) -> tuple[int, dict[str, str], bytes]:
    """A :meth:`fastws.Server.add_route` handler that answers with the page."""
    return 200, dict(PAGE_HEADERS), page_bytes()
