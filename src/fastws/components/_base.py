"""Shared machinery of the built-in components: typed configs and batched I/O."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from fastws.component import ComposedComponent
from fastws.exceptions import ConfigError

__all__ = ["BuiltinComponent", "parse_config", "send_batch", "utc_now_iso", "translate_validation_error"]

#: Upper bound of items taken from an input in one go.
MAX_BATCH = 4096

_TYPE_NAMES = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}
_AT_RE = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_TICKS_RE = re.compile(r"`([^`]*)`")


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _friendly_type(spec: str) -> str:
    parts = [p.strip() for p in spec.split("|")]
    names = [_TYPE_NAMES.get(p, p) for p in parts]
    if set(parts) >= {"int", "float"}:
        names = [n for n in names if n != "an integer"]
    return " or ".join(dict.fromkeys(names))


def _value_at(data: Any, subpath: str) -> tuple[bool, Any]:
    value = data
    for m in re.finditer(r"\.([^.\[]+)|\[(\d+)\]", subpath):
        key, index = m.group(1), m.group(2)
        try:
            value = value[key] if key is not None else value[int(index)]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, value


def translate_validation_error(exc: msgspec.ValidationError, base: str, data: Any = None) -> str:
    """Turn msgspec's "Expected `int`, got `str` - at `$.x.y`" into "base.x.y: expected ..."."""
    m = _AT_RE.match(str(exc))
    assert m is not None
    msg, subpath = m.group("msg"), m.group("path") or ""
    unknown = re.match(r"Object contains unknown field `([^`]*)`", msg)
    missing = re.match(r"Object missing required field `([^`]*)`", msg)
    if unknown:
        return f"{_join(base, subpath + '.' + unknown.group(1))}: unknown field"
    if missing:
        return f"{_join(base, subpath + '.' + missing.group(1))}: missing required field"
    found, value = _value_at(data, subpath) if data is not None else (False, None)
    got = re.search(r", got `[^`]*`$", msg)
    if got:
        msg = msg[: got.start()]
    msg = _TICKS_RE.sub(lambda t: _friendly_type(t.group(1)), msg)
    msg = msg[:1].lower() + msg[1:]
    msg = re.sub(r"([<>]=? -?\d+)\.0\b", r"\1", msg)  # ">= 0.0" -> ">= 0"
    if found:
        msg += f", got {value!r}"
    elif got:
        msg += ", got " + _friendly_type(got.group(0)[7:-1])
    return f"{_join(base, subpath)}: {msg}"


def _join(base: str, subpath: str) -> str:
    if not base:
        return subpath.lstrip(".") or "<root>"
    return base + subpath


def parse_config(
    struct_type: type[msgspec.Struct],
    config: Any,
    path: str = "config",
    *,
    ignore: frozenset[str] = ComposedComponent.FRAMEWORK_KEYS,
) -> Any:
    """Check ``config`` (a dict) against ``struct_type`` and return the typed struct.

    Framework flags in ``ignore`` are dropped; any other unknown key is an error
    naming the key and the known ones. Errors are :class:`ConfigError` whose
    message starts with the key's path (``components[1].config.data_delay: ...``).
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {config!r}")
    known = struct_type.__struct_fields__
    cleaned = {}
    for key, value in config.items():
        if key in known:
            cleaned[key] = value
        elif key not in ignore:
            raise ConfigError(f"{path}.{key}: unknown key; known keys are: {', '.join(known)}")
    try:
        settings = msgspec.convert(cleaned, type=struct_type)
    except msgspec.ValidationError as exc:
        raise ConfigError(translate_validation_error(exc, path, cleaned)) from None
    check = getattr(settings, "check", None)
    if check is not None:
        check(path)
    return settings


async def send_batch(stream: ObjectSendStream[Any], items: list[Any]) -> None:
    """Send ``items`` in order, without yielding while the buffer has room.

    Items that arrive together thus stay together downstream (a WebSocket
    component drains its input before flushing, so they go out in one turn).
    """
    send_nowait = getattr(stream, "send_nowait", None)
    if send_nowait is None:
        for item in items:
            await stream.send(item)
        return
    for item in items:
        try:
            send_nowait(item)
        except anyio.WouldBlock:
            await stream.send(item)


async def receive_batches(stream: ObjectReceiveStream[Any]) -> AsyncIterator[list[Any]]:
    """Yield lists of the items available together: one await, then a drain."""
    receive_nowait = getattr(stream, "receive_nowait", None)
    while True:
        try:
            first = await stream.receive()
        except anyio.EndOfStream:
            return
        batch = [first]
        if receive_nowait is not None:
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
        yield batch


class BuiltinComponent(ComposedComponent):
    """Base of the built-in components: a typed config and batched processing.

    Subclasses set :attr:`Config` (a ``msgspec.Struct``) and implement
    :meth:`handle` (one item in, a result or ``None`` out), or override
    :meth:`process`.
    """

    Config: ClassVar[type[msgspec.Struct]]
    #: Names of the input ports, ``None`` for any single port, ``()`` for none.
    INPUT_PORTS: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        settings = self.validate_config(config, "config")
        super().__init__(name, config)
        self.settings = settings

    @classmethod
    def validate_config(cls, config: dict[str, Any] | None, path: str = "config") -> Any:
        """Raise :class:`ConfigError` naming ``path.key`` if ``config`` is invalid."""
        return parse_config(cls.Config, config, path)

    @classmethod
    def input_ports(cls, config: dict[str, Any] | None = None) -> tuple[str, ...] | None:
        """The input port names this component reads (``None``: one port, any name)."""
        return cls.INPUT_PORTS

    def handle(self, item: Any) -> Any:
        return item

    async def process_item(self, item: Any) -> Any:
        return self.handle(item)

    async def process(self) -> None:
        """Like the base class, but a batch at a time, so bursts stay together."""
        try:
            stream = next(iter(self.receive_streams.values()), None)
            if stream is None:
                return
            async with stream:
                async for batch in receive_batches(stream):
                    out = self.handle_batch(batch)
                    if out:
                        await self.emit(out)
                        if not self.send_streams:
                            # every downstream is gone; keep draining so upstream is not blocked
                            continue
        finally:
            await self.close_outputs()

    def handle_batch(self, batch: Iterable[Any]) -> list[Any]:
        out = []
        handle = self.handle
        for item in batch:
            try:
                result = handle(item)
            except Exception as exc:
                self.record_error(f"process_item failed: {exc!r}")
                self.logger.exception("%s: item failed and was skipped", self.name)
                continue
            self.increment_processed()
            if result is not None:
                out.append(result)
        return out

    async def emit(self, items: list[Any]) -> None:
        """Send ``items`` to every output; a closed downstream is dropped."""
        for port, stream in list(self.send_streams.items()):
            try:
                await send_batch(stream, items)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.logger.warning("%s: output %r is closed; it receives no more items", self.name, port)
                del self.send_streams[port]
                await stream.aclose()
