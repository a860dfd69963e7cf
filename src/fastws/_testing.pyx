# In-memory transports for tests and micro-benchmarks of fastws' core.
#
# Never imported by the server: the hot-path module (_core) knows nothing of it.
# A client is registered through the same path as a real connection:
# ``Hub.new_client()`` then ``Client.on_ws_connected(WSTransport(...))``, with a
# ``MemoryTransport`` under picows' WSTransport instead of a socket.

from aiofastnet.transport cimport Transport
from aiofastnet.utils cimport NoResult
from cpython.bytes cimport PyBytes_FromStringAndSize
from picows.picows cimport MemoryBuffer, WSTransport

import logging

_logger = logging.getLogger("fastws.testing")


class _NoSocket:
    """What picows' WSTransport reads from ``get_extra_info("socket")``."""

    def fileno(self):
        return -1


cdef class CountingTransport(Transport):
    """An aiofastnet transport that writes nowhere and counts (the benchmarks' client).

    ``write_c`` (the broadcast fan-out) and ``write_nocheck`` (picows' control frames:
    CLOSE, PONG) count writes and bytes. ``close()``/``abort()`` end the connection:
    ``on_ws_disconnected`` follows on the next loop turn, as with a socket.
    """

    cdef readonly Py_ssize_t written
    cdef readonly Py_ssize_t writes
    cdef readonly Py_ssize_t high
    cdef readonly Py_ssize_t low
    cdef readonly bint closed
    cdef bint _closing
    cdef object _listener
    cdef WSTransport _ws

    def __init__(self, loop, object peer=("127.0.0.1", 0)):
        Transport.__init__(self, loop)
        self.high = 1 << 62
        self._extra = {"peername": peer, "socket": _NoSocket(),
                       # any non-None ssl_object makes picows write through write_nocheck
                       "ssl_object": True}

    cdef NoResult write_c(self, char* ptr, Py_ssize_t sz) except NoResult.EXC:
        self.written += sz
        self.writes += 1
        return NoResult.OK

    cpdef write_nocheck(self, data):
        self.write(data)

    def write(self, data):
        """The Python-level write (also the naive-loop baseline of the benchmarks)."""
        self.written += len(data)
        self.writes += 1

    def get_write_buffer_size(self):
        return 0

    def set_write_buffer_limits(self, high=None, low=None):
        self.high = (1 << 62) if high is None else high
        self.low = self.high // 4 if low is None else low

    cpdef is_closing(self):
        return self._closing or self.closed

    def close(self):
        self._end()

    cpdef abort(self):
        self._end()

    cdef _end(self):
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self._lost)

    def _lost(self):
        self.closed = True
        if self._listener is not None and self._ws is not None:
            self._listener.on_ws_disconnected(self._ws)


cdef class MemoryTransport(CountingTransport):
    """A ``CountingTransport`` that keeps what is written and can stop "reading".

    ``data`` holds every byte written (``take()`` returns and clears it). ``stall()``
    makes the peer stop reading: writes then pile up in ``backlog`` and, past the high
    limit the Hub set, ``pause_writing()`` is called on the client as aiofastnet does;
    ``drain()`` empties it and calls ``resume_writing()``.
    """

    cdef readonly bytearray data
    cdef readonly Py_ssize_t backlog
    cdef readonly bint stalled
    cdef readonly bint paused

    def __init__(self, loop, object peer=("127.0.0.1", 0)):
        CountingTransport.__init__(self, loop, peer)
        self.data = bytearray()

    cdef NoResult write_c(self, char* ptr, Py_ssize_t sz) except NoResult.EXC:
        self.write(PyBytes_FromStringAndSize(ptr, sz))
        return NoResult.OK

    def write(self, data):
        b = bytes(data)
        self.written += len(b)
        self.writes += 1
        self.data += b
        if self.stalled:
            self.backlog += len(b)
            if not self.paused and self.backlog > self.high and self._listener is not None:
                self.paused = True
                self._listener.pause_writing()

    def stall(self):
        """The peer stops reading: from now on writes are queued in ``backlog``."""
        self.stalled = True

    def drain(self):
        """The peer reads everything queued and keeps reading."""
        self.stalled = False
        self.backlog = 0
        if self.paused:
            self.paused = False
            if self._listener is not None:
                self._listener.resume_writing()

    def take(self):
        """Return the bytes written since the last ``take()``."""
        out = bytes(self.data)
        del self.data[:]
        return out

    def get_write_buffer_size(self):
        return self.backlog


def connect(hub, CountingTransport transport, setup=None):
    """Register ``transport`` with ``hub`` as one connected WebSocket client; return the client.

    Goes through the real path of a connection (``new_client`` + ``on_ws_connected``), so
    everything the Hub does to a client (broadcasts, CLOSE, pings) reaches ``transport``.
    ``setup(client)`` runs before it connects (what the node does at the handshake).
    """
    return connect_many(hub, [transport], setup)[0]


def connect_many(hub, transports, setup=None):
    """``connect`` for each transport; return the clients.

    The clients are allocated one after another (as the transports were), apart from the
    picows objects, so that a benchmark's fan-out walks memory as compactly as before.
    """
    cdef CountingTransport t
    ws = [WSTransport(False, t, _logger, t._loop) for t in transports]
    clients = [hub.new_client() for _ in transports]
    for t, w, c in zip(transports, ws, clients):
        t._listener = c
        t._ws = w
        if setup is not None:
            setup(c)
        c.on_ws_connected(w)
    return clients


def memory_buffer_capacity(buf):
    """The malloc'd capacity of a picows ``MemoryBuffer`` (bench/memory_budget.py)."""
    return (<MemoryBuffer?>buf).capacity
