"""``BuiltinComponent``: the base of the built-in components, a synchronous ``handle``
per item applied a batch at a time. The contract itself is in :mod:`fastws.component`."""

from __future__ import annotations

from datetime import UTC, datetime

from fastws._types import Item
from fastws.component import ComposedComponent, receive_batches, send_batch
from fastws.config import translate_validation_error

__all__ = ["BuiltinComponent", "receive_batches", "send_batch", "translate_validation_error", "utc_now_iso"]


def utc_now_iso() -> str:
    """Current UTC time as ISO 8601 with milliseconds and a ``Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BuiltinComponent(ComposedComponent):
    """A component whose work per item is the synchronous :meth:`handle`.

    Subclasses set ``Config`` (a ``msgspec.Struct``, available as ``self.settings``)
    and implement :meth:`handle` (one item in, a result or ``None`` out). A batch of
    items that arrived together is handled, then its results go out together.
    """

    READS_ALL_INPUTS = False

    def handle(self, item: Item) -> Item:
        return item

    async def process_item(self, item: Item) -> Item:
        return self.handle(item)

    async def process_batch(self, batch: list[Item]) -> None:
        out = self.map_items(self.handle, batch)
        if out:
            await self.emit(out)
