"""Blueprints: YAML systems of components wired by streams.

``System.from_yaml(path)`` loads and checks a blueprint; ``await system.run()``
runs it. ``fastws validate`` / ``fastws run`` do the same from the command line.
"""

from __future__ import annotations

from fastws.blueprint.runner import DEFAULT_BUFFER_SIZE, Edge, FanOutSendStream, System, validate_blueprint
from fastws.blueprint.schema import (
    BindingSpec,
    BlueprintError,
    BlueprintFile,
    ComponentSpec,
    SystemSpec,
    decode_blueprint,
    load_blueprint,
)

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "BindingSpec",
    "BlueprintError",
    "BlueprintFile",
    "ComponentSpec",
    "Edge",
    "FanOutSendStream",
    "System",
    "SystemSpec",
    "decode_blueprint",
    "load_blueprint",
    "validate_blueprint",
]
