"""fastws: a WebSocket broadcast server for Python.

Each message is serialized once, framed once, and written to every client with one
write per loop turn (Cython core on picows and uvloop).
"""

from ._core import Client, Hub, encode_frame
from .component import ComposedComponent
from .config import ServerConfig
from .exceptions import ConfigError, EncodeError, FastWSError, ServerError
from .server import Server
from .websocket import WebSocketComponent

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ComposedComponent",
    "ConfigError",
    "EncodeError",
    "FastWSError",
    "Hub",
    "Server",
    "ServerConfig",
    "ServerError",
    "WebSocketComponent",
    "__version__",
    "encode_frame",
]
