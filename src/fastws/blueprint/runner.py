"""Build a system from a blueprint, wire its bindings, run it, stop it.

::

    system = System.from_yaml("examples/realtime_dashboard.yaml")
    await system.run()              # until the sources end and streams drain, or SIGINT/SIGTERM

    async with System.from_yaml(path, overrides={"websocket_server": {"port": 0}}) as system:
        port = system.port()        # the bound port of the (only) WebSocket component
        await system.wait()         # until every component's process() has returned

Every binding is an anyio memory object stream (buffer 1000 unless the binding
sets ``buffer_size`` or ``qos.buffering``). Several bindings from one output
port fan out (each receiver gets every item); several bindings into one input
port fan in (one stream, several senders; it ends when every sender is done).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from fastws._cliutil import plural
from fastws._types import ConfigDict, ConfigMapping, Item
from fastws.blueprint.schema import (
    BindingSpec,
    BlueprintError,
    BlueprintFile,
    ComponentError,
    check_component_config,
    convert_blueprint,
    decode_blueprint,
    load_blueprint,
)
from fastws.component import ComponentStatus, ComposedComponent
from fastws.components import resolve_component_type
from fastws.exceptions import ConfigError

__all__ = ["DEFAULT_BUFFER_SIZE", "Edge", "FanOutSendStream", "System", "validate_blueprint"]

logger = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 1000


@dataclass(frozen=True)
class Edge:
    """One resolved binding: ``from_component.from_port -> to_component.to_port``."""

    from_component: str
    from_port: str
    to_component: str
    to_port: str
    buffer_size: int
    binding: int  # index in ``bindings``

    def __str__(self) -> str:
        return f"{self.from_component}.{self.from_port} -> {self.to_component}.{self.to_port}"


class FanOutSendStream(ObjectSendStream[Item]):
    """One output port bound to several inputs: every item goes to each of them.

    A receiver that has gone away is dropped; the others go on. When none is
    left, sending raises :class:`anyio.BrokenResourceError`. ``aclose()``
    closes them all.
    """

    def __init__(self, targets: list[MemoryObjectSendStream[Item]]) -> None:
        self.targets = list(targets)
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self.targets:
            raise anyio.BrokenResourceError

    def send_nowait(self, item: Item) -> None:
        """Deliver to every receiver now, or to none (raising :class:`anyio.WouldBlock`)."""
        self._check()
        for target in self.targets:
            stats = target.statistics()
            if stats.tasks_waiting_receive == 0 and stats.current_buffer_used >= stats.max_buffer_size:
                if stats.open_receive_streams:
                    raise anyio.WouldBlock
        for target in list(self.targets):
            try:
                target.send_nowait(item)
            except anyio.BrokenResourceError:
                self._drop(target)
        if not self.targets:
            raise anyio.BrokenResourceError

    async def send(self, item: Item) -> None:
        self._check()
        await anyio.lowlevel.checkpoint()
        for target in list(self.targets):
            try:
                try:
                    target.send_nowait(item)
                except anyio.WouldBlock:
                    await target.send(item)
            except anyio.BrokenResourceError:
                self._drop(target)
        if not self.targets:
            raise anyio.BrokenResourceError

    def _drop(self, target: MemoryObjectSendStream[Item]) -> None:
        self.targets.remove(target)
        target.close()

    def close(self) -> None:
        self._closed = True
        for target in self.targets:
            target.close()

    async def aclose(self) -> None:
        self.close()


# -- validation --------------------------------------------------------------------------


def _split_endpoint(value: str, names: Mapping[str, object], default_port: str) -> tuple[str, str] | None:
    if value in names:
        return value, default_port
    comp, dot, port = value.rpartition(".")
    if dot and comp and port:
        return comp, port
    return None


def _binding_edges(
    i: int, b: BindingSpec, names: Mapping[str, object], errors: list[str]
) -> list[tuple[str, str, str, str, str, str]]:
    """Resolve a binding into (from, from_port, to, to_port, from_field, to_field) tuples."""
    where = f"bindings[{i}]"
    short = b.from_ is not None or b.to is not None
    long = any(
        v is not None for v in (b.from_component, b.to_component, b.from_port, b.to_port, b.stream_name)
    )
    if short and long:
        errors.append(f"{where}: use either 'from'/'to' or 'from_component'/'to_component', not both")
        return []
    if short:
        if b.from_ is None or b.to is None:
            errors.append(f"{where}: needs both 'from' and 'to'")
            return []
        sources = [b.from_] if isinstance(b.from_, str) else b.from_
        targets = [b.to] if isinstance(b.to, str) else b.to
        if not sources or not targets:
            errors.append(f"{where}: 'from' and 'to' must not be empty")
            return []
        ends: list[tuple[str, str, str, str, str, str]] = []
        resolved_from: list[tuple[str, str, str]] = []
        for j, s in enumerate(sources):
            field = f"{where}.from" if isinstance(b.from_, str) else f"{where}.from[{j}]"
            r = _split_endpoint(s, names, "output")
            if r is None:
                errors.append(f"{field}: expected 'component.port', got {s!r}")
                continue
            resolved_from.append((*r, field))
        for j, t in enumerate(targets):
            field = f"{where}.to" if isinstance(b.to, str) else f"{where}.to[{j}]"
            r = _split_endpoint(t, names, "input")
            if r is None:
                errors.append(f"{field}: expected 'component.port', got {t!r}")
                continue
            for fc, fp, ffield in resolved_from:
                ends.append((fc, fp, r[0], r[1], ffield, field))
        return ends
    if b.from_component is None or b.to_component is None:
        missing = "from_component" if b.from_component is None else "to_component"
        errors.append(
            f"{where}.{missing}: missing; a binding needs 'from_component' and 'to_component' (or 'from'/'to')"
        )
        return []
    from_port = b.from_port or b.stream_name or "output"
    to_port = b.to_port or b.stream_name or "input"
    return [
        (
            b.from_component,
            from_port,
            b.to_component,
            to_port,
            f"{where}.from_component",
            f"{where}.to_component",
        )
    ]


def _port_field(field: str) -> str:
    return field.replace("from_component", "from_port").replace("to_component", "to_port")


@dataclass
class _Plan:
    classes: dict[str, type[ComposedComponent]]
    configs: dict[str, ConfigDict]
    types: dict[str, str]
    edges: list[Edge]
    warnings: list[str]


def _validate(
    bp: BlueprintFile,
    source: str,
    strict: bool = False,
    overrides: Mapping[str, ConfigMapping] | None = None,
) -> _Plan:
    """Check the blueprint against the component contract (:mod:`fastws.component`).

    Unknown config keys are warnings (``strict``: errors); everything else that is
    wrong is an error. All errors are raised together in one :class:`BlueprintError`:
    every bad key of every component, and the bindings even where a config is bad. A problem
    caused by ``overrides`` (``--set``) is blamed on the override, not on the file.
    """
    errors: list[str] = []  # "where: why"; the source is put in front at the end
    placed = "\0"  # marks an error that names its own origin (the source, or the override that caused it)
    warnings: list[str] = []
    spec = bp.system
    classes: dict[str, type[ComposedComponent]] = {}
    configs: dict[str, ConfigDict] = {}
    types: dict[str, str] = {}
    first_index: dict[str, int] = {}
    if not spec.components:
        errors.append("components: a system needs at least one component")
    for i, comp in enumerate(spec.components):
        where = f"components[{i}]"
        if not comp.name:
            errors.append(f"{where}.name: must not be empty")
            continue
        if comp.name in first_index:
            errors.append(
                f"{where}.name: duplicate component name {comp.name!r} (also components[{first_index[comp.name]}])"
            )
            continue
        first_index[comp.name] = i
        try:
            cls = resolve_component_type(comp.type, f"{where}.type")
        except ConfigError as exc:
            errors.append(str(exc))
            continue
        # every bad key, not only the first; the bindings below are still checked
        config_errors, notes, usable = check_component_config(cls, comp.config, f"{where}.config")
        given = (overrides or {}).get(comp.name, {})
        refused = (*config_errors, *(n.strictly() for n in notes)) if strict else config_errors
        errors.extend(placed + p.blamed(source, comp.name, given) for p in refused)
        warnings.extend(p.blamed(source, comp.name, given) for p in (() if strict else notes))
        classes[comp.name] = cls
        configs[comp.name] = usable
        types[comp.name] = comp.type

    edges: list[Edge] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    inputs_used: dict[str, dict[str, int]] = {}
    for i, b in enumerate(spec.bindings):
        buffer = b.buffer_size
        if buffer is None and b.qos is not None and b.qos.buffering is not None:
            buffer = b.qos.buffering
        if buffer is None:
            buffer = DEFAULT_BUFFER_SIZE
        for fc, fp, tc, tp, ffield, tfield in _binding_edges(i, b, first_index, errors):
            bad = False
            for name, field in ((fc, ffield), (tc, tfield)):
                if name not in first_index:
                    errors.append(
                        f"{field}: no component named {name!r}; components are: {', '.join(first_index)}"
                    )
                    bad = True
            if bad or fc not in classes or tc not in classes:
                continue  # unknown, or its own definition is already in error
            if fc == tc:
                errors.append(f"bindings[{i}]: component {fc!r} is bound to itself")
                continue
            from_cls, to_cls = classes[fc], classes[tc]
            out_ports = from_cls.output_ports(configs[fc])
            if out_ports is not None and fp not in out_ports:
                errors.append(_no_port(_port_field(ffield), fc, types[fc], "output", fp, out_ports))
                continue
            fixed = to_cls.input_ports(configs[tc])
            single = not to_cls.reads_all_inputs(configs[tc])
            if fixed is not None and tp not in fixed:
                errors.append(_no_port(_port_field(tfield), tc, types[tc], "input", tp, fixed))
                continue
            key = (fc, fp, tc, tp)
            if key in seen:
                errors.append(
                    f"bindings[{i}]: {fc}.{fp} -> {tc}.{tp} is already bound by bindings[{seen[key]}]"
                )
                continue
            seen[key] = i
            used = inputs_used.setdefault(tc, {})
            if single and used and tp not in used:
                other = next(iter(used))
                errors.append(
                    f"bindings[{i}]: {tc!r} ({types[tc]}) reads a single input port, but it is bound on "
                    f"{other!r} (bindings[{used[other]}]) and {tp!r}; bind both to the same port to merge them"
                )
                continue
            used.setdefault(tp, i)
            edges.append(Edge(fc, fp, tc, tp, buffer, i))
    if errors:
        raise BlueprintError([e[1:] if e.startswith(placed) else f"{source}: {e}" for e in errors], warnings)
    return _Plan(classes, configs, types, edges, warnings)


def _no_port(field: str, comp: str, type_name: str, kind: str, port: str, ports: tuple[str, ...]) -> str:
    if not ports:
        return f"{field}: component {comp!r} ({type_name}) has no {kind} ports"
    return f"{field}: component {comp!r} ({type_name}) has no {kind} port {port!r}; its {kind} ports are: {', '.join(ports)}"


def _apply_overrides(bp: BlueprintFile, overrides: Mapping[str, ConfigMapping] | None) -> BlueprintFile:
    if not overrides:
        return bp
    comps = {c.name: c for c in bp.system.components}
    unknown = [name for name in overrides if name not in comps]
    if unknown:
        raise BlueprintError(
            f"overrides: no component named {', '.join(map(repr, unknown))}; components are: {', '.join(comps)}"
        )
    new_components = [
        msgspec.structs.replace(c, config={**c.config, **overrides[c.name]}) if c.name in overrides else c
        for c in bp.system.components
    ]
    return msgspec.structs.replace(bp, system=msgspec.structs.replace(bp.system, components=new_components))


def validate_blueprint(bp: BlueprintFile, source: str = "<blueprint>", *, strict: bool = False) -> list[Edge]:
    """Check a decoded blueprint; return its resolved edges or raise :class:`BlueprintError`
    (``strict``: unknown config keys are errors too)."""
    return _validate(bp, source, strict).edges


# -- the system ---------------------------------------------------------------------------


class System:
    """A running (or runnable) set of components wired by a blueprint.

    Build with :meth:`from_yaml`, :meth:`from_string` or :meth:`from_dict`; each
    validates the blueprint first and raises :class:`BlueprintError` listing
    every problem. ``overrides`` maps component names to config keys to
    replace, e.g. ``{"websocket_server": {"port": 0}}``.
    """

    def __init__(
        self,
        blueprint: BlueprintFile,
        *,
        source: str = "<blueprint>",
        overrides: Mapping[str, ConfigMapping] | None = None,
        strict: bool = False,
    ) -> None:
        self.blueprint = _apply_overrides(blueprint, overrides)
        self.source = source
        self._plan = _validate(self.blueprint, source, strict, overrides)
        #: Problems that do not stop the system (unknown config keys), one line each.
        self.warnings: list[str] = self._plan.warnings
        self.name = self.blueprint.system.name
        self.edges = self._plan.edges
        #: Components by name, in blueprint order (built by :meth:`build`).
        self.components: dict[str, ComposedComponent] = {}
        #: Names of the components whose ``process()`` raised, with the error.
        self.failures: dict[str, str] = {}
        self._started: list[ComposedComponent] = []
        self._task: asyncio.Task[None] | None = None
        self._streams: list[ObjectSendStream[Item] | ObjectReceiveStream[Item]] = []
        self._stopped = False

    # -- construction -----------------------------------------------------------

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike[str],
        *,
        overrides: Mapping[str, ConfigMapping] | None = None,
        strict: bool = False,
    ) -> System:
        return cls(load_blueprint(path), source=os.fspath(path), overrides=overrides, strict=strict)

    @classmethod
    def from_string(
        cls,
        text: str | bytes,
        *,
        source: str = "<string>",
        overrides: Mapping[str, ConfigMapping] | None = None,
        strict: bool = False,
    ) -> System:
        return cls(decode_blueprint(text, source), source=source, overrides=overrides, strict=strict)

    @classmethod
    def from_dict(
        cls,
        data: ConfigMapping,
        *,
        source: str = "<dict>",
        overrides: Mapping[str, ConfigMapping] | None = None,
        strict: bool = False,
    ) -> System:
        return cls(convert_blueprint(dict(data), source), source=source, overrides=overrides, strict=strict)

    def build(self) -> dict[str, ComposedComponent]:
        """Instantiate the components and wire the bindings (once)."""
        if self.components:
            return self.components
        plan = self._plan
        components: dict[str, ComposedComponent] = {}
        for comp in self.blueprint.system.components:
            cls = plan.classes[comp.name]
            try:
                components[comp.name] = cls(comp.name, dict(comp.config))
            except ConfigError as exc:
                raise BlueprintError(f"{self.source}: components[{self._index(comp.name)}]: {exc}") from None
            except Exception as exc:
                raise ComponentError(comp.name, comp.type, "__init__", exc) from exc
        receivers: dict[
            tuple[str, str], tuple[MemoryObjectSendStream[Item], MemoryObjectReceiveStream[Item]]
        ] = {}
        senders: dict[tuple[str, str], list[MemoryObjectSendStream[Item]]] = {}
        for edge in plan.edges:
            key = (edge.to_component, edge.to_port)
            if key not in receivers:
                buffer = max(e.buffer_size for e in plan.edges if (e.to_component, e.to_port) == key)
                receivers[key] = anyio.create_memory_object_stream[Item](buffer)
            senders.setdefault((edge.from_component, edge.from_port), []).append(receivers[key][0].clone())
        for (name, port), (send, receive) in receivers.items():
            send.close()  # only the clones held by senders keep it open
            components[name].receive_streams[port] = receive
            self._streams.append(receive)
        for (name, port), clones in senders.items():
            out: ObjectSendStream[Item] = clones[0] if len(clones) == 1 else FanOutSendStream(clones)
            components[name].send_streams[port] = out
            self._streams.append(out)
        self.components = components
        return components

    def _index(self, name: str) -> int:
        return next(i for i, c in enumerate(self.blueprint.system.components) if c.name == name)

    # -- inspection ----------------------------------------------------------------

    def __getitem__(self, name: str) -> ComposedComponent:
        return self.components[name]

    def port(self, name: str | None = None) -> int:
        """The bound port of WebSocket component ``name`` (default: the only one)."""
        if name is None:
            ws = [n for n, cls in self._plan.classes.items() if cls.LISTENS]
            if len(ws) != 1:
                raise ValueError(f"system {self.name!r} has {len(ws)} WebSocket components; name one: {ws}")
            name = ws[0]
        component = self.components.get(name)
        port = component.listening_port() if component is not None else None
        if port is None:
            raise ValueError(f"component {name!r} has no bound port (is the system started?)")
        return port

    def status(self) -> dict[str, ComponentStatus]:
        """Each component's live status (attributes, or mapping access by the same names)."""
        return {name: c.get_status() for name, c in self.components.items()}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Build, start every component (in blueprint order), then run their ``process()``.

        Returns once processing is running in the background; see :meth:`wait`.
        If a component fails to start, the ones already started are stopped and
        the error is raised.
        """
        if self._task is not None or self._stopped:
            raise RuntimeError(
                f"system {self.name!r} was already started; build a new System to run it again"
            )
        self.build()
        try:
            for name, comp in self.components.items():
                try:
                    await comp.start()
                except Exception as exc:
                    raise ComponentError(name, self._plan.types[name], "start()", exc) from exc
                self._started.append(comp)
        except BaseException:
            await self._stop_components()
            self._close_streams()
            raise
        logger.info(
            "system %r started: %s, %s", self.name, plural(len(self.components), "component"),
            plural(len(self.edges), "binding")
        )
        self._task = asyncio.create_task(self._process_all(), name=f"fastws-system-{self.name}")

    async def wait(self) -> None:
        """Wait until every component's ``process()`` has returned (sources ended, streams drained)."""
        if self._task is None:
            raise RuntimeError(f"system {self.name!r} is not started")
        task = self._task
        await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def stop(self) -> None:
        """Cancel what is still processing, then stop every component (reverse order).

        Stopping a WebSocket component closes its clients with 1001 (going away).
        Safe to call more than once.
        """
        task = self._task
        if task is not None:
            self._stopped = True
            if not task.done():
                task.cancel()
            await asyncio.wait([task])
        await self._stop_components()
        self._close_streams()
        logger.info("system %r stopped", self.name)

    async def run(
        self, *, handle_signals: bool = True, on_started: Callable[[System], None] | None = None
    ) -> None:
        """Start, run until processing is done (or SIGINT/SIGTERM), then stop.

        ``on_started(system)`` is called once every component has started.
        """
        await self.start()
        if on_started is not None:
            on_started(self)
        try:
            if handle_signals and threading.current_thread() is threading.main_thread():
                async with anyio.create_task_group() as tg:

                    async def on_signal() -> None:
                        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                            async for signum in signals:
                                logger.info(
                                    "system %r: %s received, stopping", self.name, signal.Signals(signum).name
                                )
                                tg.cancel_scope.cancel()
                                return

                    tg.start_soon(on_signal)
                    await self.wait()
                    tg.cancel_scope.cancel()
            else:
                await self.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.stop()

    async def __aenter__(self) -> System:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.stop()

    # -- internals -----------------------------------------------------------------

    async def _process_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for comp in self.components.values():
                tg.start_soon(self._guarded_process, comp, name=f"fastws-{self.name}-{comp.name}")
        logger.info("system %r: every component has finished processing", self.name)

    async def _guarded_process(self, comp: ComposedComponent) -> None:
        try:
            await comp.process()
        except Exception as exc:
            self.failures[comp.name] = repr(exc)
            comp.record_error(f"process() failed: {exc!r}")
            logger.exception("system %r: component %r failed; the others go on", self.name, comp.name)
        finally:
            # Outputs closed: downstream sees the end. Inputs closed: upstream is not blocked.
            streams: list[ObjectSendStream[Item] | ObjectReceiveStream[Item]] = [
                *comp.send_streams.values(),
                *comp.receive_streams.values(),
            ]
            for stream in streams:
                _close(stream)

    async def _stop_components(self) -> None:
        started, self._started = self._started, []
        for comp in reversed(started):
            try:
                await comp.stop()
            except Exception:
                logger.exception("system %r: component %r failed to stop", self.name, comp.name)

    def _close_streams(self) -> None:
        for stream in self._streams:
            _close(stream)


def _close(stream: ObjectSendStream[Item] | ObjectReceiveStream[Item]) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        close()
