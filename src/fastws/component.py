"""The component contract, all of it in this one module.

A component is compatible with upstream ``ComposedComponent`` (autocoder_cc): it is
built as ``Cls(name, config)``, owns named input ports (``receive_streams``) and
output ports (``send_streams``), both dictionaries of **anyio memory object
streams** keyed by port name, and is driven through async lifecycle methods. A
system (``fastws.blueprint``) or the user wires the streams; the component only
reads and writes.

What a subclass declares (class attributes, all with defaults here), and what the
blueprint runner reads (through the classmethods below, nothing else):

==========================  ==============================================================
``Config``                  a ``msgspec.Struct`` of the config keys, or ``None`` (any keys)
``INPUT_PORTS``             input port names; ``None``: one port of any name; ``()``: none
``OUTPUT_PORTS``            output port names; ``None``: any
``READS_ALL_INPUTS``        ``True`` if ``process()`` reads every input port, not only the
                            first. A class that overrides ``process()`` without saying is
                            taken to read them all.
``FRAMEWORK_KEYS``          config keys that frameworks add; accepted silently
``REQUIRED_DEPENDENCIES``   what ``get_required_dependencies()`` returns
``LISTENS``                 ``True`` if the component accepts network connections; then
                            :meth:`ComposedComponent.listening_port` gives the bound port
                            once started (``System.port()`` reads both)
==========================  ==============================================================

Config keys that are neither in ``Config`` nor in ``FRAMEWORK_KEYS`` are accepted
with one warning naming each (``health_check()["ignored_keys"]``), as upstream never
refused a key; keys in ``Config`` keep their strict type checks.

The lifecycle, as upstream's harness calls it: ``setup(ctx)`` -> ``start()`` ->
``is_ready()`` -> ``process()`` (a task) -> ``cleanup()``. ``start()`` calls
``setup()`` and ``stop()`` calls ``cleanup()``; both are safe to call twice.

Processing: :meth:`ComposedComponent.process` reads the first input port in
batches (one await, then what is already waiting), hands them to
:meth:`process_batch`, whose default calls :meth:`process_item` per item and
sends each result that is not ``None`` to every output. Differences from
upstream, on purpose:

* a failing item is logged, counted with :meth:`record_error` and skipped; the
  next item is processed;
* every output stream is closed when the input ends, so downstream sees the end;
* a stream of the wrong type (an ``asyncio.Queue``...) is a ``TypeError`` naming
  the port, not a silent end of the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ._types import ConfigDict, ConfigMapping, Item, Record, Settings
from .config import FRAMEWORK_KEYS, ConfigRequirement, config_requirements, did_you_mean, parse_struct

__all__ = ["ComponentStatus", "ComposedComponent", "receive_batches", "send_batch"]

#: Upper bound of items taken from an input in one go.
MAX_BATCH = 4096


@dataclass
class ComponentStatus(Mapping[str, object]):
    """What upstream's ``ComponentStatus`` holds: the harness sets and reads its attributes.

    Also a read-only mapping of the same names (``status["items_processed"]``), for
    callers that used the dict ``get_status()`` returned before.
    """

    name: str = ""
    component: str = ""
    is_running: bool = False
    is_healthy: bool = True
    items_processed: int = 0
    errors_encountered: int = 0
    last_error: str | None = None
    started_at: float | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    def __getitem__(self, key: str) -> object:
        if key not in _STATUS_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_STATUS_KEYS)

    def __len__(self) -> int:
        return len(_STATUS_KEYS)


_STATUS_KEYS = tuple(f.name for f in fields(ComponentStatus))


class ComposedComponent:
    """Base class of every pipeline component (see the module docstring for the contract).

    Subclasses override :meth:`process_item` (one item in, one result or ``None``
    out) or, for components with several inputs or none, :meth:`process`.
    """

    # -- the declarations the runner reads -------------------------------------------

    Config: ClassVar[type[msgspec.Struct] | None] = None
    INPUT_PORTS: ClassVar[tuple[str, ...] | None] = None
    OUTPUT_PORTS: ClassVar[tuple[str, ...] | None] = None
    READS_ALL_INPUTS: ClassVar[bool] = False
    FRAMEWORK_KEYS: ClassVar[frozenset[str]] = FRAMEWORK_KEYS
    REQUIRED_DEPENDENCIES: ClassVar[tuple[str, ...]] = ("anyio",)
    LISTENS: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "process" in cls.__dict__ and "READS_ALL_INPUTS" not in cls.__dict__:
            cls.READS_ALL_INPUTS = True  # it reads its inputs its own way: do not limit them

    @classmethod
    def parse_config(cls, config: ConfigMapping | None, path: str = "config") -> tuple[Settings, tuple[str, ...]]:
        """``(settings, ignored keys)``; raises :class:`fastws.ConfigError` naming ``path.key``."""
        if cls.Config is None:
            return None, ()
        return parse_struct(cls.Config, config, path, ignore=cls.FRAMEWORK_KEYS, unknown="ignore")

    @classmethod
    def validate_config(cls, config: ConfigMapping | None, path: str = "config") -> list[str]:
        """Raise :class:`fastws.ConfigError` for a config this component cannot run with;
        return the warnings (one per ignored key)."""
        _, ignored = cls.parse_config(config, path)
        return [cls._ignored_warning(path, key) for key in ignored]

    @classmethod
    def _ignored_warning(cls, path: str, key: str) -> str:
        fields = cls.Config.__struct_fields__ if cls.Config is not None else ()
        return (f"{path}.{key}: unknown key, ignored ({cls.__name__} keys are: {', '.join(fields)})"
                f"{did_you_mean(key, fields)}")

    @classmethod
    def input_ports(cls, config: ConfigMapping | None = None) -> tuple[str, ...] | None:
        """The input port names (``None``: one port, any name); may depend on the config."""
        return cls.INPUT_PORTS

    @classmethod
    def output_ports(cls, config: ConfigMapping | None = None) -> tuple[str, ...] | None:
        """The output port names (``None``: any)."""
        return cls.OUTPUT_PORTS

    @classmethod
    def reads_all_inputs(cls, config: ConfigMapping | None = None) -> bool:
        """Whether ``process()`` reads every input port (else only the first)."""
        ports = cls.input_ports(config)
        return cls.READS_ALL_INPUTS or (ports is not None and len(ports) > 1)

    # -- construction ----------------------------------------------------------------

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        settings, ignored = type(self).parse_config(config, f"{name}.config")  # first: config may not be a dict
        self.name = name
        self.config: ConfigDict = dict(config) if config else {}
        self.logger = logging.getLogger(f"fastws.component.{name}")
        self.receive_streams: dict[str, ObjectReceiveStream[Item]] = {}
        self.send_streams: dict[str, ObjectSendStream[Item]] = {}
        self._status = ComponentStatus(name=name, component=type(self).__name__)
        self._ready = False
        self.max_batch = MAX_BATCH
        self.settings: Settings = settings
        #: Config keys this component does not know and ignores (one warning each).
        self.ignored_keys: tuple[str, ...] = ignored
        for key in ignored:
            self.logger.warning("%s", self._ignored_warning(f"{name}.config", key))

    # -- lifecycle -----------------------------------------------------------------

    async def setup(self, harness_context: object = None) -> None:
        """Prepare resources. Called by :meth:`start`; safe to call again."""
        self._ready = True

    async def cleanup(self) -> None:
        """Release resources. Called by :meth:`stop`; safe to call again."""
        self._ready = False
        self._status.is_running = False

    async def start(self) -> None:
        if self._status.started_at is None:
            self._status.started_at = time.time()
        await self.setup()
        self._status.is_running = True

    async def stop(self) -> None:
        await self.cleanup()

    async def is_ready(self) -> bool:
        return self._ready

    def listening_port(self) -> int | None:
        """The port a component that ``LISTENS`` is bound to while it runs; otherwise ``None``."""
        return None

    # -- streams ---------------------------------------------------------------------

    def check_streams(self) -> None:
        """Raise ``TypeError`` naming the port if a stream is not an anyio object stream."""
        for ports, kind, expected in (
            (self.receive_streams, "receive_streams", ObjectReceiveStream),
            (self.send_streams, "send_streams", ObjectSendStream),
        ):
            for port, stream in ports.items():
                if not isinstance(stream, expected):
                    wanted = "MemoryObjectReceiveStream" if expected is ObjectReceiveStream else "MemoryObjectSendStream"
                    msg = (
                        f"{self.name}: {kind}[{port!r}] is of type {type(stream).__module__}.{type(stream).__qualname__}; "
                        f"expected an anyio {wanted} (from anyio.create_memory_object_stream()) "
                        f"or another anyio.abc.{expected.__name__}"
                    )
                    self.logger.error("%s", msg)
                    raise TypeError(msg)

    def first_input(self) -> ObjectReceiveStream[Item] | None:
        """The input stream the default :meth:`process` reads (after :meth:`check_streams`)."""
        self.check_streams()
        return next(iter(self.receive_streams.values()), None)

    async def emit(self, items: list[Item]) -> None:
        """Send ``items`` in order to every output; a closed downstream is dropped."""
        for port, stream in list(self.send_streams.items()):
            try:
                await send_batch(stream, items)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.logger.warning("%s: output %r is closed; it receives no more items", self.name, port)
                del self.send_streams[port]
                await stream.aclose()

    async def send_to_outputs(self, result: Item) -> None:
        """Send one result to every output (upstream's name for :meth:`emit`)."""
        await self.emit([result])

    async def close_outputs(self) -> None:
        for stream in self.send_streams.values():
            if isinstance(stream, ObjectSendStream):  # check_streams() reports the others
                await stream.aclose()

    # -- processing ----------------------------------------------------------------

    async def process(self) -> None:
        """Read the first input to its end, a batch at a time, through :meth:`process_batch`;
        then close the outputs."""
        try:
            stream = self.first_input()
            if stream is None:
                return
            async with stream:
                async for batch in receive_batches(stream, self.max_batch):
                    await self.process_batch(batch)
        finally:
            await self.close_outputs()

    async def process_batch(self, batch: list[Item]) -> None:
        """Items that arrived together; the default runs :meth:`process_item` on each."""
        for item in batch:
            try:
                result = await self.process_item(item)
            except Exception as exc:
                self.item_failed(exc)
                continue
            self.increment_processed()
            if result is not None:
                await self.emit([result])

    async def process_item(self, item: Item) -> Item:
        """Handle one item; the default passes it through."""
        return item

    def map_items(self, fn: Callable[[Item], Item], batch: Iterable[Item]) -> list[Item]:
        """``fn`` on each item; failures are logged, counted and skipped, ``None`` dropped."""
        out = []
        for item in batch:
            try:
                result = fn(item)
            except Exception as exc:
                self.item_failed(exc)
                continue
            self.increment_processed()
            if result is not None:
                out.append(result)
        return out

    def item_failed(self, exc: Exception, what: str = "process_item") -> None:
        """Log and count an item that failed; processing goes on with the next."""
        self.record_error(f"{what} failed: {exc!r}")
        self.logger.exception("%s: item failed and was skipped", self.name)

    # -- bookkeeping ---------------------------------------------------------------

    @property
    def processed_count(self) -> int:
        return self._status.items_processed

    @property
    def error_count(self) -> int:
        return self._status.errors_encountered

    @property
    def last_error(self) -> str | None:
        return self._status.last_error

    @property
    def started_at(self) -> float | None:
        return self._status.started_at

    def increment_processed(self, n: int = 1) -> None:
        self._status.items_processed += n

    def record_error(self, msg: str) -> None:
        self._status.errors_encountered += 1
        self._status.last_error = msg

    def get_status(self) -> ComponentStatus:
        """The live status object (attributes, and mapping access by the same names)."""
        return self._status

    def get_health_status(self) -> Record:
        """``{"status": "healthy" | "degraded" | "stopped", "component", "name", ...}``."""
        s = self._status
        if not s.is_healthy:
            status = "degraded"
        elif s.started_at is not None and not s.is_running:
            status = "stopped"
        else:
            status = "healthy"
        return {
            "status": status,
            "component": type(self).__name__,
            "name": self.name,
            "is_running": s.is_running,
            "items_processed": s.items_processed,
            "errors_encountered": s.errors_encountered,
            "last_error": s.last_error,
            "ignored_keys": list(self.ignored_keys),
        }

    async def health_check(self) -> Record:
        return self.get_health_status()

    # -- upstream classmethods -------------------------------------------------------

    @classmethod
    def get_required_config_fields(cls) -> list[str]:
        if cls.Config is None:
            return []
        return [f.name for f in msgspec.structs.fields(cls.Config) if f.required]

    @classmethod
    def get_required_dependencies(cls) -> list[str]:
        return list(cls.REQUIRED_DEPENDENCIES)

    @classmethod
    def get_config_requirements(cls) -> list[ConfigRequirement]:
        """The config keys as requirement objects (``.name .type .description .required .default .example``)."""
        return config_requirements(cls.Config) if cls.Config is not None else []


# -- batched stream I/O ----------------------------------------------------------------


async def send_batch(stream: ObjectSendStream[Item], items: list[Item]) -> None:
    """Send ``items`` in order, without yielding while the buffer has room.

    Items that arrive together thus stay together downstream (a WebSocket
    component drains its input before broadcasting, so they go out in one write).
    """
    send_nowait = getattr(stream, "send_nowait", None)  # memory streams and FanOutSendStream have it
    if send_nowait is None:
        for item in items:
            await stream.send(item)
        return
    for item in items:
        try:
            send_nowait(item)
        except anyio.WouldBlock:
            await stream.send(item)


async def receive_batches(stream: ObjectReceiveStream[Item], max_batch: int = MAX_BATCH) -> AsyncIterator[list[Item]]:
    """Yield lists of the items available together: one await, then a drain (at most ``max_batch``)."""
    receive_nowait = getattr(stream, "receive_nowait", None)
    while True:
        try:
            first = await stream.receive()
        except anyio.EndOfStream:
            return
        batch = [first]
        if receive_nowait is not None:
            while len(batch) < max_batch:
                try:
                    batch.append(receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
        yield batch
