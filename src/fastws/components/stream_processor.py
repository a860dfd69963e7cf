"""``StreamProcessor``: stateful stream operations: joining, windowing, deduplication."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import anyio
import msgspec

from fastws.components._base import BuiltinComponent, parse_config, receive_batches, utc_now_iso
from fastws.components.expr import _lookup

__all__ = ["StreamProcessor", "StreamProcessorConfig"]

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


def _key_path(key: str) -> tuple[str, ...]:
    return tuple(key.split("."))


class StreamProcessor(BuiltinComponent):
    """One component, three variants (chosen by ``variant``).

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
    JOIN_PORTS: ClassVar[tuple[str, str]] = ("left", "right")

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(name, config)
        s = self.settings
        self.variant = s.variant
        # joining
        self._join_get = _lookup(_key_path(s.join_key))
        self._pending: dict[str, OrderedDict[Hashable, deque[Any]]] = {
            p: OrderedDict() for p in self.JOIN_PORTS
        }
        self._pending_count = dict.fromkeys(self.JOIN_PORTS, 0)
        self.unmatched_dropped = 0
        # deduplication
        self._dedup_get = _lookup(_key_path(s.dedup_key)) if s.dedup_key else None
        self._seen: OrderedDict[Hashable, float] = OrderedDict()
        self.duplicates_dropped = 0
        self._encoder = msgspec.json.Encoder(enc_hook=str, order="sorted")

    @classmethod
    def input_ports(cls, config: dict[str, Any] | None = None) -> tuple[str, ...] | None:
        try:
            variant = parse_config(StreamProcessorConfig, config).variant
        except ValueError:
            return None
        return cls.JOIN_PORTS if variant == "joining" else None

    async def process(self) -> None:
        try:
            if self.variant == "joining":
                await self._process_join()
            elif self.variant == "windowing":
                await self._process_windows()
            else:
                await super().process()
        finally:
            await self.close_outputs()

    # -- joining ------------------------------------------------------------------

    async def _process_join(self) -> None:
        async with anyio.create_task_group() as tg:
            for port in self.JOIN_PORTS:
                stream = self.receive_streams.get(port)
                if stream is None:
                    self.logger.warning("%s: join port %r is not bound; nothing will match", self.name, port)
                    continue
                tg.start_soon(self._join_side, port, stream)
        left = self._pending_count["left"]
        right = self._pending_count["right"]
        if left or right:
            self.logger.info(
                "%s: inputs ended with %d left and %d right item(s) unmatched", self.name, left, right
            )

    async def _join_side(self, port: str, stream: Any) -> None:
        async with stream:
            async for batch in receive_batches(stream):
                out = []
                for item in batch:
                    try:
                        joined = self.join(port, item)
                    except Exception as exc:
                        self.record_error(f"join failed: {exc!r}")
                        self.logger.exception("%s: item failed and was skipped", self.name)
                        continue
                    self.increment_processed()
                    if joined is not None:
                        out.append(joined)
                if out:
                    await self.emit(out)

    def join(self, port: str, item: Any) -> dict[str, Any] | None:
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

    # -- windowing ------------------------------------------------------------------

    async def _process_windows(self) -> None:
        stream = next(iter(self.receive_streams.values()), None)
        if stream is None:
            return
        size = self.settings.window_size
        window: list[Any] = []
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
            nonlocal start
            while True:
                await anyio.sleep(max(0.0, start + size - time.time()))
                await advance(time.time())

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            async with stream:
                async for batch in receive_batches(stream):
                    await advance(time.time())
                    window.extend(batch)
                    self.processed_count += len(batch)
            tg.cancel_scope.cancel()
        await close_window(end_of_input=True)

    # -- deduplication ----------------------------------------------------------------

    def handle(self, item: Any) -> Any:
        # Only the deduplication variant uses the item-by-item path.
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
