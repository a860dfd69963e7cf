"""``StreamProcessor``: stateful stream operations: joining, windowing, deduplication."""

from __future__ import annotations

import functools
import math
import time
from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream

from fastws._paths import getter, split_dotted
from fastws._types import ConfigMapping, Item, Record
from fastws.components._base import BuiltinComponent, receive_batches, utc_now_iso

__all__ = [
    "DeduplicatingProcessor",
    "JoiningProcessor",
    "StreamProcessor",
    "StreamProcessorConfig",
    "WindowingProcessor",
]

PosInt = Annotated[int, msgspec.Meta(ge=1)]
PosFloat = Annotated[float, msgspec.Meta(gt=0)]


class StreamProcessorConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: ``joining`` (ports ``left``/``right``), ``windowing`` or ``deduplication``.
    variant: Literal["joining", "windowing", "deduplication"]
    #: joining: field (dotted path) that must be equal on both sides.
    join_key: str = "id"
    #: joining: unmatched items kept per side; the oldest is dropped beyond this.
    max_unmatched: PosInt = 1000
    #: windowing: window length in seconds (tumbling windows aligned to the clock).
    window_size: PosFloat = 5.0
    #: windowing: also emit windows that received no item.
    emit_empty: bool = False
    #: deduplication: field (dotted path) identifying an item; null: the whole item.
    dedup_key: str | None = "id"
    #: deduplication: keys remembered (least recently seen forgotten first).
    max_keys: PosInt = 10000
    #: deduplication: seconds a key is remembered; null: until evicted by ``max_keys``.
    ttl: PosFloat | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StreamProcessor(BuiltinComponent):
    """Stateful stream operations; ``variant`` picks one of three classes.

    ``StreamProcessor(name, {"variant": "joining", ...})`` builds a
    :class:`JoiningProcessor`, ``"windowing"`` a :class:`WindowingProcessor`,
    ``"deduplication"`` a :class:`DeduplicatingProcessor`; each is a
    ``StreamProcessor`` (one blueprint type name, one config struct).

    * ``joining`` reads ports ``left`` and ``right`` and, for each pair of items
      with equal ``join_key``, emits ``{"join_key", "left", "right", "joined_at"}``
      (one-to-one, first come first matched). Unmatched items wait, at most
      ``max_unmatched`` per side; older ones are dropped and counted.
    * ``windowing`` collects items into tumbling windows of ``window_size``
      seconds and emits ``{"window_start", "window_end", "items", "count"}`` when
      a window closes (the last, partial window when the input ends).
    * ``deduplication`` forwards the first item of each ``dedup_key`` value and
      drops repeats, remembering at most ``max_keys`` keys (and each for ``ttl``
      seconds if set).
    """

    Config = StreamProcessorConfig
    settings: StreamProcessorConfig
    VARIANT: ClassVar[str] = ""

    def __new__(cls, name: str, config: ConfigMapping | None = None) -> StreamProcessor:
        return super().__new__(cls.variant_class(config))

    @classmethod
    def variant_class(cls, config: ConfigMapping | None) -> type[StreamProcessor]:
        """The class for ``config["variant"]`` (``cls`` itself if it is a variant already
        or the variant is not valid: building it then raises the config error)."""
        if cls is not StreamProcessor or not isinstance(config, Mapping):
            return cls
        return _VARIANTS.get(config.get("variant"), cls)  # type: ignore[arg-type]

    @classmethod
    def input_ports(cls, config: ConfigMapping | None = None) -> tuple[str, ...] | None:
        return cls.variant_class(config).INPUT_PORTS

    @classmethod
    def reads_all_inputs(cls, config: ConfigMapping | None = None) -> bool:
        variant = cls.variant_class(config)
        return variant.READS_ALL_INPUTS or len(variant.INPUT_PORTS or ()) > 1

    @property
    def variant(self) -> str:
        return self.settings.variant


class JoiningProcessor(StreamProcessor):
    """``variant: joining``: pairs items of ``left`` and ``right`` with equal ``join_key``."""

    VARIANT = "joining"
    INPUT_PORTS = ("left", "right")
    READS_ALL_INPUTS = True

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        super().__init__(name, config)
        self._join_get = getter(split_dotted(self.settings.join_key), default=None)
        ports = self.INPUT_PORTS or ()
        self._pending: dict[str, OrderedDict[Hashable, deque[Item]]] = {p: OrderedDict() for p in ports}
        self._pending_count = dict.fromkeys(ports, 0)
        self.unmatched_dropped = 0

    async def process(self) -> None:
        try:
            self.check_streams()
            async with anyio.create_task_group() as tg:
                for port in self.INPUT_PORTS or ():
                    stream = self.receive_streams.get(port)
                    if stream is None:
                        self.logger.warning("%s: join port %r is not bound; nothing will match", self.name, port)
                        continue
                    tg.start_soon(self._join_side, port, stream)
            left, right = self._pending_count["left"], self._pending_count["right"]
            if left or right:
                self.logger.info(
                    "%s: inputs ended with %d left and %d right item(s) unmatched", self.name, left, right
                )
        finally:
            await self.close_outputs()

    async def _join_side(self, port: str, stream: ObjectReceiveStream[Item]) -> None:
        join = functools.partial(self.join, port)
        async with stream:
            async for batch in receive_batches(stream, self.max_batch):
                out = self.map_items(join, batch)
                if out:
                    await self.emit(out)

    def join(self, port: str, item: Item) -> Record | None:
        """Offer ``item`` arriving on ``port``; return the joined record or ``None``."""
        key = self._join_get(item)
        if key is None:
            raise KeyError(f"item has no join key {self.settings.join_key!r}")
        hash(key)
        other = "right" if port == "left" else "left"
        waiting = self._pending[other].get(key)
        if waiting:
            match = waiting.popleft()
            if not waiting:
                del self._pending[other][key]
            self._pending_count[other] -= 1
            left, right = (item, match) if port == "left" else (match, item)
            return {"join_key": key, "left": left, "right": right, "joined_at": utc_now_iso()}
        mine = self._pending[port]
        mine.setdefault(key, deque()).append(item)
        self._pending_count[port] += 1
        if self._pending_count[port] > self.settings.max_unmatched:
            oldest_key, queue = next(iter(mine.items()))
            queue.popleft()
            if not queue:
                del mine[oldest_key]
            self._pending_count[port] -= 1
            self.unmatched_dropped += 1
            self.logger.warning(
                "%s: more than %d unmatched %s items; dropped the oldest (key %r)",
                self.name,
                self.settings.max_unmatched,
                port,
                oldest_key,
            )
        return None


class WindowingProcessor(StreamProcessor):
    """``variant: windowing``: tumbling windows of ``window_size`` seconds, aligned to the clock."""

    VARIANT = "windowing"
    READS_ALL_INPUTS = False

    async def process(self) -> None:
        try:
            stream = self.first_input()
            if stream is not None:
                await self._windows(stream)
        finally:
            await self.close_outputs()

    async def _windows(self, stream: ObjectReceiveStream[Item]) -> None:
        size = self.settings.window_size
        window: list[Item] = []
        start = math.floor(time.time() / size) * size
        lock = anyio.Lock()

        async def advance(now: float) -> None:
            async with lock:
                while start + size <= now:
                    await close_window()

        async def close_window(end_of_input: bool = False) -> None:
            nonlocal window, start
            if window or (self.settings.emit_empty and not end_of_input):
                items, window = window, []
                record = {
                    "window_start": _iso(start),
                    "window_end": _iso(start + size),
                    "items": items,
                    "count": len(items),
                }
                await self.emit([record])
            start += size

        async def ticker() -> None:
            while True:
                await anyio.sleep(max(0.0, start + size - time.time()))
                await advance(time.time())

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with stream:
                async for batch in receive_batches(stream, self.max_batch):
                    await advance(time.time())
                    window.extend(batch)
                    self.increment_processed(len(batch))
            tg.cancel_scope.cancel()
        await close_window(end_of_input=True)


class DeduplicatingProcessor(StreamProcessor):
    """``variant: deduplication``: forwards the first item of each ``dedup_key`` value."""

    VARIANT = "deduplication"

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        super().__init__(name, config)
        key = self.settings.dedup_key
        self._dedup_get = getter(split_dotted(key), default=None) if key else None
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self.duplicates_dropped = 0
        self._encoder = msgspec.json.Encoder(enc_hook=str, order="sorted")

    def handle(self, item: Item) -> Item:
        if self._dedup_get is None:
            key: Hashable = self._encoder.encode(item)
        else:
            key = self._dedup_get(item)
            if key is None:
                return item  # nothing to deduplicate on
            hash(key)
        seen = self._seen
        now = time.monotonic()
        ttl = self.settings.ttl
        if ttl is not None:
            while seen:
                oldest_key, at = next(iter(seen.items()))
                if now - at < ttl:
                    break
                del seen[oldest_key]
        if key in seen:
            seen[key] = now
            seen.move_to_end(key)
            self.duplicates_dropped += 1
            return None
        seen[key] = now
        if len(seen) > self.settings.max_keys:
            seen.popitem(last=False)
        return item


_VARIANTS: dict[str, type[StreamProcessor]] = {
    c.VARIANT: c for c in (JoiningProcessor, WindowingProcessor, DeduplicatingProcessor)
}
