"""Built-in pipeline components and the registry that maps blueprint ``type`` names to classes.

A blueprint's ``type`` is one of the names in :data:`BUILTIN_TYPES` (``Source``,
``Sink``, ``Filter``, ``Transformer``, ``StreamProcessor``, ``WebSocket``), a
name added with :func:`register_component`, or an import path
``"package.module:ClassName"`` of any :class:`~fastws.component.ComposedComponent`
subclass.
"""

from __future__ import annotations

import importlib

from fastws.component import ComposedComponent
from fastws.components.filter import Filter
from fastws.components.sink import Sink
from fastws.components.source import Source
from fastws.components.stream_processor import StreamProcessor
from fastws.components.transformer import Transformer
from fastws.exceptions import ConfigError

__all__ = [
    "BUILTIN_TYPES",
    "Filter",
    "Sink",
    "Source",
    "StreamProcessor",
    "Transformer",
    "component_types",
    "register_component",
    "resolve_component_type",
]

_REGISTRY: dict[str, type[ComposedComponent]] = {
    "Source": Source,
    "Sink": Sink,
    "Filter": Filter,
    "Transformer": Transformer,
    "StreamProcessor": StreamProcessor,
}

#: Type names that resolve without an import path.
BUILTIN_TYPES = ("Source", "Sink", "Filter", "Transformer", "StreamProcessor", "WebSocket")


def _websocket_class() -> type[ComposedComponent]:
    # Imported lazily: the WebSocket component needs the compiled core.
    from fastws.websocket import WebSocketComponent

    return WebSocketComponent


def register_component(type_name: str, cls: type[ComposedComponent]) -> None:
    """Make ``type: <type_name>`` in a blueprint build ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, ComposedComponent)):
        raise TypeError(f"{cls!r} is not a subclass of fastws.component.ComposedComponent")
    _REGISTRY[type_name] = cls


def component_types() -> list[str]:
    """Every registered type name."""
    return list(dict.fromkeys([*BUILTIN_TYPES, *_REGISTRY]))


def resolve_component_type(type_name: str, path: str = "type") -> type[ComposedComponent]:
    """Return the class for a blueprint ``type``; raise :class:`ConfigError` naming ``path``."""
    if type_name == "WebSocket" and "WebSocket" not in _REGISTRY:
        try:
            return _websocket_class()
        except ImportError as exc:
            raise ConfigError(f"{path}: the WebSocket component is not available: {exc}") from None
    cls = _REGISTRY.get(type_name)
    if cls is not None:
        return cls
    if ":" not in type_name:
        raise ConfigError(
            f"{path}: unknown component type {type_name!r}; known types are: "
            f"{', '.join(component_types())}, or an import path 'package.module:ClassName'"
        )
    module_name, _, attr = type_name.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{path}: invalid import path {type_name!r}; expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{path}: cannot import module {module_name!r}: {exc}") from None
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{path}: module {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(obj, type) and issubclass(obj, ComposedComponent)):
        raise ConfigError(f"{path}: {type_name!r} is not a subclass of fastws.component.ComposedComponent")
    return obj
