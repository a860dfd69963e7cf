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

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated

import msgspec
import msgspec.json
import msgspec.yaml

from fastws._types import ConfigDict, ConfigMapping, ConfigValue
from fastws.components._base import translate_validation_error
from fastws.config import FRAMEWORK_KEYS, did_you_mean
from fastws.exceptions import ConfigError, FastWSError

__all__ = [
    "BindingSpec",
    "BlueprintError",
    "BlueprintFile",
    "ComponentError",
    "ComponentSpec",
    "ConfigProblem",
    "QoSSpec",
    "SystemSpec",
    "check_component_config",
    "decode_blueprint",
    "load_blueprint",
    "split_known",
    "unknown_key_message",
]

BufferSize = Annotated[int, msgspec.Meta(ge=0)]


class BlueprintError(ConfigError):
    """A blueprint is invalid. ``errors`` lists every problem found, one line each;
    ``warnings`` what was found besides (unknown keys a component would ignore)."""

    def __init__(self, errors: list[str] | str, warnings: list[str] | None = None) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.warnings = list(warnings or ())
        super().__init__("\n".join(self.errors))


class ComponentError(FastWSError):
    """A component of a system failed to be built (``__init__``) or to start (``start()``).

    ``component`` is its name, ``stage`` ``"__init__"`` or ``"start()"``, ``error`` the exception.
    """

    def __init__(self, component: str, type_name: str, stage: str, error: BaseException) -> None:
        self.component = component
        self.type_name = type_name
        self.stage = stage
        self.error = error
        super().__init__(f"component {component!r} ({type_name}): {stage} failed: {error}")


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
    config: dict[str, ConfigValue] = {}
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
    metadata: dict[str, ConfigValue] = {}


_LINE_RE = re.compile(r'\s*in "[^"]*", line (\d+), column (\d+)')


# -- component configs: every problem, one wording ------------------------------------------

def split_known(
    known: Iterable[str], config: ConfigMapping, ignore: Iterable[str] = FRAMEWORK_KEYS
) -> tuple[ConfigDict, list[str]]:
    """``(the items of config whose key is known or ignored, the other keys in order)``.

    (Meant for ``ServerConfig``/component configs; it may move next to them in fastws.config.)
    """
    known_set, ignored = set(known), set(ignore)
    kept = {k: v for k, v in config.items() if k in known_set or k in ignored}
    return kept, [k for k in config if k not in kept]


def unknown_key_message(key: str, known: Iterable[str] | None) -> str:
    """The one wording of an unknown key: ``port_: unknown key; known keys are: host, port``."""
    if known is None:
        return f"{key}: unknown key"
    known = list(known)
    return f"{key}: unknown key; known keys are: {', '.join(known)}{did_you_mean(key, known)}"


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a component's config: ``key`` is the top-level config key (None:
    the config as a whole), ``path`` the dotted place (``components[1].config.ssl.certfile``)."""

    key: str | None
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"

    def strictly(self) -> ConfigProblem:
        """This problem as ``validate --strict`` reports it: an unknown key is refused, not ignored."""
        return dataclasses.replace(self, why=self.why.replace("unknown key, ignored", "unknown key (--strict)", 1))

    def blamed(self, source: str, component: str, overrides: ConfigMapping) -> str:
        """The line to show: a value from ``overrides`` (``--set``) is blamed on the override
        (``overrides: ws.port=70000: ...``), anything else on ``source``."""
        if self.key is not None and self.key in overrides:
            sub = self.path.partition(".config.")[2] or self.key
            return f"overrides: {component}.{sub}={_yaml_text(overrides[self.key])}: {self.why}"
        return f"{source}: {self.path}: {self.why}"


def _yaml_text(value: object) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


def _locate(line: str, where: str) -> tuple[str | None, str, str]:
    """``"components[0].config.port: must be ..."`` -> ``("port", "components[0].config.port", "must be ...")``."""
    if not line.startswith(where + "."):
        return None, where, line.removeprefix(where + ": ")
    path, sep, why = line.partition(": ")
    if not sep:
        return None, where, line
    m = re.match(r"[^.\[]+", path[len(where) + 1 :])
    return (m.group(0) if m else None), path, why


def check_component_config(
    cls: type, config: object, where: str
) -> tuple[list[ConfigProblem], list[ConfigProblem], ConfigDict]:
    """Check a component's config and report every problem, not only the first.

    Returns ``(errors, warnings, usable_config)``. ``cls.validate_config(config, where)``
    raises :class:`ConfigError` at the first key it cannot run with, and returns its warnings
    (an unknown key it ignores, in its own words); it is called again without each key it
    refuses until it accepts what is left (bounded by the number of keys).
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        return [ConfigProblem(None, where, f"expected a mapping of settings, got {config!r}")], [], {}
    errors: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    remaining = dict(config)
    validate = getattr(cls, "validate_config", None)
    for _ in range(len(config) + 1 if callable(validate) else 0):
        try:
            notes = validate(remaining, where)  # type: ignore[misc]
        except ConfigError as exc:
            lines = str(exc).splitlines() or [""]
        except (ValueError, TypeError) as exc:  # raised by a user component's own validate_config
            errors.append(ConfigProblem(None, where, str(exc)))
            break
        else:
            for line in notes or ():
                key, path, why = _locate(str(line), where)
                warnings.append(ConfigProblem(key, path, why))
            break
        progressed = False
        for line in lines:
            key, path, why = _locate(line, where)
            if why == "unknown field":  # msgspec's word, inside a nested struct (ssl, auth)
                why = "unknown key"
            errors.append(ConfigProblem(key, path, why))
            if key is not None and key in remaining:
                del remaining[key]
                progressed = True
        if not progressed:
            break
    order = {key: i for i, key in enumerate(config)}  # report in the order of the file
    errors.sort(key=lambda p: order.get(p.key, -1) if p.key is not None else -1)
    return errors, warnings, remaining


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


def convert_blueprint(raw: object, source: str = "<blueprint>") -> BlueprintFile:
    """Check already-parsed data (dicts and lists) against the schema."""
    if raw is None:
        raise BlueprintError(f"{source}: the blueprint is empty; expected a mapping with a 'system' key")
    if not isinstance(raw, dict):
        raise BlueprintError(f"{source}: expected a mapping with a 'system' key, got {type(raw).__name__}")
    try:
        return msgspec.convert(raw, type=BlueprintFile)
    except msgspec.ValidationError as exc:
        msg = _readable_path(translate_validation_error(exc, "", raw))
        if msg.endswith(": unknown field"):
            msg = msg.removesuffix("field") + "key"
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
