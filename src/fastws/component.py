"""The stream-component base class, compatible with upstream ``ComposedComponent``.

A component owns named input ports (``receive_streams``) and output ports
(``send_streams``), both dictionaries of anyio memory object streams keyed by
port name. A system (``fastws.blueprint``) or the user wires them; the component
only reads and writes.

Differences from upstream, on purpose (see ``docs/reference.md``):

* a failing item is logged, counted with :meth:`record_error` and skipped; the
  next item is processed;
* every output stream is closed when the input ends, so downstream sees the end.
"""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from .config import FRAMEWORK_KEYS

__all__ = ["ComposedComponent"]


class ComposedComponent:
    """Base class of every pipeline component.

    Subclasses override :meth:`process_item` (one item in, one result or ``None``
    out) or, for components with several inputs or none, :meth:`process`.
    """

    #: Keys that frameworks put into component configs; accepted and ignored.
    FRAMEWORK_KEYS: ClassVar[frozenset[str]] = FRAMEWORK_KEYS

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        self.name = name
        self.config: dict[str, Any] = dict(config) if config else {}
        self.logger = logging.getLogger(f"fastws.component.{name}")
        self.receive_streams: dict[str, ObjectReceiveStream[Any]] = {}
        self.send_streams: dict[str, ObjectSendStream[Any]] = {}
        self.processed_count = 0
        self.error_count = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self._ready = False

    # -- lifecycle -----------------------------------------------------------------

    async def setup(self, harness_context: Any = None) -> None:
        """Prepare resources. Called by :meth:`start`."""
        self._ready = True

    async def cleanup(self) -> None:
        """Release resources. Called by :meth:`stop`."""
        self._ready = False

    async def start(self) -> None:
        self.started_at = time.time()
        await self.setup()

    async def stop(self) -> None:
        await self.cleanup()

    async def is_ready(self) -> bool:
        return self._ready

    # -- processing ----------------------------------------------------------------

    async def process(self) -> None:
        """Read the first input stream to its end, one item at a time.

        Each result that is not ``None`` goes, as the same object, to every output.
        A failing item is logged and counted, and processing goes on. The outputs
        are closed at the end of input.
        """
        try:
            stream = next(iter(self.receive_streams.values()), None)
            if stream is None:
                return
            async with stream:
                async for item in stream:
                    try:
                        result = await self.process_item(item)
                    except Exception as exc:
                        self.record_error(f"process_item failed: {exc!r}")
                        self.logger.exception("%s: item failed and was skipped", self.name)
                        continue
                    self.increment_processed()
                    if result is not None:
                        await self.send_to_outputs(result)
        finally:
            await self.close_outputs()

    async def process_item(self, item: Any) -> Any:
        """Handle one item; the default passes it through."""
        return item

    async def send_to_outputs(self, result: Any) -> None:
        """Send ``result`` to every output port; a closed downstream is dropped."""
        for port, stream in list(self.send_streams.items()):
            try:
                await stream.send(result)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.logger.warning("%s: output %r is closed; it receives no more items", self.name, port)
                await stream.aclose()
                del self.send_streams[port]

    async def close_outputs(self) -> None:
        for stream in self.send_streams.values():
            await stream.aclose()

    # -- bookkeeping ---------------------------------------------------------------

    def increment_processed(self) -> None:
        self.processed_count += 1

    def record_error(self, msg: str) -> None:
        self.error_count += 1
        self.last_error = msg

    def get_status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "component": type(self).__name__,
            "ready": self._ready,
            "processed": self.processed_count,
            "errors": self.error_count,
            "last_error": self.last_error,
        }

    async def health_check(self) -> dict[str, Any]:
        return {
            "status": "healthy" if self.error_count == 0 or self._ready else "degraded",
            "component": type(self).__name__,
            "name": self.name,
            "processed": self.processed_count,
            "errors": self.error_count,
        }

    # -- upstream classmethods -------------------------------------------------------

    @classmethod
    def get_required_config_fields(cls) -> list[str]:
        return []

    @classmethod
    def get_required_dependencies(cls) -> list[str]:
        return ["anyio"]

    @classmethod
    def get_config_requirements(cls) -> dict[str, Any]:
        return {"required": cls.get_required_config_fields(), "optional": {}}
