"""``Source``: emits generated items, or JSON lines from a file, then closes its outputs."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Iterator
from typing import Annotated, Literal

import anyio
import anyio.lowlevel
import msgspec

from fastws._types import ConfigValue, Item, Record
from fastws.components._base import BuiltinComponent, utc_now_iso
from fastws.exceptions import ConfigError

__all__ = ["Source", "SourceConfig"]

_DEFAULT_METRICS = ("cpu_percent", "memory_percent", "requests_per_second", "latency_ms")
_METRIC_RANGES = {
    "cpu_percent": (0.0, 100.0),
    "memory_percent": (20.0, 90.0),
    "requests_per_second": (50.0, 1500.0),
    "latency_ms": (1.0, 250.0),
}

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]


class SourceConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: ``sequence``: ``{"id", "value", "timestamp"}``; ``metrics``: ``{"id", "name", "value",
    #: "unit", "timestamp"}``; ``clock``: ``{"id", "timestamp", "epoch"}``; ``file``: one
    #: item per JSON line of ``path``.
    generator: Literal["sequence", "metrics", "clock", "file"] = "sequence"
    #: Items to emit; ``null`` for endless. Default 10 (``file``: every line).
    data_count: NonNegInt | None | msgspec.UnsetType = msgspec.UNSET
    #: Seconds between items; 0 emits as fast as downstream takes them.
    data_delay: NonNegFloat = 0.1
    #: First ``id`` (and ``value`` for ``sequence``).
    start: int = 0
    #: Metric names the ``metrics`` generator cycles through.
    metrics: list[str] = msgspec.field(default_factory=lambda: list(_DEFAULT_METRICS))
    #: Seed of the ``metrics`` generator, for reproducible values.
    seed: int | None = None
    #: JSON-lines file for ``generator: file``.
    path: str | None = None
    #: Fields merged into every generated item (``{"source": "alerts"}``).
    fields: dict[str, ConfigValue] = {}

    def __post_init__(self) -> None:
        if self.generator == "file" and not self.path:
            raise ConfigError("path: required when generator is 'file'")
        if self.generator != "file" and self.path is not None:
            raise ConfigError(f"path: only used with generator 'file' (generator is {self.generator!r})")
        if self.generator == "metrics" and not self.metrics:
            raise ConfigError("metrics: expected at least one metric name")

    @property
    def count(self) -> int | None:
        if self.data_count is msgspec.UNSET:
            return None if self.generator == "file" else 10
        return self.data_count


class Source(BuiltinComponent):
    """Emit ``data_count`` items, one every ``data_delay`` seconds, to every output.

    The outputs are closed when the last item is sent, so downstream components
    (and the system) see the end of the stream. With ``data_count: null`` the
    source runs until the system stops.
    """

    Config = SourceConfig
    INPUT_PORTS = ()
    settings: SourceConfig

    def items(self) -> Iterator[Item]:
        """The items this source emits, in order (endless when ``data_count`` is null)."""
        s = self.settings
        gen: Iterator[Item]
        if s.generator == "sequence":
            gen = ({"id": i, "value": i, "timestamp": utc_now_iso()} for i in itertools.count(s.start))
        elif s.generator == "metrics":
            gen = self._metrics()
        elif s.generator == "clock":
            gen = (
                {"id": i, "timestamp": utc_now_iso(), "epoch": time.time()} for i in itertools.count(s.start)
            )
        else:
            gen = self._file_lines()
        if s.fields:
            extra = s.fields
            gen = ({**item, **extra} if isinstance(item, dict) else item for item in gen)
        count = s.count
        return gen if count is None else itertools.islice(gen, count)

    def _metrics(self) -> Iterator[Record]:
        rng = random.Random(self.settings.seed)
        names = self.settings.metrics
        for i in itertools.count(self.settings.start):
            name = names[i % len(names)]
            low, high = _METRIC_RANGES.get(name, (0.0, 100.0))
            unit = "%" if name.endswith("_percent") else ("ms" if name.endswith("_ms") else "")
            yield {
                "id": i,
                "name": name,
                "value": round(rng.uniform(low, high), 2),
                "unit": unit,
                "timestamp": utc_now_iso(),
            }

    def _file_lines(self) -> Iterator[Item]:
        assert self.settings.path is not None
        decoder = msgspec.json.Decoder()
        with open(self.settings.path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield decoder.decode(line)
                except msgspec.DecodeError as exc:
                    self.record_error(f"{self.settings.path}:{lineno}: {exc}")
                    self.logger.warning(
                        "%s: %s line %d is not JSON; skipped: %s", self.name, self.settings.path, lineno, exc
                    )

    async def process(self) -> None:
        try:
            self.check_streams()
            if not self.send_streams:
                self.logger.warning("%s: no output is bound; nothing to emit", self.name)
                return
            delay = self.settings.data_delay
            items = self.items()
            if delay == 0:
                await self._emit_fast(items)
                return
            deadline = time.monotonic()
            for item in items:
                await self.emit([item])
                self.increment_processed()
                if not self.send_streams:
                    return
                deadline += delay
                await anyio.sleep(max(0.0, deadline - time.monotonic()))
        finally:
            await self.close_outputs()

    async def _emit_fast(self, items: Iterator[Item]) -> None:
        # Fill the output buffers without yielding; block (and let downstream run)
        # only when one is full. Downstream then finds bursts, not single items.
        for chunk in iter(lambda: list(itertools.islice(items, 256)), []):
            await self.emit(chunk)
            self.increment_processed(len(chunk))
            if not self.send_streams:
                return
        await anyio.lowlevel.checkpoint()
