"""The blueprint file format, as msgspec Structs.

::

    system:
      name: realtime_dashboard
      components:
        - {name: metrics_source, type: Source, config: {generator: metrics}}
        - {name: websocket_server, type: WebSocket, config: {port: 8080}}
      bindings:
        - {from_component: metrics_source, to_component: websocket_server, stream_name: input}

:func:`load_blueprint` decodes YAML into :class:`BlueprintFile` and turns every
decoding problem into a :class:`BlueprintError` whose message names the file,
and the line (syntax) or the field path (``components[1].config.port``).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any

import msgspec
import msgspec.yaml

from fastws.components._base import translate_validation_error
from fastws.exceptions import ConfigError

__all__ = [
    "BindingSpec",
    "BlueprintError",
    "BlueprintFile",
    "ComponentSpec",
    "QoSSpec",
    "SystemSpec",
    "decode_blueprint",
    "load_blueprint",
]

BufferSize = Annotated[int, msgspec.Meta(ge=0)]


class BlueprintError(ConfigError):
    """A blueprint is invalid. ``errors`` lists every problem found, one line each."""

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


class QoSSpec(msgspec.Struct, forbid_unknown_fields=True):
    #: Buffer size of the binding's stream (items).
    buffering: BufferSize | None = None
    reliability: str | None = None
    ordering: str | None = None


class BindingSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One binding, in any of the three forms (see :func:`fastws.blueprint.runner`)."""

    from_component: str | None = None
    to_component: str | None = None
    #: Form 1: port name on both ends.
    stream_name: str | None = None
    #: Form 2: sender port (default ``output``, or ``stream_name``).
    from_port: str | None = None
    #: Form 2: receiver port (default ``input``, or ``stream_name``).
    to_port: str | None = None
    #: Form 3: ``"component.port"``.
    from_: str | list[str] | None = msgspec.field(default=None, name="from")
    #: Form 3: ``"component.port"`` or a list of them (fan-out).
    to: str | list[str] | None = None
    #: Stream buffer in items; default 1000 (``qos.buffering`` also sets it).
    buffer_size: BufferSize | None = None
    qos: QoSSpec | None = None
    name: str | None = None
    description: str | None = None


class ComponentSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    #: A built-in name (``Source``, ``WebSocket``, ...) or ``"package.module:ClassName"``.
    type: str
    #: Component settings, checked by the component class.
    config: dict[str, Any] = {}
    description: str | None = None


class SystemSpec(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    components: list[ComponentSpec]
    bindings: list[BindingSpec] = []
    description: str | None = None
    version: str | None = None


class BlueprintFile(msgspec.Struct, forbid_unknown_fields=True):
    system: SystemSpec
    schema_version: str | None = None
    metadata: dict[str, Any] = {}


_LINE_RE = re.compile(r'\s*in "[^"]*", line (\d+), column (\d+)')


def _yaml_error(source: str, exc: msgspec.DecodeError) -> BlueprintError:
    text = str(exc)
    positions = _LINE_RE.findall(text)
    problem = "; ".join(p.strip() for p in _LINE_RE.sub("", text).splitlines() if p.strip())
    if positions:
        line, col = positions[-1]
        return BlueprintError(f"{source}: YAML syntax error at line {line}, column {col}: {problem}")
    return BlueprintError(f"{source}: YAML syntax error: {problem}")


def _readable_path(msg: str) -> str:
    # "system.components[1].config.port: ..." -> "components[1].config.port: ..."
    return msg[len("system.") :] if msg.startswith("system.") else msg


def decode_blueprint(data: bytes | str, source: str = "<blueprint>") -> BlueprintFile:
    """Decode YAML text into a :class:`BlueprintFile` or raise :class:`BlueprintError`."""
    try:
        raw = msgspec.yaml.decode(data)
    except msgspec.DecodeError as exc:
        raise _yaml_error(source, exc) from None
    return convert_blueprint(raw, source)


def convert_blueprint(raw: Any, source: str = "<blueprint>") -> BlueprintFile:
    """Check already-parsed data (dicts and lists) against the schema."""
    if raw is None:
        raise BlueprintError(f"{source}: the blueprint is empty; expected a mapping with a 'system' key")
    if not isinstance(raw, dict):
        raise BlueprintError(f"{source}: expected a mapping with a 'system' key, got {type(raw).__name__}")
    try:
        return msgspec.convert(raw, type=BlueprintFile)
    except msgspec.ValidationError as exc:
        msg = _readable_path(translate_validation_error(exc, "", raw))
        raise BlueprintError(f"{source}: {msg}") from None


def load_blueprint(path: str | os.PathLike[str]) -> BlueprintFile:
    """Read and decode a blueprint file."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BlueprintError(f"{source}: cannot read the blueprint: {exc.strerror or exc}") from None
    return decode_blueprint(data, source)
