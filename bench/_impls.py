"""The Python server implementations the server role (``bench/_server.py``) can run.

Each one listens on 127.0.0.1, port 0, and broadcasts one item to every client:

* ``fastws``: ``fastws.Server``; gets the dict and serializes it itself.
* ``fastws-aiofastnet``: ``fastws.Server`` with ``transport="aiofastnet"`` (the transports
  fastws used before the memory budget of issue 13; ``fastws`` runs with the default, ``auto``).
* ``fastws-component``: ``fastws.WebSocketComponent``, each item through
  ``await component.process_item(item)`` as a user of the original component drives it.
* ``websockets``: ``websockets.asyncio.server.serve`` + ``broadcast(conns, msg, text=True)``.
* ``picows``: picows defaults and the plain Python loop ``for t in ts: t.send(TEXT, payload)``.
* ``socketify`` (optional peer, uWebSockets): ``app.publish("all", payload, OpCode.TEXT)``; runs
  under whatever interpreter has socketify (``--socketify-python``).

The peers get ``msgspec.json.Encoder().encode(obj)`` once per message.
Bun (the other uWebSockets peer) is ``bench/bun_server.js``, which speaks the same protocol.
Imports are lazy: a process imports only the library it serves with.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


class Impl:
    """What the server role needs from an implementation."""

    port: int

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.fanout = args.mode == "fanout"  # no keepalive traffic during a measurement

    async def start(self) -> None:
        raise NotImplementedError

    def count(self) -> int:
        raise NotImplementedError

    def broadcast(self, obj: Any) -> int:
        raise NotImplementedError

    #: ``abroadcast`` is awaited for each message instead of calling ``broadcast``.
    is_async = False

    async def abroadcast(self, obj: Any) -> int:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        return []

    def stats(self) -> dict[str, int]:
        return {}

    def _encoder(self) -> Any:
        import msgspec  # noqa: PLC0415

        return msgspec.json.Encoder().encode


class FastwsImpl(Impl):
    #: the ``transport`` config key (None: the default)
    transport: str | None = None

    async def start(self) -> None:
        import fastws  # noqa: PLC0415

        a = self.args
        kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_connections": a.max_connections}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        if self.fanout:
            kwargs["heartbeat_interval"] = a.fastws_heartbeat
        if a.workers > 1:
            kwargs["workers"] = a.workers
        if a.max_queued_bytes:
            kwargs["max_queued_bytes"] = a.max_queued_bytes
        if a.certfile:
            kwargs["ssl"] = {"certfile": a.certfile, "keyfile": a.keyfile}
        self.server = fastws.Server(**kwargs)
        await self.server.start()
        self.port = self.server.port
        self._broadcast = self.server.broadcast

    def count(self) -> int:
        return self.server.connection_count

    def broadcast(self, obj: Any) -> int:
        return self._broadcast(obj)

    async def stop(self) -> None:
        await self.server.stop()

    def worker_pids(self) -> list[int]:
        if self.args.workers <= 1:
            return []
        return [p for p in self.server.workers.pids if p]

    def stats(self) -> dict[str, int]:
        s = self.server.stats()
        return {"flushes": s.get("flushes", 0), "deliveries": s.get("deliveries", 0)}


class FastwsAiofastnetImpl(FastwsImpl):
    transport = "aiofastnet"


class FastwsComponentImpl(FastwsImpl):
    """The drop-in component: one ``await process_item(item)`` per message."""

    is_async = True

    async def start(self) -> None:
        import fastws  # noqa: PLC0415

        a = self.args
        config: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "max_connections": a.max_connections}
        if self.fanout:
            config["heartbeat_interval"] = a.fastws_heartbeat
        if a.max_queued_bytes:
            config["max_queued_bytes"] = a.max_queued_bytes
        self.component = fastws.WebSocketComponent("bench", config)
        await self.component.start_server()
        self.server = self.component.server
        self.port = self.server.port
        self._process_item = self.component.process_item

    async def abroadcast(self, obj: Any) -> int:
        report = await self._process_item(obj)
        return int(report["broadcast_to"])

    async def stop(self) -> None:
        await self.component.stop_server()


class WebsocketsImpl(Impl):
    async def start(self) -> None:
        from websockets.asyncio.server import broadcast, serve  # noqa: PLC0415
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415

        self._enc = self._encoder()
        self._broadcast = broadcast
        self.conns: set[Any] = set()
        conns = self.conns

        async def handler(ws: Any) -> None:
            conns.add(ws)
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            finally:
                conns.discard(ws)

        kwargs: dict[str, Any] = {"backlog": 4096}
        if self.fanout:
            kwargs["ping_interval"] = None
        self.server = await serve(handler, "127.0.0.1", 0, **kwargs)
        self.port = self.server.sockets[0].getsockname()[1]

    def count(self) -> int:
        return len(self.conns)

    def broadcast(self, obj: Any) -> int:
        self._broadcast(self.conns, self._enc(obj), text=True)
        return len(self.conns)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class PicowsImpl(Impl):
    async def start(self) -> None:
        from picows import WSListener, WSMsgType, ws_create_server  # noqa: PLC0415

        self._enc = self._encoder()
        self._text = WSMsgType.TEXT
        self.transports: set[Any] = set()
        transports = self.transports

        class Listener(WSListener):
            def on_ws_connected(self, transport: Any) -> None:
                transports.add(transport)

            def on_ws_disconnected(self, transport: Any) -> None:
                transports.discard(transport)

        self.server = await ws_create_server(lambda request: Listener(), "127.0.0.1", 0, backlog=4096)
        self.port = self.server.sockets[0].getsockname()[1]

    def count(self) -> int:
        return len(self.transports)

    def broadcast(self, obj: Any) -> int:
        payload = self._enc(obj)
        text = self._text
        for t in self.transports:
            t.send(text, payload)
        return len(self.transports)

    async def stop(self) -> None:
        self.server.close()
        for t in list(self.transports):
            t.disconnect()
        await self.server.wait_closed()


class SocketifyImpl(Impl):
    """socketify's App on the running loop: its ``Loop`` adopts it and polls libuv from it."""

    async def start(self) -> None:
        from socketify import App, CompressOptions, OpCode  # noqa: PLC0415

        self._enc = self._encoder()
        self._text = OpCode.TEXT
        self.n = 0
        app = self.app = App()

        def opened(ws: Any) -> None:
            ws.subscribe("all")
            self.n += 1

        def closed(ws: Any, code: int, message: Any) -> None:
            self.n -= 1

        behaviour: dict[str, Any] = {
            "compression": CompressOptions.DISABLED,
            "open": opened,
            "close": closed,
            "message": lambda ws, message, opcode: None,
        }
        if self.fanout:
            behaviour["idle_timeout"] = 0  # uWS: 0 = no idle timeout, so no pings
        app.ws("/*", behaviour)
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        app.listen({"port": 0, "host": "127.0.0.1"}, lambda config: port.set_result(config.port))
        # what App.run() does, without blocking: let the Loop pump libuv from this asyncio loop
        app.loop.started = True
        app.loop.loop.call_soon(app.loop._keep_alive)
        self.port = await asyncio.wait_for(port, 10)
        self._publish = app.publish

    def count(self) -> int:
        return self.n

    def broadcast(self, obj: Any) -> int:
        self._publish("all", self._enc(obj), self._text)
        return self.n

    async def stop(self) -> None:
        # App.close() would stop the asyncio loop under the server role; the process exits next
        self.app.loop.started = False


IMPLS: dict[str, type[Impl]] = {
    "fastws": FastwsImpl,
    "fastws-component": FastwsComponentImpl,
    "fastws-aiofastnet": FastwsAiofastnetImpl,
    "websockets": WebsocketsImpl,
    "picows": PicowsImpl,
    "socketify": SocketifyImpl,
}
