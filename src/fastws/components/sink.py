"""``Sink``: the end of a pipeline. Logs items, appends them to a file, keeps the last N."""

from __future__ import annotations

import logging
from collections import deque
from typing import IO, Annotated, Literal

import anyio
import msgspec
from anyio.abc import ObjectReceiveStream

from fastws._types import ConfigMapping, Item
from fastws.components._base import BuiltinComponent, receive_batches
from fastws.exceptions import ConfigError

__all__ = ["Sink", "SinkConfig"]

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def _enc_hook(obj: object) -> str:
    return str(obj)


class SinkConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: ``memory``: only keep the last ``keep_last`` items; ``log``: also log each item
    #: at ``level`` on logger ``fastws.component.<name>``; ``file``: also append each
    #: item as a JSON line to ``path``.
    mode: Literal["memory", "log", "file"] = "memory"
    #: Log level for ``mode: log``.
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: File for ``mode: file`` (created if missing, appended to).
    path: str | None = None
    #: Items kept in memory (``Sink.items``), in every mode; ``null`` keeps all, 0 none.
    keep_last: Annotated[int, msgspec.Meta(ge=0)] | None = 1000

    def __post_init__(self) -> None:
        if self.mode == "file" and not self.path:
            raise ConfigError("path: required when mode is 'file'")
        if self.mode != "file" and self.path is not None:
            raise ConfigError(f"path: only used with mode 'file' (mode is {self.mode!r})")


class Sink(BuiltinComponent):
    """Consume every input port until they all end.

    ``sink.items`` holds the last ``keep_last`` items, ``sink.count`` how many
    arrived; ``await sink.wait_for(n)`` returns once ``n`` items have arrived.
    """

    Config = SinkConfig
    settings: SinkConfig

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        super().__init__(name, config)
        self._items: deque[Item] = deque(maxlen=self.settings.keep_last)
        self.count = 0
        self._file: IO[bytes] | None = None
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
        self._arrived: anyio.Event | None = None

    #: A sink reads every input port, not only the first, and has no outputs.
    READS_ALL_INPUTS = True
    OUTPUT_PORTS = ()

    @property
    def items(self) -> list[Item]:
        return list(self._items)

    async def setup(self, harness_context: object = None) -> None:
        if self.settings.mode == "file" and self._file is None:
            assert self.settings.path is not None
            self._file = open(self.settings.path, "ab")  # noqa: SIM115 - closed in cleanup
        await super().setup(harness_context)

    async def cleanup(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        await super().cleanup()

    async def wait_for(self, count: int) -> list[Item]:
        """Wait until ``count`` items in total have arrived; return the kept items."""
        while self.count < count:
            if self._arrived is None:
                self._arrived = anyio.Event()
            await self._arrived.wait()
        return self.items

    def consume(self, batch: list[Item]) -> None:
        mode = self.settings.mode
        if mode == "log":
            level = _LEVELS[self.settings.level]
            if self.logger.isEnabledFor(level):
                for item in batch:
                    self.logger.log(level, "%s: %s", self.name, item)
        elif mode == "file" and self._file is not None:
            encode = self._encoder.encode
            self._file.write(b"".join(encode(item) + b"\n" for item in batch))
            self._file.flush()
        self._items.extend(batch)
        self.count += len(batch)
        self.increment_processed(len(batch))
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    async def process_item(self, item: Item) -> Item:
        self.consume([item])
        return None

    async def process(self) -> None:
        try:
            self.check_streams()
            async with anyio.create_task_group() as tg:
                for stream in self.receive_streams.values():
                    tg.start_soon(self._drain, stream)
        finally:
            await self.close_outputs()

    async def _drain(self, stream: ObjectReceiveStream[Item]) -> None:
        async with stream:
            async for batch in receive_batches(stream, self.max_batch):
                try:
                    self.consume(batch)
                except Exception as exc:
                    self.item_failed(exc, f"sink of {len(batch)} item(s)")
