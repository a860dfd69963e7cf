"""``WebSocketComponent``: the drop-in stream component that broadcasts its input."""

from __future__ import annotations

from typing import Any

import anyio

from ._core import encode_frame
from .component import ComposedComponent
from .config import ServerConfig
from .exceptions import EncodeError
from .pacing import Pacer
from .server import Server

__all__ = ["WebSocketComponent"]


class WebSocketComponent(ComposedComponent):
    """Broadcast every item of the first input stream to every connected client.

    For each item, every output receives
    ``{"broadcast_to": <clients sent to>, "disconnected": <clients dropped>, "message": item}``.
    Items that are waiting in the input together are broadcast together: each client
    gets them in one write, and each gets its own report (``broadcast_to`` is the
    same for all of them; clients dropped in that write count in the first report).
    """

    def __init__(self, name: str, config: dict[str, Any] | None = None) -> None:
        super().__init__(name, config)
        self.server_config = ServerConfig.from_dict(self.config, path=f"{name}.config")
        self.server = Server(self.server_config)
        self.broadcast_errors = 0

    @classmethod
    def validate_config(cls, config: dict[str, Any] | None, path: str = "config") -> None:
        """Raise :class:`fastws.ConfigError` naming ``path.key`` for a bad config."""
        ServerConfig.from_dict(config, path=path)

    @classmethod
    def get_required_config_fields(cls) -> list[str]:
        return []

    @classmethod
    def get_required_dependencies(cls) -> list[str]:
        return ["picows", "msgspec", "uvloop", "anyio"]

    @classmethod
    def get_config_requirements(cls) -> dict[str, Any]:
        defaults = ServerConfig()
        return {"required": [], "optional": {k: getattr(defaults, k) for k in ServerConfig.keys()}}

    # -- server ------------------------------------------------------------------------

    async def start_server(self) -> None:
        await self.server.start()

    async def stop_server(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        await super().start()
        await self.start_server()

    async def stop(self) -> None:
        await self.stop_server()
        await super().stop()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def connection_count(self) -> int:
        return self.server.connection_count

    # -- processing ----------------------------------------------------------------------

    async def process_item(self, item: Any) -> dict[str, Any]:
        return self._broadcast([item])[0]

    def _broadcast(self, items: list[Any]) -> list[dict[str, Any]]:
        """Publish ``items`` and write them to every client in one flush."""
        hub = self.server.hub
        # workers/backplane (docs/reference.md): encoded once, to the other nodes and/or the workers
        relay = self.server.backplane is not None or self.server.workers is not None
        errors: dict[int, str] = {}
        for i, item in enumerate(items):
            try:
                if relay:
                    self.server.broadcast(item)
                elif hub is not None:
                    hub.publish(item)
                else:  # the server is not running: still report what cannot be serialized
                    encode_frame(item)
            except EncodeError as exc:
                errors[i] = str(exc)
                self.broadcast_errors += 1
                self.record_error(str(exc))
                self.logger.error("%s: item not broadcast: %s", self.name, exc)
        sent = gone = 0
        if self.server.workers is not None:
            sent = self.server.flush()  # the clients of all workers, as counted at the handshake
        elif hub is not None:
            sent = hub.flush()
            gone = hub.last_disconnected
        results = []
        for i, item in enumerate(items):
            if i in errors:
                results.append({"error": errors[i], "broadcast_to": 0, "disconnected": 0, "message": item})
            else:
                results.append({"broadcast_to": sent, "disconnected": gone, "message": item})
                gone = 0
        return results

    async def process(self) -> None:
        """Broadcast the first input stream until it ends, then close the outputs."""
        if type(self).process_item is not WebSocketComponent.process_item:
            return await super().process()  # a subclass changed the per-item behaviour
        stream = next(iter(self.receive_streams.values()), None)
        max_batch = self.server_config.max_batch
        rate = self.server_config.broadcast_rate_limit
        pacer = Pacer(rate) if rate is not None else None  # slows the input down, drops nothing
        if pacer is not None:
            max_batch = min(max_batch, pacer.max_batch)
        try:
            if stream is None:
                return
            async with stream:
                ended = False
                while not ended:
                    try:
                        batch = [await stream.receive()]
                    except anyio.EndOfStream:
                        break
                    # take what is already waiting, so that it goes out in one write
                    while len(batch) < max_batch:
                        try:
                            batch.append(stream.receive_nowait())
                        except anyio.WouldBlock:
                            break
                        except anyio.EndOfStream:
                            ended = True
                            break
                    if pacer is not None:
                        await pacer.wait(len(batch))
                    try:
                        results = self._broadcast(batch)
                    except Exception as exc:  # not an encoding problem: keep serving
                        self.record_error(f"broadcast failed: {exc!r}")
                        self.logger.exception("%s: broadcast of %d items failed", self.name, len(batch))
                        continue
                    for result in results:
                        self.increment_processed()
                        await self.send_to_outputs(result)
        finally:
            await self.close_outputs()

    async def health_check(self) -> dict[str, Any]:
        stats = self.server.stats()
        return {
            "status": "healthy" if self.server.is_serving else "stopped",
            "component": type(self).__name__,
            "name": self.name,
            "connections": stats["connections"],
            "max_connections": self.server_config.max_connections,
            "processed": self.processed_count,
            "errors": self.error_count,
            "stats": stats,
        }
