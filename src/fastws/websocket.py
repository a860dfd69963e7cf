"""``WebSocketComponent``: the drop-in stream component that broadcasts its input.

A drop-in for autocoder_cc's ``WebSocketComponent`` (docs/dropin.md): the same
constructor, config keys, lifecycle, reports and attributes, on fastws' server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet

import anyio

from ._core import Client, encode_frame
from ._types import ConfigMapping, Item, Record
from .component import ComposedComponent
from .config import SERVER_KEY_DOCS, ConfigRequirement, ServerConfig, config_requirements
from .encoding import fallback_encode
from .exceptions import EncodeError
from .pacing import Pacer
from .server import Server
from .topics import topic_reader

__all__ = ["ClientsView", "WebSocketComponent"]


def _check_encodable(item: Item) -> None:
    """Raise :class:`EncodeError` if a running server would refuse ``item``."""
    try:
        encode_frame(item)
    except Exception as exc:
        if isinstance(item, str):  # sent verbatim: only a lone surrogate fails
            raise EncodeError(f"cannot send str as a text frame: {exc}") from None
        try:
            fallback_encode(item)  # what the server falls back to (fastws.encoding)
        except Exception:
            raise EncodeError(str(exc)) from None


class ClientsView(AbstractSet[Client]):
    """A read-only, live set of the connected clients (upstream's ``_connected_clients``)."""

    __slots__ = ("_server",)

    def __init__(self, server: Server) -> None:
        self._server = server

    def __contains__(self, client: object) -> bool:
        return client in self._server.clients

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._server.clients))

    def __len__(self) -> int:
        return self._server.connection_count

    def __repr__(self) -> str:
        return f"<ClientsView of {len(self)} clients>"


class WebSocketComponent(ComposedComponent):
    """Broadcast every item of the first input stream to every connected client.

    For each item, every output receives one report, in input order:
    ``{"broadcast_to": n, "disconnected": d, "message": item}`` where ``n`` is the
    number of clients the item was queued to and ``d`` the clients that left the
    server since the previous report (docs/dropin.md, "What the counts mean"). An
    item that cannot be sent gets ``{"error": reason, "broadcast_to": 0,
    "disconnected": 0, "message": item}``; the items around it go out.

    Items broadcast in the same loop turn (a batch from the input, or several
    ``process_item`` calls without a yield between them) reach each client in one write.

    With ``topic_field`` (a dotted path), the item's field names its topic: the item goes
    to that topic's subscribers (``broadcast_to`` counts them). An item without the field
    (or with ``null`` there) goes to every client; a field that is not a valid topic name
    (not a string, empty, too long, other characters) gets an error report.
    """

    Config = ServerConfig
    READS_ALL_INPUTS = False
    LISTENS = True
    REQUIRED_DEPENDENCIES = ("picows", "msgspec", "uvloop", "anyio")
    settings: ServerConfig

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        super().__init__(name, config)
        self.server_config: ServerConfig = self.settings
        self.server = Server(self.settings)
        #: Items that got an error report.
        self.broadcast_errors = 0
        self._disconnects_seen = 0
        self._cleaned_up = False
        self._stopped: anyio.Event | None = None  # made in process(), inside the event loop
        rate = self.settings.broadcast_rate_limit
        self._pacer = Pacer(rate) if rate is not None else None  # slows the input down, drops nothing
        self.max_batch = min(self.settings.max_batch, self._pacer.max_batch if self._pacer else self.settings.max_batch)
        self._connected_clients = ClientsView(self.server)
        field = self.settings.topic_field
        self._topic_of = topic_reader(field, self.settings.max_topic_length) if field is not None else None
        if self.config.get("require_auth") or self.config.get("jwt_secret"):
            self.logger.warning(
                "%s.config: require_auth/jwt_secret are not enforced (nor were they by the original "
                "component); set auth: {jwt_secret: ...} to require tokens",
                name,
            )

    @classmethod
    def get_config_requirements(cls) -> list[ConfigRequirement]:
        return config_requirements(ServerConfig, SERVER_KEY_DOCS)

    # -- the original's attributes -------------------------------------------------------

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        """The configured port; once started, the bound one (useful with ``port: 0``)."""
        return self.server.port

    def listening_port(self) -> int | None:
        return self.server.port if self.server.is_serving else None

    @property
    def max_connections(self) -> int:
        return self.settings.max_connections

    @property
    def heartbeat_interval(self) -> float:
        return self.settings.heartbeat_interval

    @property
    def connected_clients(self) -> ClientsView:
        """The connected clients: a read-only live set (``len()``, ``in``, iteration)."""
        return self._connected_clients

    @property
    def connection_count(self) -> int:
        return self.server.connection_count

    # -- lifecycle: the server runs from setup() (or start()) to cleanup() (or stop()) --------

    async def setup(self, harness_context: object = None) -> None:
        self._cleaned_up = False
        await self.server.start()
        await super().setup(harness_context)

    async def cleanup(self) -> None:
        """Stop the server: clients get CLOSE 1001 and the port is released. Safe twice."""
        self._cleaned_up = True
        if self._stopped is not None:
            self._stopped.set()
        await self.server.stop()
        await super().cleanup()

    async def start_server(self) -> None:
        await self.server.start()

    async def stop_server(self) -> None:
        await self.server.stop()

    # -- broadcasting ----------------------------------------------------------------------

    def _disconnected(self) -> int:
        """Clients that left the server since the previous report."""
        total = self.server.disconnect_count
        if total < self._disconnects_seen:  # the server was restarted: its count too
            self._disconnects_seen = 0
        gone, self._disconnects_seen = total - self._disconnects_seen, total
        return gone

    def _report(self, item: Item, outcome: int | Exception) -> Record:
        if isinstance(outcome, Exception):
            self.broadcast_errors += 1
            self.record_error(str(outcome))
            if isinstance(outcome, EncodeError):
                self.logger.error("%s: item not broadcast: %s", self.name, outcome)
            else:
                self.logger.error("%s: item not broadcast: %r", self.name, outcome, exc_info=outcome)
            return {"error": str(outcome), "broadcast_to": 0, "disconnected": 0, "message": item}
        self.increment_processed()
        return {"broadcast_to": outcome, "disconnected": self._disconnected(), "message": item}

    def _publish(self, items: list[Item]) -> list[int | Exception]:
        """One outcome per item: the clients it was queued to, or why it was not sent."""
        topic_of = self._topic_of
        if topic_of is not None:
            return self._publish_topics(items, topic_of)
        if self.server.is_serving:
            try:
                return list(self.server.broadcast_many(items))
            except Exception as exc:  # not about one item: every item gets the error
                return [exc] * len(items)
        return [self._not_serving(item) for item in items]

    @staticmethod
    def _not_serving(item: Item) -> int | Exception:
        """Not serving: report what could not be serialized anyway."""
        try:
            _check_encodable(item)
        except EncodeError as exc:
            return exc
        return 0

    def _publish_topics(self, items: list[Item], topic_of: Callable[[Item], str | None]) -> list[int | Exception]:
        """:meth:`_publish` with ``topic_field``: an item whose field is not a topic gets an error."""
        out: list[int | Exception] = []
        good: list[Item] = []
        topics: list[str | None] = []
        slots: list[int] = []
        for item in items:
            try:
                topic = topic_of(item)
            except EncodeError as exc:
                out.append(exc)
                continue
            slots.append(len(out))
            out.append(0)
            good.append(item)
            topics.append(topic)
        if not good:
            return out
        if self.server.is_serving:
            try:
                results: list[int | Exception] = list(self.server.broadcast_many(good, topics=topics))
            except Exception as exc:  # not about one item: every item gets the error
                results = [exc] * len(good)
        else:
            results = [self._not_serving(item) for item in good]
        for slot, result in zip(slots, results, strict=True):
            out[slot] = result
        return out

    def _broadcast(self, items: list[Item]) -> list[Record]:
        """Broadcast ``items`` now (no await); one report each, in order."""
        return [self._report(item, outcome) for item, outcome in zip(items, self._publish(items), strict=True)]

    def broadcast(self, item: Item) -> Record:
        """Broadcast one item now (no await) and return its report."""
        server = self.server
        if not server.is_serving:
            return self._broadcast([item])[0]
        try:
            topic_of = self._topic_of
            queued = server.broadcast(item) if topic_of is None else server.broadcast(item, topic=topic_of(item))
        except Exception as exc:
            return self._report(item, exc)
        return self._report(item, queued)

    async def process_item(self, item: Item) -> Record:
        """Broadcast ``item`` and return its report, without waiting for the write.

        Calls made in the same loop turn are written to each client together.
        """
        return self.broadcast(item)

    async def process(self) -> None:
        """Broadcast the first input until it ends. With no input bound, serve until
        :meth:`cleanup` (or :meth:`stop`): clients can connect, and
        :meth:`process_item` / :meth:`broadcast` called by other code reach them."""
        if self.first_input() is not None:
            return await super().process()
        self._stopped = anyio.Event()
        try:
            if not self._cleaned_up:
                await self._stopped.wait()
        finally:
            await self.close_outputs()

    async def process_batch(self, batch: list[Item]) -> None:
        if type(self).process_item is not WebSocketComponent.process_item:
            return await super().process_batch(batch)  # a subclass changed the per-item behaviour
        if self._pacer is not None:
            await self._pacer.wait(len(batch))
        await self.emit(self._broadcast(batch))

    # -- health ------------------------------------------------------------------------------

    def get_health_status(self) -> Record:
        health = super().get_health_status()
        stats = self.server.stats()
        if health["status"] == "healthy" and not self.server.is_serving:
            health["status"] = "stopped"
        health.update(
            connections=stats["connections"],
            max_connections=self.max_connections,
            broadcast_errors=self.broadcast_errors,
            stats=stats,
        )
        return health

