# The broadcast hot path of fastws.
#
# Encode each item once (msgspec), frame it once, append the frame to a tick
# buffer, and write that one buffer to every connected client once per loop
# turn: on the event loop's own TCP transports (``transport: loop``, the default)
# with one send(2) on the socket (``Client._write``; what the socket does not take
# goes to the transport, which keeps the order), on aiofastnet's through its
# C-level ``Transport.write_c`` (a direct send(2) too).
#
# Python sees three names: ``Hub``, ``Client`` and ``encode_frame``. Test and
# benchmark transports live in ``fastws._testing``, never imported from here.

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset
from ._frame cimport reserve, write_header
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef extern from "<sys/socket.h>":
    ssize_t send(int, const void*, size_t, int) nogil
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL

from aiofastnet.transport cimport Transport
from picows.picows cimport MemoryBuffer, WSCloseCode, WSCloseHandshake, WSFrame, WSListener, WSMsgType, WSTransport

import logging
import os
from gc import get_referents as _gc_referents
from collections import deque

import msgspec

from .exceptions import EncodeError

cdef extern from *:
    void __builtin_prefetch(const void*) nogil

cdef extern from "<string.h>":
    void* memmem(const void*, size_t, const void*, size_t) nogil

from ._deflate cimport Deflater, Inflater  # permessage-deflate (RFC 7692)

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object, Py_ssize_t*) except NULL
    object PyUnicode_DecodeUTF8Stateful(const char*, Py_ssize_t, const char*, Py_ssize_t*)

cdef:
    object _logger = logging.getLogger("fastws.core")
    int DEBUG = logging.DEBUG

    # Client states
    enum:
        S_OPEN = 0
        S_CLOSING = 1      # we sent CLOSE or decided to drop it; skipped by fan-out
        S_CLOSED = 2

    # Slow-client policies
    enum:
        POLICY_DISCONNECT = 0
        POLICY_DROP = 1

    Py_ssize_t TICK_KEEP = 64 * 1024     # capacity kept between ticks

    # Why a registered client left (Client._why, Hub._disconnects); names in DISCONNECT_REASONS
    enum:
        R_OTHER = 0
        R_CLIENT_CLOSE = 1        # the client started the closing handshake
        R_CONNECTION_LOST = 2     # TCP closed or reset without a closing handshake
        R_SERVER_CLOSE = 3        # close()/abort()/close_all(), e.g. the server stopping
        R_PROTOCOL_ERROR = 4      # closed 1002/1007 (by fastws or by picows' frame parser)
        R_MESSAGE_TOO_BIG = 5     # closed 1009
        R_POLICY = 6              # closed 1008 for another reason
        R_RATE_LIMITED = 7        # closed 1008 "rate limit exceeded"
        R_HEARTBEAT = 8           # no answer to a ping in time
        R_SLOW_CLIENT = 9         # backlog over max_queued_bytes (disconnect policy)
        R_FRAGMENT_TIMEOUT = 10   # a fragmented message left unfinished past fragment_timeout (1008)
        R_COUNT = 11
    tuple DISCONNECT_REASONS = ("other", "client_close", "connection_lost", "server_close", "protocol_error",
                                "message_too_big", "policy_violation", "rate_limited", "heartbeat_timeout",
                                "slow_client", "fragment_timeout")

    # How Client._shut ends the TCP connection after its CLOSE frame (if any)
    enum:
        KEEP_OPEN = 0             # wait for the peer's CLOSE (closing handshake)
        DISCONNECT = 1            # close once the queued bytes are written
        DROP_NOW = 2              # abort: drop what is queued
    bytes PING_FRAME = b"\x89\x00"


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline Py_ssize_t _write_header(uint8_t* p, uint8_t opcode, uint64_t n) noexcept:
    """Write an unmasked FIN frame header for an ``n``-byte payload; return its size."""
    return write_header(p, 0x80 | opcode, n)


cdef inline Py_ssize_t _header_size(bytes frame) noexcept:
    """Header size of an unmasked frame made by ``_write_header`` (at least 2 bytes long)."""
    cdef uint8_t n = (<const uint8_t*>PyBytes_AS_STRING(frame))[1] & 0x7F
    return 2 if n < 126 else (4 if n == 126 else 10)


cdef inline bint _is_ascii(const char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t i = 0
    cdef const uint64_t* w
    while i + 8 <= n:
        w = <const uint64_t*>(p + i)
        if w[0] & 0x8080808080808080ULL:
            return False
        i += 8
    while i < n:
        if <uint8_t>p[i] & 0x80:
            return False
        i += 1
    return True


cdef inline bint _close_code_allowed(int code) noexcept:
    # RFC 6455 7.4 plus the IANA registry (1012-1014 are registered)
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


cdef inline int _reason_for_code(int code) noexcept:
    if code == 1009:
        return R_MESSAGE_TOO_BIG
    if code == 1008:
        return R_POLICY
    return R_PROTOCOL_ERROR


cdef bytes _fallback_payload(item, exc, fallback):
    """``fallback(item)`` (the JSON payload as bytes) after msgspec raised ``exc``; else EncodeError."""
    if fallback is not None:
        try:
            payload = fallback(item)
        except Exception as fallback_exc:
            exc = fallback_exc
        else:
            if isinstance(payload, bytes):
                return <bytes>payload
            exc = TypeError(f"encode_fallback returned {type(payload).__name__}, not bytes")
    raise EncodeError(f"cannot serialize {type(item).__name__} to JSON: {exc}")


cdef object _oversized(Py_ssize_t n, Py_ssize_t cap):
    return EncodeError(f"item is {n} bytes as JSON/UTF-8, larger than max_queued_bytes ({cap}): "
                       "no client could take it without being cut as slow; raise max_queued_bytes to send it")


cdef inline object _unencodable_str(exc):
    return EncodeError(f"cannot send str as UTF-8 text: {exc}")



# -- topics (issue 15; docs/topics.md) --------------------------------------------------

ctypedef struct FrameRec:
    Py_ssize_t off          # the frame in the tick buffer
    Py_ssize_t size
    Py_ssize_t hlen         # its header length (payload at off + hlen)
    Py_ssize_t doff         # the same message in the deflater's buffer (dsize 0: not there)
    Py_ssize_t dsize
    Py_ssize_t eoff         # its envelope frame in the envelope buffer (esize 0: not built)
    Py_ssize_t esize
    unsigned long long offset   # its topic offset (0: a broadcast without topic)
    bint json               # the payload is known to be JSON (else checked when enveloped)


cdef object _envelope_encoder = msgspec.json.Encoder()
cdef object _json_decode = msgspec.json.decode


cdef str _new_epoch():
    return os.urandom(6).hex()


@cython.final
cdef class Topic:
    """One topic of a Hub: its offset counter, epoch and history."""

    cdef:
        readonly str name
        readonly str epoch
        readonly unsigned long long offset       # the last offset given (or adopted)
        readonly unsigned long long flushed      # the last offset written to the clients
        readonly unsigned long long messages
        object history                           # deque of (offset, frame bytes, time)
        bytes _name_json
        bytes _epoch_json
        list _idx                                # its frames in this flush (Hub._index_turn)
        Py_ssize_t _last                         # its last frame of this turn (latest-only history)
        # idle eviction (Hub.evict_idle_topics), stamped by the sweeps, not by publish:
        unsigned long long _swept                # ``messages`` at the last sweep
        double _quiet                            # the sweep since which no message came (0: none yet)

    def __init__(self, str name, Py_ssize_t keep, str epoch):
        self.name = name
        self._name_json = _envelope_encoder.encode(name)
        self.history = deque(maxlen=keep) if keep > 0 else None
        self._idx = []
        self._last = -1
        self.set_epoch(epoch)

    cdef set_epoch(self, str epoch):
        self.epoch = epoch
        self._epoch_json = _envelope_encoder.encode(epoch)

    cdef bytes envelope_head(self, unsigned long long offset, str epoch=None):
        """The envelope up to its data, under this topic's epoch (or ``epoch``: a replay's)."""
        epoch_json = self._epoch_json if epoch is None or epoch == self.epoch else _envelope_encoder.encode(epoch)
        return (b'{"topic":' + self._name_json + b',"offset":' + str(offset).encode() + b',"epoch":'
                + epoch_json + b',"data":')


@cython.final
cdef class Audience:
    """Clients that get the same frames: the same topics, format and compression.

    Built once per flush (``Hub._build``) and written to each member; clients with the
    default (every frame, plain) have none and take the tick buffer itself.
    """

    cdef:
        frozenset topics       # exact names
        tuple prefixes         # ``prefix*`` patterns, without the '*'
        bint all_topics        # every topic (firehose, or a '*' grant)
        bint envelope
        bint deflate
        readonly Py_ssize_t members
        object key
        unsigned long long stamp   # the flush its buffer was built for
        char* ptr                  # what its members get: a Hub buffer, or NULL: Hub._arena at ``off``
        Py_ssize_t off
        Py_ssize_t size
        Py_ssize_t frames

    cdef inline bint matches(self, Topic t):
        cdef str p
        if self.all_topics or t.name in self.topics:
            return True
        for p in self.prefixes:
            if t.name.startswith(p):
                return True
        return False


cdef Py_ssize_t IDLE_READ_BUFFER = 512


cdef _shrink_read_buffer(tr, Py_ssize_t size):
    """Cut picows' read buffer (2048 bytes at least when created) to ``size`` (+256 bytes
    that picows keeps past the end for its SIMD unmasking), when what it holds fits.

    picows grows the buffer by itself: after each read, when less than 256 bytes (or
    10 %) are left, it doubles it (``WSProtocol._maybe_grow_read_buffer``), and every
    read asks ``get_buffer()`` for the current pointer. The buffer is a cdef field of
    ``WSProtocol`` (not in picows.pxd): it is found among the protocol's references,
    and ``get_buffer()`` tells where its unread data ends (a frame that came with the
    upgrade request is still there when ``on_ws_connected`` runs).
    """
    get_protocol = getattr(tr, "get_protocol", None)
    proto = get_protocol() if get_protocol is not None else None
    if proto is None:
        return
    cdef MemoryBuffer rb = None
    for o in _gc_referents(proto):
        if type(o) is MemoryBuffer:
            rb = <MemoryBuffer>o
            break
    if rb is None or rb.size <= size:
        return
    cdef Py_ssize_t free = len(proto.get_buffer(-1))
    if rb.size - free > size // 2:
        return  # data waiting to be parsed: leave the buffer as it is
    cdef char* data = <char*>PyMem_Realloc(rb.data, size + 256)
    if data != NULL:
        rb.data = data
        rb.capacity = size + 256
        rb.size = size


cdef bytes _frame_of(const char* payload, Py_ssize_t n, uint8_t opcode):
    cdef uint8_t header[10]
    cdef Py_ssize_t h = _write_header(header, opcode, n)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, h + n)
    memcpy(PyBytes_AS_STRING(frame), header, h)
    memcpy(PyBytes_AS_STRING(frame) + h, payload, n)
    return frame


cdef bytes _text_frame(bytes payload):
    return _frame_of(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), 0x1)


cdef bytes _envelope_data(const char* p, Py_ssize_t n, bint json, uint8_t opcode):
    """The ``data`` of an envelope: the payload itself when it is JSON, else as a JSON string."""
    cdef bytes payload = PyBytes_FromStringAndSize(p, n)
    if opcode == 0x2:
        return _envelope_encoder.encode(payload)  # binary: base64, as msgspec writes bytes
    if not json:
        try:
            _json_decode(payload)
        except (msgspec.DecodeError, ValueError):
            return _envelope_encoder.encode(payload.decode("utf-8", "replace"))
    return payload


cdef bytes _control(dict message):
    return _text_frame(_envelope_encoder.encode(message))


cdef inline void _prefetch(Client c) noexcept:
    cdef char* p = <char*><void*>c
    __builtin_prefetch(p)
    __builtin_prefetch(p + 64)
    if c.transport is not None:
        __builtin_prefetch(&c.transport.is_close_frame_sent)


cdef class Client(WSListener):
    """One WebSocket connection: the picows listener and the registry entry.

    State lives in C fields (about 100 bytes); there is no task per connection.
    """

    cdef:
        # What the fan-out reads for every client on every turn comes first, within the
        # object's first 96 bytes (Hub.flush prefetches them a client ahead).
        readonly WSTransport transport
        Transport _raw                 # aiofastnet's transport (write_c); None on the loop's own transports
        object _tr                     # the transport under picows (either kind)
        Audience _aud                  # None: every frame, plain (the fast path)
        int _fd                        # its socket, for send(2) on the loop's plain TCP transports; else -1
        int _state
        bint _queued                   # _tr may hold unsent bytes: write through it (keeps the order)
        bint _dropping                 # drop policy: an episode of skipped messages
        bint _deflate                  # broadcasts go to it compressed (Hub.deflater's buffer)
        Hub _hub
        Py_ssize_t _index              # position in Hub._clients, -1 when not listed
        bint _reject                   # over max_connections: close 1008 after the handshake
        bint _over_cap                 # write backlog above the cap (pause_writing)
        readonly Py_ssize_t dropped    # messages skipped for this client
        Py_ssize_t _episode_dropped
        readonly double connected_at
        readonly double last_seen
        public object path             # request path (str), kept after the headers are released
        readonly object remote         # (host, port) of the peer
        # inbound message assembly
        WSMsgType _frag_type           # TEXT or BINARY while a fragmented message is open
        bint _frag_open
        bytearray _frag_buf
        bytes _utf8_tail
        double _frag_at                # when the open fragmented message started
        # inbound rate limit: a token bucket, on when Hub.msg_rate > 0
        double _tokens
        double _tokens_at
        int _why                       # R_*: why it is closing (set once)
        # permessage-deflate (negotiated by node.py; see _deflate.pyx)
        bint _client_nct               # client_no_context_takeover: nothing kept between messages
        int _wbits                     # server_max_window_bits it accepted (8-15)
        bint _frag_compressed          # the open fragmented message is compressed
        Inflater _inflater             # its own decompressor, made on its first compressed message
        # topics (issue 15): set by the node before the connection opens
        frozenset _topics              # ?topics= / subscribe messages; None: not chosen
        tuple _patterns                # what its token allows (names, 'prefix*'); None: anything
        bint _envelope                 # ?format=envelope
        dict _want                     # topic -> offset to recover after (None: the latest message)
        dict _epochs                   # topic -> the epoch that offset belongs to
        list _held                     # while recovering from a shared history: (topic, epoch, offset, frame)
        dict _replayed                 # topic -> (epoch, offset) the recovery covered (not resent)

    def __cinit__(self):
        self._index = -1
        self._state = S_OPEN
        self._fd = -1

    cdef inline int _write(self, const char* p, Py_ssize_t n) except -1:
        """Write ``n`` bytes now (what the socket does not take is copied and queued).

        Every write fastws makes to an open connection comes here (broadcasts, replies,
        PINGs, PONGs), so ``_queued`` knows when the transport may hold bytes. picows
        itself writes only its CLOSE frame, after which nothing more is written.
        """
        cdef Py_ssize_t sent
        if self.transport.is_close_frame_sent:
            return 0  # picows refused a frame and sent CLOSE: nothing may follow it
        if self._fd >= 0:
            # The loop's own plain TCP transport: send(2) on its socket, with no Python call
            # when nothing waits in the transport (the common case). The fd cannot belong to
            # another connection yet: uvloop and asyncio close it only after
            # connection_lost, which picows passes on at once (on_ws_disconnected: closed).
            if self._queued:
                if self._tr.get_write_buffer_size():
                    self._tr.write(PyBytes_FromStringAndSize(p, n))
                    return 0
                self._queued = False
            sent = send(self._fd, p, <size_t>n, MSG_NOSIGNAL | MSG_DONTWAIT)
            if sent == n:
                return 0
            if sent < 0:
                # EAGAIN: the socket is full; any other error: the transport's own write
                # meets it again and closes the connection (on_ws_disconnected follows)
                if self._tr.is_closing():
                    return 0
                sent = 0
            self._queued = True
            self._tr.write(PyBytes_FromStringAndSize(p + sent, n - sent))
        elif self._raw is not None:
            self._raw.write_c(<char*>p, n)
        elif not self._tr.is_closing():
            # TLS on the loop's transport: picows hands the bytes to it
            self.transport._fast_write(<char*>p, n)
        return 0

    cdef _send_frame(self, const char* p, Py_ssize_t n, uint8_t opcode):
        """One unmasked frame to this client alone, through ``_write``: the loop's own
        transports keep a reference to what they queue, so picows' ``send`` of more than
        8192 bytes (a view of its reused write buffer) is not safe there."""
        cdef bytes frame = _frame_of(p, n, opcode)
        self._write(PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame))

    # -- picows callbacks ----------------------------------------------------------

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        tr = self._tr = transport.underlying_transport
        if isinstance(tr, Transport):
            self._raw = <Transport>tr
        elif not transport.is_secure and transport._socket >= 0:
            self._fd = transport._socket
        self.connected_at = self.last_seen = _now()
        self._tokens = self._hub.msg_burst
        self._tokens_at = self.connected_at
        self.remote = tr.get_extra_info("peername")
        # The handshake request and response are not needed any more: release them,
        # and shrink picows' per-connection write buffer (used here only for control
        # frames; broadcasts go straight to the transport). About 3 KiB per client.
        transport.request = None
        transport.response = None
        cdef MemoryBuffer wb = transport._write_buffer
        cdef char* data = <char*>PyMem_Realloc(wb.data, 128)
        if data != NULL:
            wb.data = data
            wb.capacity = 128
            wb.size = 0
        if self._hub.idle_read_buffer > 0:
            _shrink_read_buffer(tr, self._hub.idle_read_buffer)
        self._hub._on_connected(self)

    cpdef on_ws_disconnected(self, WSTransport transport):
        cdef WSCloseHandshake hs = transport.close_handshake
        if self._why == R_OTHER:  # fastws did not close it: find out why it went away
            if hs is not None and hs.sent is not None and (hs.recv is None or not hs.recv_then_sent):
                # picows' frame parser refused a frame (unmasked, reserved opcode, bad control
                # frame, bad length, bad CLOSE payload): it sent CLOSE 1002/1007/1009 itself
                self._why = _reason_for_code(<int>hs.sent.code)
                self._hub.protocol_errors += 1
            elif hs is not None and hs.recv is not None:
                self._why = R_CLIENT_CLOSE
            else:
                self._why = R_CONNECTION_LOST
        self._state = S_CLOSED
        self._drop_fragments()
        self._hub._on_disconnected(self)

    cpdef pause_writing(self):
        self._over_cap = True
        self._hub._on_over_cap(self)

    cpdef resume_writing(self):
        self._over_cap = False
        if self._dropping:
            self._dropping = False
            self._hub._n_dropping -= 1
            _logger.warning("client %s caught up after %d dropped messages", self.remote, self._episode_dropped)
            self._episode_dropped = 0

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        self.last_seen = _now()
        if self._state != S_OPEN:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.disconnect()
            return
        if self._frag_open and self.last_seen - self._frag_at > self._hub.fragment_timeout:
            self._fragment_expired(self.last_seen)
            return
        if (frame.rsv1 or frame.rsv2 or frame.rsv3 or self._frag_compressed) and self._deflate_frame(frame):
            return  # permessage-deflate: a compressed message (or a protocol error, 1002)
        cdef WSMsgType t = frame.msg_type
        if t == WSMsgType.TEXT or t == WSMsgType.BINARY:
            if self._frag_open:
                self.fail(1002, "new data frame inside a fragmented message")
                return
            if self._hub.msg_rate > 0 and not self._take_token():
                self._fail(R_RATE_LIMITED, 1008, "rate limit exceeded")
                return
            if frame.fin:
                if frame.payload_size > self._hub.max_message_size:
                    self.fail(1009, "message too big")
                    return
                if t == WSMsgType.TEXT and not _is_ascii(frame.payload_ptr, frame.payload_size):
                    try:
                        PyUnicode_DecodeUTF8Stateful(frame.payload_ptr, frame.payload_size, "strict", NULL)
                    except UnicodeDecodeError:
                        self.fail(1007, "invalid UTF-8 in a text message")
                        return
                self._hub._on_message(self, t, frame.payload_ptr, frame.payload_size)
                return
            self._frag_open = True
            self._frag_at = self.last_seen
            self._frag_type = t
            self._frag_buf = bytearray()
            self._utf8_tail = b""
            self._fragment(frame)
        elif t == WSMsgType.CONTINUATION:
            if not self._frag_open:
                self.fail(1002, "continuation frame without a message to continue")
                return
            self._fragment(frame)
        elif t == WSMsgType.PING:
            if self._over_cap:
                # It is not reading: a PONG would only grow its backlog (a PING flood
                # would grow it without bound under the drop policy). Skip and count.
                self._hub.pongs_skipped += 1
            else:
                self._send_frame(frame.payload_ptr, frame.payload_size, 0xA)
        elif t == WSMsgType.CLOSE:
            self._on_close_frame(frame)
        # PONG: last_seen is all the heartbeat needs

    cdef _fragment(self, WSFrame frame):
        cdef Py_ssize_t used = 0
        cdef bytes chunk
        if PyByteArray_GET_SIZE(self._frag_buf) + frame.payload_size > self._hub.max_message_size:
            self.fail(1009, "message too big")
            return
        data = frame.get_payload_as_bytes()
        self._frag_buf += data
        if self._frag_type == WSMsgType.TEXT:
            if self._utf8_tail or not _is_ascii(frame.payload_ptr, frame.payload_size):
                chunk = self._utf8_tail + data if self._utf8_tail else data
                try:
                    PyUnicode_DecodeUTF8Stateful(PyBytes_AS_STRING(chunk), PyBytes_GET_SIZE(chunk), "strict",
                                                 NULL if frame.fin else &used)
                except UnicodeDecodeError:
                    self.fail(1007, "invalid UTF-8 in a text message")
                    return
                self._utf8_tail = b"" if frame.fin else chunk[used:]
        if frame.fin:
            buf = self._frag_buf
            self._drop_fragments()
            self._hub._on_message(self, self._frag_type, PyByteArray_AS_STRING(buf), PyByteArray_GET_SIZE(buf))

    cdef _on_close_frame(self, WSFrame frame):
        cdef int code = 1000
        if frame.payload_size:
            code = <int>frame.get_close_code()
            if not _close_code_allowed(code):
                self.fail(1002, "invalid close code %d" % code)
                return
        self._shut(R_CLIENT_CLOSE, code, None, DISCONNECT)

    cdef inline bint _take_token(self) noexcept:
        """Token bucket: refill at Hub.msg_rate per second up to Hub.msg_burst, take one."""
        cdef double now = self.last_seen
        cdef double tokens = self._tokens + (now - self._tokens_at) * self._hub.msg_rate
        if tokens > self._hub.msg_burst:
            tokens = self._hub.msg_burst
        self._tokens_at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    cdef inline _drop_fragments(self):
        self._frag_open = False
        self._frag_buf = None
        self._utf8_tail = None

    cdef _fragment_expired(self, double now):
        cdef double age = now - self._frag_at
        _logger.warning("closing %s: a fragmented message stayed unfinished for %.1fs (fragment_timeout %gs)",
                        self.remote, age, self._hub.fragment_timeout)
        self._fail(R_FRAGMENT_TIMEOUT, 1008, "message not finished within fragment_timeout")

    cdef bint _shut(self, int why, int code, bytes reason, int how) except -1:
        """Close with a reason, once: the one way fastws ends a connection.

        Marks the client closing (the fan-out skips it, the next flush forgets it),
        records ``why`` (the first cause wins), frees an unfinished message, sends CLOSE
        ``code`` (none when 0) and ends the TCP connection as ``how`` says. Returns False
        when it was not open.
        """
        if self._state != S_OPEN:
            return False
        self._state = S_CLOSING
        if self._why == R_OTHER:
            self._why = why
        if self._frag_open:
            self._drop_fragments()
        cdef WSTransport t = self.transport
        if t is None:  # never connected: nothing to send or drop
            return True
        if code:
            t.send_close(<WSCloseCode>code, reason)
        if how == DISCONNECT:
            t.disconnect()
        elif how == DROP_NOW:
            t.disconnect(False)
        return True

    cdef _fail(self, int why, int code, str reason):
        if self._shut(why, code, reason.encode(), DISCONNECT):
            self._hub.protocol_errors += 1
            if self._hub._debug:
                _logger.debug("closing %s: %d %s", self.remote, code, reason)

    # -- permessage-deflate (RFC 7692), inbound -------------------------------------------

    def use_deflate(self, int wbits=15, bint client_no_context_takeover=False):
        """The handshake agreed on permessage-deflate (node.py): before the connection opens."""
        self._deflate = True
        self._wbits = wbits
        self._client_nct = client_no_context_takeover

    @property
    def compression(self):
        """``"deflate"`` when permessage-deflate was negotiated, else None."""
        return "deflate" if self._deflate else None

    cdef bint _deflate_frame(self, WSFrame frame) except -1:
        """A frame with RSV bits, or any frame inside a compressed message; False: not ours."""
        cdef WSMsgType t = frame.msg_type
        if frame.rsv2 or frame.rsv3 or (frame.rsv1 and not self._deflate):
            self.fail(1002, "reserved bits set without an extension")
            return True
        if not frame.rsv1:
            if t != WSMsgType.CONTINUATION:
                return False  # a control frame between fragments, or a new message (fails as usual)
            self._inflate_piece(self._inflater, frame)
            return True
        if t != WSMsgType.TEXT and t != WSMsgType.BINARY:
            self.fail(1002, "RSV1 set on a control or continuation frame")
            return True
        if self._frag_open:
            self.fail(1002, "new data frame inside a fragmented message")
            return True
        if self._hub.msg_rate > 0 and not self._take_token():
            self._fail(R_RATE_LIMITED, 1008, "rate limit exceeded")
            return True
        cdef Inflater inf = self._inflater
        if inf is None:
            if frame.fin and self._client_nct:
                inf = self._hub.deflater.shared  # nothing to keep: the Hub's one inflater
            else:
                inf = self._inflater = Inflater()
                self._hub.deflater.inflaters += 1
        if self._client_nct:
            inf.reset()
        self._frag_open = True
        self._frag_at = self.last_seen
        self._frag_type = t
        self._frag_compressed = True
        self._frag_buf = bytearray()
        self._inflate_piece(inf, frame)
        return True

    cdef _inflate_piece(self, Inflater inf, WSFrame frame):
        cdef int rc
        try:
            rc = inf.inflate_into(frame.payload_ptr, frame.payload_size, frame.fin, self._frag_buf,
                                  self._hub.max_message_size)
        except ValueError as exc:
            self.fail(1007, str(exc))
            return
        if rc < 0:
            self.fail(1009, "message too big")  # stopped at max_message_size while inflating
            return
        if not frame.fin:
            return
        buf = self._frag_buf
        self._frag_open = self._frag_compressed = False
        self._frag_buf = None
        if self._client_nct and self._inflater is not None:
            self._inflater = None  # no context to keep: give the memory back
            self._hub.deflater.inflaters -= 1
        cdef const char* p = PyByteArray_AS_STRING(buf)
        cdef Py_ssize_t n = PyByteArray_GET_SIZE(buf)
        if self._frag_type == WSMsgType.TEXT and not _is_ascii(p, n):
            try:
                PyUnicode_DecodeUTF8Stateful(p, n, "strict", NULL)
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in a text message")
                return
        self._hub._on_message(self, self._frag_type, p, n)

    cdef bint _send_deflate(self, message) except -1:
        """``send`` to a deflate client: compressed when at least ``compression_min_size``."""
        cdef Deflater d = self._hub.deflater
        data = message.encode() if isinstance(message, str) else message
        if d is None or len(data) < d.min_size:
            return False
        self._send_payload(d.compress_message(data, self._wbits), 0x41 if isinstance(message, str) else 0x42)
        return True

    cdef _send_payload(self, payload, uint8_t opcode):
        """``payload`` (bytes-like) as one frame (``opcode`` with RSV1 0x40 when compressed)."""
        cdef const unsigned char[::1] view
        if isinstance(payload, bytes):
            self._send_frame(PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload), opcode)
            return
        view = memoryview(payload).cast("B")
        if view.shape[0] == 0:
            self._send_frame(b"", 0, opcode)
        else:
            self._send_frame(<const char*>&view[0], view.shape[0], opcode)

    # -- topics (issue 15) ------------------------------------------------------------

    def set_subscription(self, topics=None, patterns=None, bint envelope=False):
        """What this client gets (node.py, before the connection opens): ``topics`` it chose
        (None: none chosen), ``patterns`` its token allows (None: anything), the envelope format."""
        self._topics = frozenset(topics) if topics is not None else None
        self._patterns = tuple(patterns) if patterns is not None else None
        self._envelope = envelope

    def want_recovery(self, dict since, dict epochs=None):
        """Recover on connect: ``since`` maps a topic to the offset it has (None: the latest)."""
        self._want = since
        self._epochs = epochs or {}

    @property
    def pending_recovery(self):
        """(since, epochs) while its frames are held for a recovery from a shared history, else None."""
        if self._held is None or not self._want:
            return None
        return self._want, self._epochs or {}

    @property
    def topics(self):
        """The topics it chose (a frozenset), or None: every topic it may get."""
        return self._topics

    @property
    def patterns(self):
        return self._patterns

    @property
    def envelope(self):
        return self._envelope

    # -- used by the server ------------------------------------------------------

    cpdef fail(self, int code, str reason):
        """Close the connection with ``code`` and ``reason`` (a protocol or policy error)."""
        self._fail(_reason_for_code(code), code, reason)

    cpdef close(self, int code=1000, str reason=""):
        """Start the closing handshake; the client's CLOSE reply (or a timeout) ends it."""
        self._shut(R_SERVER_CLOSE, code, reason.encode(), KEEP_OPEN)

    cpdef abort(self):
        """Drop the TCP connection now, without a closing handshake."""
        if self._shut(R_SERVER_CLOSE, 0, None, DROP_NOW):
            return
        if self._state == S_CLOSING and self.transport is not None:
            # closing already (e.g. waiting for the CLOSE reply): stop waiting
            self.transport.disconnect(False)

    def send(self, message):
        """Send one message to this client only (``str`` as text, bytes-like as binary)."""
        if self._state != S_OPEN:
            return
        if self._deflate and self._send_deflate(message):
            return  # permessage-deflate
        # framed here and written as one piece: picows' send() would grow its write buffer
        # for good, and (over 8192 bytes) hand the loop's transports a view of that buffer
        cdef Py_ssize_t n
        cdef const char* p
        if isinstance(message, str):
            p = PyUnicode_AsUTF8AndSize(message, &n)
            self._send_frame(p, n, 0x1)
        else:
            self._send_payload(message, 0x2)

    @property
    def is_open(self):
        return self._state == S_OPEN

    def write_buffer_size(self):
        return self._tr.get_write_buffer_size() if self._tr is not None else 0


@cython.final
cdef class Hub:
    """Registry of connected clients and the fan-out of broadcast frames.

    ``publish(item)`` serializes ``item`` once and appends its frame to the tick
    buffer; the first publish of a loop turn schedules ``flush`` with
    ``loop.call_soon``, so every item published in one turn reaches each client in
    one write. ``flush()`` may also be called directly to send now.

    Broadcast contract (as websockets' ``broadcast()``): it never waits for a
    client; clients that are closing are skipped and removed; a client whose
    unsent backlog passes ``max_queued_bytes`` is disconnected, or, with the
    ``drop`` policy, skipped until its backlog drains, each skipped message counted.
    An item whose JSON is larger than ``max_queued_bytes`` is refused at publish
    (``EncodeError``): no client could take it without passing the cap.

    Encoding: ``isinstance(item, str)`` goes out verbatim (UTF-8); anything else as
    msgspec JSON, then ``encode_fallback(item) -> bytes`` if msgspec refuses it. When
    ``count_nonfinite`` is set and a payload contains ``null``, ``count_nonfinite(item)``
    is added to ``nonfinite_numbers``. Every refused item is counted in ``encode_errors``.
    """

    cdef:
        list _clients
        object _loop
        object _encoder
        bytearray _scratch
        char* _tick
        Py_ssize_t _tick_len
        Py_ssize_t _tick_cap
        Py_ssize_t _tick_frames
        bint _flush_scheduled
        bint _in_fanout
        list _over_cap
        object _flush_cb
        object _on_message_cb
        object _encode_fallback
        object _count_nonfinite
        readonly object on_connect
        readonly object on_disconnect
        Py_ssize_t _n_dropping
        bint _debug
        int _policy
        public Py_ssize_t max_queued_bytes
        public Py_ssize_t max_message_size
        # a fragmented message open longer than this is closed (1008); checked on each
        # frame of that client and on each heartbeat round (ping_all)
        public double fragment_timeout
        # last flush
        readonly Py_ssize_t last_sent
        readonly Py_ssize_t last_disconnected
        # counters
        readonly unsigned long long messages
        readonly unsigned long long deliveries
        readonly unsigned long long bytes_out
        readonly unsigned long long flushes
        readonly unsigned long long dropped
        readonly unsigned long long slow_disconnects
        readonly unsigned long long closed_skipped
        readonly unsigned long long encode_errors
        readonly unsigned long long messages_in
        public unsigned long long protocol_errors
        readonly unsigned long long pongs_skipped      # PINGs not answered: client over its cap
        readonly unsigned long long nonfinite_numbers  # sum of count_nonfinite(item)
        # per-client inbound rate limit (messages/s, 0 = off) and bucket size
        public double msg_rate
        public double msg_burst
        unsigned long long _disconnects[R_COUNT]   # by R_* reason
        readonly Deflater deflater                  # permessage-deflate; None when compression is off
        # topics (issue 15): one record per frame of this turn, and who gets which
        FrameRec* _recs
        Py_ssize_t _recs_cap
        list _rec_topics                            # Topic (or None) of each frame of this turn
        Py_ssize_t _topic_frames                    # frames with a topic this turn
        dict _topics                                # name -> Topic
        dict _auds                                  # key -> Audience
        Py_ssize_t _n_special                       # clients with an Audience
        Py_ssize_t _n_envelope
        dict _exact                                 # topic name -> clients of audiences that name it
        list _wide                                  # audiences with prefixes or every topic (few)
        unsigned long long _stamp                   # flushes, for Audience.stamp
        char* _arena                                # the audiences' buffers of this flush, one after another
        Py_ssize_t _arena_len
        Py_ssize_t _arena_cap
        char* _etick                                # envelope frames of this turn
        Py_ssize_t _etick_len
        Py_ssize_t _etick_cap
        uint8_t* _match
        Py_ssize_t _match_cap
        bint _indexed                               # this flush's frames are indexed by topic
        list _untopiced                             # indices of this flush's frames without topic
        list _touched                               # topics with frames in this flush
        bint _firehose
        Py_ssize_t _keep                            # history entries per topic (at least the latest)
        bint _keep_all                              # history_size > 0: every message is kept when queued
        str _epoch                                  # of this Hub's offsets (a shared history has its own);
                                                    # a new one after each sweep that evicts topics
        double _ttl
        double _idle_ttl                            # topic_idle_ttl (0: topics are never evicted)
        readonly unsigned long long topics_evicted
        public bint shared_history                  # recovery comes from a shared history (node.py)
        # picows' read buffer of a new connection is cut to this many bytes (+256 of slack) once
        # it is open (0: left at picows' 2048); it grows again by itself for larger frames
        public Py_ssize_t idle_read_buffer
        public unsigned long long recovered
        public unsigned long long not_recovered
        public unsigned long long replayed
        public unsigned long long subscribe_errors

    def __cinit__(self):
        self._clients = []
        self._over_cap = []
        self._scratch = bytearray()
        self._tick_cap = TICK_KEEP
        self._tick = <char*>PyMem_Malloc(self._tick_cap)
        if self._tick == NULL:
            raise MemoryError()
        self._rec_topics = []
        self._untopiced = []
        self._touched = []
        self._topics = {}
        self._auds = {}
        self._exact = {}
        self._wide = []
        self._firehose = True
        self._epoch = _new_epoch()
        self.idle_read_buffer = IDLE_READ_BUFFER

    def __dealloc__(self):
        PyMem_Free(self._tick)
        PyMem_Free(self._recs)
        PyMem_Free(self._etick)
        PyMem_Free(self._arena)
        PyMem_Free(self._match)

    def __init__(self, loop, *, Py_ssize_t max_queued_bytes=1 << 20, str slow_client_policy="disconnect",
                 Py_ssize_t max_message_size=1 << 20, on_message=None, on_connect=None, on_disconnect=None,
                 double fragment_timeout=10.0, encode_fallback=None, count_nonfinite=None):
        if slow_client_policy not in ("disconnect", "drop"):
            raise ValueError(f"slow_client_policy must be 'disconnect' or 'drop', got {slow_client_policy!r}")
        if not fragment_timeout > 0:
            raise ValueError(f"fragment_timeout must be a positive number of seconds, got {fragment_timeout!r}")
        self.fragment_timeout = fragment_timeout
        self._encode_fallback = encode_fallback
        self._count_nonfinite = count_nonfinite
        self._loop = loop
        self._encoder = msgspec.json.Encoder()
        self._flush_cb = self.flush
        self._policy = POLICY_DROP if slow_client_policy == "drop" else POLICY_DISCONNECT
        self.max_queued_bytes = max_queued_bytes
        self.max_message_size = max_message_size
        self._on_message_cb = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self._debug = _logger.isEnabledFor(DEBUG)

    # -- registry ----------------------------------------------------------------

    def new_client(self, bint reject=False):
        """A listener for one new connection (``reject``: close it with 1008 once open)."""
        cdef Client c = Client()
        c._hub = self
        c._reject = reject
        return c

    cdef _on_connected(self, Client c):
        if c._reject:
            c._shut(R_POLICY, 1008, b"Max connections reached", DISCONNECT)
            return
        # A backlog above the cap fires pause_writing(); below a quarter of it, resume_writing().
        c._tr.set_write_buffer_limits(self.max_queued_bytes, self.max_queued_bytes // 4)
        c._index = len(self._clients)
        self._clients.append(c)
        if c._deflate and self.deflater is not None:
            self.deflater.joined(c._wbits)  # permessage-deflate
        self._join(c)
        if c._envelope and c._topics:
            self._announce(c)
        if c._want:
            if self.shared_history and any(v is not None for v in c._want.values()):
                c._held = []  # node.py fetches the history, then recover() and release()
            else:
                self._recover_local(c)
        if self.on_connect is not None:
            self.on_connect(c)

    cdef _on_disconnected(self, Client c):
        if c._dropping:
            c._dropping = False
            self._n_dropping -= 1
        if c._index >= 0:
            self._forget(c)

    cdef _forget(self, Client c):
        """Forget a client: out of the registry, its reason counted, ``on_disconnect`` told."""
        self._remove(c)
        self._disconnects[c._why] += 1
        if self.on_disconnect is not None:
            self.on_disconnect(c)

    cdef inline _remove(self, Client c):
        cdef list clients = self._clients
        cdef Py_ssize_t i = c._index, last = len(clients) - 1
        cdef Client moved
        if i != last:
            moved = <Client>clients[last]
            clients[i] = moved
            moved._index = i
        del clients[last]
        c._index = -1
        self._leave(c)
        if c._deflate:
            self._deflate_gone(c)  # permessage-deflate

    cdef _deflate_gone(self, Client c):
        if self.deflater is not None:
            self.deflater.left(c._wbits)
            if c._inflater is not None:
                self.deflater.inflaters -= 1
        c._inflater = None

    def enable_deflate(self, int level=6, Py_ssize_t min_size=128):
        """permessage-deflate: each message is also compressed once for the clients that
        negotiate it (``Client.use_deflate``), while at least one is connected."""
        self.deflater = Deflater(level, min_size)

    @property
    def clients(self):
        """A snapshot list of the connected clients."""
        return list(self._clients)

    def __len__(self):
        return len(self._clients)

    # -- slow clients --------------------------------------------------------------

    cdef _on_over_cap(self, Client c):
        self._over_cap.append(c)
        if not self._in_fanout:
            self._loop.call_soon(self._handle_over_cap)

    def _handle_over_cap(self):
        cdef Client c
        cdef Py_ssize_t n = 0
        pending = self._over_cap
        if not pending:
            return 0
        self._over_cap = []
        for c in pending:
            if c._state != S_OPEN or not c._over_cap:
                continue
            if self._policy == POLICY_DROP:
                if not c._dropping:
                    c._dropping = True
                    self._n_dropping += 1
                    _logger.warning("client %s is not reading (%d bytes queued): dropping its messages until it catches up",
                                    c.remote, c._tr.get_write_buffer_size())
            else:
                _logger.warning("client %s is not reading (%d bytes queued): disconnecting it",
                                c.remote, c._tr.get_write_buffer_size())
                self.slow_disconnects += 1
                n += 1
                c._shut(R_SLOW_CLIENT, 0, None, DROP_NOW)
                if c._index >= 0:
                    self._forget(c)
        return n

    # -- encoding ------------------------------------------------------------------

    cdef inline int _reserve(self, Py_ssize_t n) except -1:
        """Make room for ``n`` more bytes in the tick buffer."""
        return reserve(&self._tick, &self._tick_cap, self._tick_len + n, TICK_KEEP)

    cdef inline int _queued(self) except -1:
        """Count one more queued frame and make sure a flush is scheduled."""
        self._tick_frames += 1
        self.messages += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)
        return 0

    cdef inline int _append(self, const char* payload, Py_ssize_t n, uint8_t opcode, Topic t, bint json) except -1:
        self._reserve(n + 10)
        cdef Py_ssize_t off = self._tick_len, dlen = -1
        cdef Py_ssize_t h = _write_header(<uint8_t*>(self._tick + off), opcode, n)
        memcpy(self._tick + off + h, payload, n)
        self._tick_len += h + n
        if self.deflater is not None and self.deflater.clients:
            dlen = self.deflater.len
            self.deflater.add(payload, n, opcode)  # permessage-deflate: compressed once
        self._record(off, h, dlen, t, 0, json)
        return 0

    cdef int _record(self, Py_ssize_t off, Py_ssize_t h, Py_ssize_t dlen, Topic t, unsigned long long offset,
                     bint json) except -1:
        """Index the frame just appended at ``off`` (topic, offset, its deflate and envelope twins)."""
        cdef Py_ssize_t i = self._tick_frames, cap
        cdef FrameRec* recs
        if i >= self._recs_cap:
            cap = self._recs_cap * 2 if self._recs_cap else 64
            recs = <FrameRec*>PyMem_Realloc(self._recs, cap * sizeof(FrameRec))
            if recs == NULL:
                raise MemoryError()
            self._recs = recs
            self._recs_cap = cap
        cdef FrameRec* r = &self._recs[i]
        r.off = off
        r.size = self._tick_len - off
        r.hlen = h
        r.json = json
        r.esize = 0
        if dlen >= 0 and self.deflater.len > dlen:
            r.doff = dlen
            r.dsize = self.deflater.len - dlen
        else:
            r.dsize = 0
        r.offset = 0
        self._rec_topics.append(t)
        if t is not None:
            self._topic_frames += 1
            if offset == 0:
                offset = t.offset + 1
            t.offset = offset
            t.messages += 1
            r.offset = offset
            if t.history is not None:
                if self._keep_all:
                    self._remember(t, r)
                else:
                    t._last = i  # only the latest is kept: taken at the flush, once per topic
        if self._n_envelope:
            self._envelope(r, t)
        return 0

    cdef _remember(self, Topic t, FrameRec* r):
        cdef double now = _now()
        self._expire(t.history, now)
        t.history.append((r.offset, PyBytes_FromStringAndSize(self._tick + r.off, r.size), now))

    cdef inline _expire(self, object h, double now):
        """Drop the entries of history ``h`` older than ``history_ttl`` (oldest first)."""
        if self._ttl > 0:
            while h and (<tuple>h[0])[2] < now - self._ttl:
                h.popleft()

    cdef int _envelope(self, FrameRec* r, Topic t) except -1:
        """Build the envelope frame of record ``r`` into the envelope buffer."""
        cdef uint8_t opcode = (<const uint8_t*>self._tick)[r.off] & 0x0F
        data = _envelope_data(self._tick + r.off + r.hlen, r.size - r.hlen, r.json, opcode)
        head = t.envelope_head(r.offset) if t is not None else b'{"topic":null,"data":'
        cdef Py_ssize_t n = PyBytes_GET_SIZE(head) + PyBytes_GET_SIZE(data) + 1
        reserve(&self._etick, &self._etick_cap, self._etick_len + n + 10, 4096)
        cdef char* p = self._etick + self._etick_len
        cdef Py_ssize_t h = _write_header(<uint8_t*>p, 0x1, n)
        memcpy(p + h, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))
        memcpy(p + h + PyBytes_GET_SIZE(head), PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        p[h + n - 1] = b'}'
        r.eoff = self._etick_len
        r.esize = h + n
        self._etick_len += h + n
        return 0

    cdef int _encode_append(self, item, Topic t) except -1:
        cdef Py_ssize_t n
        cdef const char* p
        cdef bytes payload
        cdef bint nulls = False
        if isinstance(item, str):  # str subclasses too, as json-free text
            try:
                p = PyUnicode_AsUTF8AndSize(item, &n)
            except UnicodeEncodeError as exc:  # a lone surrogate
                self.encode_errors += 1
                raise _unencodable_str(exc) from None
        else:
            try:
                self._encoder.encode_into(item, self._scratch, 0)
                p = PyByteArray_AS_STRING(self._scratch)
                n = PyByteArray_GET_SIZE(self._scratch)
            except Exception as exc:
                try:
                    payload = _fallback_payload(item, exc, self._encode_fallback)
                except EncodeError:
                    self.encode_errors += 1
                    raise
                p = PyBytes_AS_STRING(payload)
                n = PyBytes_GET_SIZE(payload)
            # NaN/±Infinity went out as null: let count_nonfinite say how many (JSON only)
            nulls = self._count_nonfinite is not None and memmem(p, n, b"null", 4) != NULL
        if n > self.max_queued_bytes:
            self._refuse_oversized(n)
        self._append(p, n, 0x1, t, not isinstance(item, str))
        if nulls:  # after the copy: the callback is Python code
            self._add_nonfinite(item)
        return 0

    cdef int _refuse_oversized(self, Py_ssize_t n) except -1:
        self.encode_errors += 1
        raise _oversized(n, self.max_queued_bytes)

    cdef _add_nonfinite(self, item):
        try:
            self.nonfinite_numbers += self._count_nonfinite(item)
        except Exception:
            _logger.exception("count_nonfinite failed for a %s item", type(item).__name__)

    cpdef Py_ssize_t publish(self, item, topic=None) except -1:
        """Queue ``item`` for every client (or the clients of ``topic``); return how many.

        A ``str`` goes out verbatim as a text frame, anything else as JSON text.
        Raises ``EncodeError`` (nothing is queued) when ``item`` cannot be serialized.
        """
        if topic is None:
            self._encode_append(item, None)
            self._queued()
            return len(self._clients) - self._n_dropping
        cdef Topic t = self._topic(topic)
        self._encode_append(item, t)
        self._queued()
        return self._receivers(t)

    cpdef Py_ssize_t publish_frame(self, bytes frame, topic=None, unsigned long long offset=0,
                                   str epoch=None) except -1:
        """Queue a complete frame made by ``encode_frame`` (e.g. received from a backplane).

        A frame whose payload is larger than ``max_queued_bytes`` is skipped, counted in
        ``encode_errors`` and logged, and 0 is returned: it is not raised, since frames
        come from backplane and worker callbacks that must go on with the next frame.
        (``encode_frame(item, max_size=...)`` refuses such an item at its publisher.)
        """
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        if n > self.max_queued_bytes and n - _header_size(frame) > self.max_queued_bytes:
            self.encode_errors += 1
            _logger.warning("skipped a broadcast frame of %d bytes: larger than max_queued_bytes (%d)",
                            n, self.max_queued_bytes)
            return 0
        cdef Topic t = None
        if topic is not None:
            t = self._topic(topic)
            if epoch is not None and epoch != t.epoch:  # a shared history numbers this topic
                t.set_epoch(epoch)
                if t.history is not None:
                    t.history.clear()
                t.flushed = 0
        self._reserve(n)
        cdef Py_ssize_t off = self._tick_len, dlen = -1
        memcpy(self._tick + off, PyBytes_AS_STRING(frame), n)
        self._tick_len += n
        if self.deflater is not None and self.deflater.clients:
            dlen = self.deflater.len
            self.deflater.add_frames(PyBytes_AS_STRING(frame), n)  # permessage-deflate
        self._record(off, _header_size(frame), dlen, t, offset, False)
        self._queued()
        if t is not None:
            return self._receivers(t)
        return len(self._clients) - self._n_dropping

    # -- fan-out -------------------------------------------------------------------

    cpdef Py_ssize_t flush(self) except -1:
        """Write everything published since the last flush to every client, once.

        Returns the number of clients written to; ``last_disconnected`` holds the
        number of clients removed during this flush (closing, or over the cap).
        """
        self._flush_scheduled = False
        self.last_sent = 0
        self.last_disconnected = 0
        if self._tick_len == 0:
            return 0
        cdef:
            list clients = self._clients
            Py_ssize_t i = 0, sent = 0, gone = 0, frames = self._tick_frames
            char* ptr = self._tick
            Py_ssize_t size = self._tick_len
            Client c
            Audience a
            # permessage-deflate: the same messages compressed, when the buffer has them all
            char* dptr = NULL
            Py_ssize_t dsize = 0
            unsigned long long delivered = 0, nbytes = 0
        if self.deflater is not None and self.deflater.frames == frames:
            dptr = self.deflater.buf
            dsize = self.deflater.len
        self._stamp += 1
        self._in_fanout = True
        try:
            if self._topic_frames:
                self._mark_flushed()
            while i < len(clients):
                c = <Client>clients[i]
                if i + 1 < len(clients):
                    # The send(2) for this client evicts what the loop read before: fetch the
                    # next client's fields (and the transport flag _write reads) meanwhile
                    _prefetch(<Client>clients[i + 1])
                if c._state != S_OPEN:
                    # closing (heartbeat timeout, close handshake, error): skip and forget
                    self.closed_skipped += 1
                    gone += 1
                    self._forget(c)
                    continue
                i += 1
                a = c._aud
                if a is None:  # every frame (the fast path)
                    if c._dropping:
                        c.dropped += frames
                        c._episode_dropped += frames
                        self.dropped += frames
                        continue
                    if c._deflate and dsize:
                        c._write(dptr, dsize)
                        nbytes += dsize
                    else:
                        c._write(ptr, size)
                        nbytes += size
                    delivered += frames
                    sent += 1
                    continue
                if a.stamp != self._stamp:
                    self._build(a, dsize != 0)
                if c._held is not None:
                    self._hold(c)
                    continue
                if a.frames == 0:
                    continue
                if c._dropping:
                    c.dropped += a.frames
                    c._episode_dropped += a.frames
                    self.dropped += a.frames
                    continue
                c._write(a.ptr if a.ptr != NULL else self._arena + a.off, a.size)
                nbytes += a.size
                delivered += a.frames
                sent += 1
        finally:
            self._in_fanout = False
            self._tick_len = 0
            self._tick_frames = 0
            self._etick_len = 0
            if self._etick_cap > 4 * TICK_KEEP:
                PyMem_Free(self._etick)
                self._etick = NULL
                self._etick_cap = 0
            if self._recs_cap > 4096:  # a burst of messages: give the records back too
                PyMem_Free(self._recs)
                self._recs = NULL
                self._recs_cap = 0
            self._arena_len = 0
            if self._arena_cap > 4 * TICK_KEEP:  # a burst made it grow; give the memory back
                PyMem_Free(self._arena)
                self._arena = NULL
                self._arena_cap = 0
            self._topic_frames = 0
            del self._rec_topics[:]
            if self._indexed:
                self._unindex_turn()
            if self.deflater is not None:
                self.deflater.reset()
            if self._tick_cap > 4 * TICK_KEEP:
                # a burst made the buffer grow; give the memory back
                self._tick = <char*>PyMem_Realloc(self._tick, TICK_KEEP)
                self._tick_cap = TICK_KEEP
        if self._over_cap:
            gone += self._handle_over_cap()
        self.flushes += 1
        self.deliveries += delivered
        self.bytes_out += nbytes
        self.last_sent = sent
        self.last_disconnected = gone
        if self._debug:
            _logger.debug("flush: %d frames, %d bytes to %d clients, %d removed", frames, size, sent, gone)
        return sent

    # -- topics (issue 15) ------------------------------------------------------------

    def configure_topics(self, bint firehose=True, Py_ssize_t history_size=0, double history_ttl=0.0,
                         bint deliver_latest=False, double topic_idle_ttl=0.0):
        """Before clients connect: ``firehose`` (clients that chose no topic get every topic),
        the history kept per topic (the latest message too with ``deliver_latest``, for
        ``since=latest``) and its ttl; ``topic_idle_ttl``: seconds after its last message a
        topic may be evicted by ``evict_idle_topics`` (0: never)."""
        self._firehose = firehose
        self._keep = max(history_size, 1 if deliver_latest else 0)
        self._keep_all = history_size > 0
        self._ttl = history_ttl
        self._idle_ttl = topic_idle_ttl if topic_idle_ttl > 0 else 0.0

    def evict_idle_topics(self):
        """Forget the topics nothing keeps; return how many. node.py calls it every
        ``min(topic_idle_ttl / 2, 30)`` seconds from one timer, never from the fan-out; O(topics).

        A topic goes when: no message came for at least ``topic_idle_ttl`` (seen by two sweeps
        that far apart: publishing stamps nothing), no client names it exactly (prefix and
        firehose clients do not keep it), its history is empty once ``history_ttl`` has
        expired what it can (a kept latest message keeps it), no frame of it waits for the
        flush, and no client recovering from a shared history asked for it.

        Offsets are only comparable within an epoch, and a topic made again numbers from 1:
        after evicting, the Hub takes a new epoch for the topics it makes from then on, so
        that a client resuming with an offset of the evicted topic is told ``recovered:
        false``. (A topic numbered elsewhere, by a shared history or a worker pool's parent,
        takes that epoch and offset in ``publish_frame``, as before.)"""
        cdef double now = _now(), ttl = self._idle_ttl
        cdef Topic t
        cdef Client c
        cdef list gone = []
        cdef set busy = None
        if ttl <= 0 or self._in_fanout or not self._topics:
            return 0
        if self._topic_frames:  # frames of this turn not flushed yet
            busy = {t.name for t in self._rec_topics if t is not None}
        for c in self._clients:
            if c._held is not None and c._want:  # a recovery from a shared history under way
                if busy is None:
                    busy = set()
                busy.update(c._want)
        exact = self._exact
        for t in self._topics.values():
            if t.messages != t._swept:
                t._swept = t.messages
                t._quiet = now
                continue
            if now - t._quiet < ttl or t.name in exact:
                continue
            h = t.history
            if h:
                self._expire(h, now)
                if h:
                    continue
            if busy is not None and t.name in busy:
                continue
            gone.append(t.name)
        if not gone:
            return 0
        topics = self._topics
        for name in gone:
            del topics[name]
        self.topics_evicted += len(gone)
        self._epoch = _new_epoch()
        return len(gone)

    cdef Topic _topic(self, str name):
        cdef Topic t = self._topics.get(name)
        if t is None:
            t = self._topics[name] = Topic(name, self._keep, self._epoch)
        return t

    cdef Topic _peek(self, str name):
        """The topic, or a stand-in with offset 0 that is not kept: a client naming topics
        (subscribing, recovering) never makes the Hub keep anything for names never published."""
        cdef Topic t = self._topics.get(name)
        if t is None:
            t = Topic(name, 0, self._epoch)
        return t

    cdef Py_ssize_t _receivers(self, Topic t):
        """Clients a frame of ``t`` is queued to: the default ones, the counts of the exact names
        (kept by ``_join``/``_leave``), and the few audiences of prefixes or every topic."""
        cdef Audience a
        cdef Py_ssize_t n = len(self._clients) - self._n_special - self._n_dropping
        n += <Py_ssize_t>self._exact.get(t.name, 0)
        for a in self._wide:
            if t.name not in a.topics and a.matches(t):
                n += a.members
        return n if n > 0 else 0

    cdef _mark_flushed(self):
        cdef Py_ssize_t i
        cdef Topic t
        for i in range(self._tick_frames):
            t = self._rec_topics[i]
            if t is not None:
                t.flushed = self._recs[i].offset
                if t._last == i:
                    t._last = -1
                    self._remember(t, &self._recs[i])

    cdef _index_turn(self):
        """Index this flush's frames by topic, for the audiences of exact topic names."""
        cdef Py_ssize_t i
        cdef Topic t
        self._indexed = True
        for i in range(self._tick_frames):
            t = self._rec_topics[i]
            if t is None:
                self._untopiced.append(i)
            else:
                if not t._idx:
                    self._touched.append(t)
                t._idx.append(i)

    cdef _unindex_turn(self):
        cdef Topic t
        for t in self._touched:
            del t._idx[:]
        del self._touched[:]
        del self._untopiced[:]
        self._indexed = False

    cdef _build(self, Audience a, bint deflate_full):
        """What the members of ``a`` get this flush: its frames, in publish order, in one buffer."""
        cdef Py_ssize_t i, n = self._tick_frames, count = 0
        cdef uint8_t* match
        cdef FrameRec* r
        cdef Topic t
        cdef bint m
        a.stamp = self._stamp
        if n > self._match_cap:
            match = <uint8_t*>PyMem_Realloc(self._match, n)
            if match == NULL:
                raise MemoryError()
            self._match = match
            self._match_cap = n
        match = self._match
        if a.all_topics:
            memset(match, 1, n)
        elif not a.prefixes:  # exact names: mark the frames of its topics (no test per frame)
            if not self._indexed:
                self._index_turn()
            memset(match, 0, n)
            for i in self._untopiced:
                match[i] = 1
            if len(a.topics) <= len(self._touched):
                for name in a.topics:
                    t = self._topics.get(name)
                    if t is not None:
                        for i in t._idx:
                            match[i] = 1
            else:
                for t in self._touched:
                    if t.name in a.topics:
                        for i in t._idx:
                            match[i] = 1
        else:
            for i in range(n):
                t = self._rec_topics[i]
                match[i] = t is None or a.matches(t)
        for i in range(n):
            m = match[i]
            if m and a.envelope and self._recs[i].esize == 0:
                m = False  # published before any envelope client was there
                match[i] = 0
            count += m
        a.frames = count
        a.size = 0
        if count == 0:
            return
        if count == n and not a.envelope:
            if a.deflate and deflate_full:
                a.ptr = self.deflater.buf
                a.size = self.deflater.len
            else:
                a.ptr = self._tick
                a.size = self._tick_len
            return
        a.ptr = NULL  # in the arena, which may move while later audiences are built: by offset
        a.off = self._arena_len
        for i in range(n):
            if not match[i]:
                continue
            r = &self._recs[i]
            if a.envelope:
                self._arena_put(self._etick + r.eoff, r.esize)
            elif a.deflate and r.dsize:
                self._arena_put(self.deflater.buf + r.doff, r.dsize)
            else:
                self._arena_put(self._tick + r.off, r.size)
        a.size = self._arena_len - a.off

    cdef inline int _arena_put(self, const char* p, Py_ssize_t n) except -1:
        reserve(&self._arena, &self._arena_cap, self._arena_len + n, TICK_KEEP)
        memcpy(self._arena + self._arena_len, p, n)
        self._arena_len += n
        return 0

    cdef _hold(self, Client c):
        """A client recovering from a shared history: keep its frames of this flush."""
        cdef Audience a = c._aud
        cdef Py_ssize_t i
        cdef FrameRec* r
        cdef Topic t
        for i in range(self._tick_frames):
            t = self._rec_topics[i]
            if t is not None and a is not None and not a.matches(t):
                continue
            r = &self._recs[i]
            if c._envelope:
                if r.esize == 0:
                    continue
                frame = PyBytes_FromStringAndSize(self._etick + r.eoff, r.esize)
            else:
                frame = PyBytes_FromStringAndSize(self._tick + r.off, r.size)
            if t is None:
                c._held.append((None, None, 0, frame))
            else:
                c._held.append((t.name, t.epoch, r.offset, frame))

    cdef object _key(self, Client c):
        """The audience of ``c`` as a key; None: every frame, plain (no Audience)."""
        cdef str p
        cdef frozenset topics = frozenset()
        cdef list prefixes = []
        cdef bint everything = False
        if c._topics is not None:
            topics = c._topics
        elif c._patterns is not None:
            names = set()
            for p in c._patterns:
                if p == "*":
                    everything = True
                elif p.endswith("*"):
                    prefixes.append(p[:len(p) - 1])
                else:
                    names.add(p)
            topics = frozenset(names)
        else:
            everything = self._firehose
        if everything and not c._envelope:
            return None
        return (topics, tuple(sorted(prefixes)), everything, c._envelope, c._deflate and self.deflater is not None)

    cdef _join(self, Client c):
        cdef Audience a
        key = self._key(c)
        if c._envelope:
            self._n_envelope += 1
            if self._n_envelope == 1:
                self._envelope_pending()
        if key is None:
            return
        a = self._auds.get(key)
        if a is None:
            a = Audience()
            a.topics, a.prefixes, a.all_topics, a.envelope, a.deflate = key
            a.key = key
            self._auds[key] = a
            if a.prefixes or a.all_topics:
                self._wide.append(a)
        a.members += 1
        c._aud = a
        self._n_special += 1
        exact = self._exact
        for name in a.topics:
            exact[name] = exact.get(name, 0) + 1

    cdef _leave(self, Client c):
        cdef Audience a = c._aud
        if c._envelope:
            self._n_envelope -= 1
        if a is None:
            return
        c._aud = None
        a.members -= 1
        if a.members == 0:
            del self._auds[a.key]
            if a.prefixes or a.all_topics:
                self._wide.remove(a)
        self._n_special -= 1
        exact = self._exact
        for name in a.topics:
            if exact[name] == 1:
                del exact[name]
            else:
                exact[name] -= 1

    cdef _envelope_pending(self):
        """The first envelope client arrived mid-turn: envelope what is already queued."""
        cdef Py_ssize_t i
        for i in range(self._tick_frames):
            if self._recs[i].esize == 0:
                self._envelope(&self._recs[i], self._rec_topics[i])

    cdef bytes _enveloped(self, Topic t, unsigned long long offset, bytes frame, str epoch):
        """The envelope frame of a frame kept in a history."""
        cdef Py_ssize_t h = _header_size(frame)
        cdef uint8_t opcode = (<const uint8_t*>PyBytes_AS_STRING(frame))[0] & 0x0F
        data = _envelope_data(PyBytes_AS_STRING(frame) + h, PyBytes_GET_SIZE(frame) - h, False, opcode)
        return _text_frame(t.envelope_head(offset, epoch) + data + b"}")

    cdef object _replay(self, Client c, Topic t, since, str client_epoch, str epoch, unsigned long long latest,
                        list entries, bytearray out):
        """Answer one ``since`` of ``c``: the "subscribed" envelope, then what it missed.

        ``entries``: (offset, frame) kept after ``since``, oldest first, none above ``latest``.
        """
        cdef unsigned long long after
        cdef bint ok
        if since is None:  # the latest message
            if c._envelope:
                out += _control({"type": "subscribed", "topic": t.name, "epoch": epoch, "offset": latest})
            if entries:
                offset, frame = entries[len(entries) - 1]
                out += self._enveloped(t, offset, frame, epoch) if c._envelope else frame
                self.replayed += 1
            return None
        after = since
        # a client that saw nothing (offset 0) has nothing to mismatch: any epoch, or none
        ok = (after == 0 or client_epoch == epoch) and after <= latest
        if ok and after < latest:
            ok = (len(entries) == latest - after and (<tuple>entries[0])[0] == after + 1)
        out += _control({"type": "subscribed", "topic": t.name, "epoch": epoch, "offset": latest,
                         "recovered": ok})
        if ok:
            self.recovered += 1
            for offset, frame in entries:
                out += self._enveloped(t, offset, frame, epoch) if c._envelope else frame
            self.replayed += len(entries)
        else:
            self.not_recovered += 1
        return ok

    cdef list _kept(self, Topic t, unsigned long long after):
        """(offset, frame) of the history of ``t`` after ``after``, written out already, not expired."""
        cdef double oldest = _now() - self._ttl if self._ttl > 0 else -1.0
        if t.history is None:
            return []
        return [(e[0], e[1]) for e in t.history if after < e[0] <= t.flushed and e[2] >= oldest]

    cdef _announce(self, Client c):
        """An envelope client's topics, each with its epoch and offset now ("subscribed"), but
        the ones it recovers (their "subscribed" comes with the recovery)."""
        cdef bytearray out = bytearray()
        cdef Topic t
        want = c._want or {}
        for name in sorted(c._topics):
            if name not in want:
                t = self._peek(name)
                if self.shared_history and t.flushed == 0:
                    continue  # the shared history has not numbered it here yet: no epoch to give
                out += _control({"type": "subscribed", "topic": name, "epoch": t.epoch, "offset": t.flushed})
        if out:
            c._write(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))

    cdef _recover_local(self, Client c):
        cdef bytearray out = bytearray()
        cdef Topic t
        for name, since in c._want.items():
            t = self._peek(name)
            self._replay(c, t, since, c._epochs.get(name), t.epoch, t.flushed,
                         self._kept(t, 0 if since is None else since), out)
        c._want = None
        if out and c._state == S_OPEN:
            c._write(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))

    def recover(self, Client c, str topic, str epoch, unsigned long long latest, list entries):
        """Recovery from a shared history (node.py): ``entries`` are (offset, frame) after the
        offset the client asked for, oldest first; ``epoch`` and ``latest`` the history's."""
        cdef bytearray out = bytearray()
        cdef Topic t = self._peek(topic)
        since = c._want.get(topic) if c._want else None
        self._replay(c, t, since, c._epochs.get(topic) if c._epochs else None, epoch, latest,
                     [e for e in entries if e[0] <= latest], out)
        if c._replayed is None:
            c._replayed = {}
        c._replayed[topic] = (epoch, latest)
        if out and c._state == S_OPEN:
            c._write(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))

    def hold(self, Client c):
        """Keep the frames for ``c`` instead of writing them, until ``release``."""
        if c._held is None:
            c._held = []

    def release(self, Client c):
        """Write what was kept for ``c``, but what its recovery replayed already; live again."""
        cdef bytearray out = bytearray()
        held, c._held = c._held, None
        replayed, c._replayed = c._replayed or {}, None
        c._want = None
        if not held:
            return
        for topic, epoch, offset, frame in held:
            done = replayed.get(topic)  # (epoch, offset) the recovery covered
            if done is None or epoch != done[0] or offset > done[1]:
                out += frame
        if out and c._state == S_OPEN:
            c._write(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))

    def subscribe(self, Client c, str topic, since=None, str epoch=None, bint answer_now=True):
        """Add ``topic`` to what ``c`` gets (a client that had chosen none then gets only it and
        the broadcasts without topic); answer with the "subscribed" envelope (and a recovery when
        ``since`` is an offset). Returns that envelope as a dict. ``answer_now`` False: no answer
        (a recovery from a shared history answers, node.py)."""
        cdef bytearray out = bytearray()
        cdef Topic t = self._peek(topic)
        current = c._topics if c._topics is not None else frozenset()
        if c._index >= 0:
            self._leave(c)
        c._topics = current | {topic}
        if c._index >= 0:
            self._join(c)
        answer = {"type": "subscribed", "topic": topic, "epoch": t.epoch, "offset": t.flushed}
        if not answer_now:
            return answer
        if since is None:
            out += _control(answer)
        else:
            answer["recovered"] = self._replay(c, t, since, epoch, t.epoch, t.flushed, self._kept(t, since), out)
        if c._state == S_OPEN and c._tr is not None and not self._reply_skipped(c):
            c._write(PyByteArray_AS_STRING(out), PyByteArray_GET_SIZE(out))
        return answer

    def unsubscribe(self, Client c, str topic):
        """Remove ``topic`` from what ``c`` chose; False when it had not chosen it."""
        if c._topics is None or topic not in c._topics:
            return False
        if c._index >= 0:
            self._leave(c)
        c._topics = c._topics - {topic}
        if c._index >= 0:
            self._join(c)
        if c._state == S_OPEN and c._tr is not None:
            self.send_control(c, {"type": "unsubscribed", "topic": topic})
        return True

    cdef bint _reply_skipped(self, Client c):
        """A reply to a client over its cap is not written, as its PONGs are not: a flood of
        subscription messages from a client that never reads would grow its backlog without
        bound under the drop policy. Counted in ``dropped`` (the subscription itself applies)."""
        if not c._over_cap:
            return False
        c.dropped += 1
        self.dropped += 1
        return True

    def send_control(self, Client c, dict message):
        """Send a control envelope (``{"type": ...}``) to ``c`` alone."""
        if c._state == S_OPEN and c._tr is not None and not self._reply_skipped(c):
            frame = _control(message)
            c._write(PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame))

    def receivers(self, str topic):
        """The clients a broadcast on ``topic`` would be queued to now."""
        return self._receivers(self._peek(topic))

    def topic_state(self, str topic):
        """(epoch, offset) of ``topic``: the offset of its last message written out."""
        cdef Topic t = self._peek(topic)
        return t.epoch, t.flushed

    def history_after(self, str topic, unsigned long long offset):
        """(offset, frame) kept for ``topic`` after ``offset``, oldest first."""
        cdef Topic t = self._topics.get(topic)
        return self._kept(t, offset) if t is not None else []

    def topic_counts(self, Py_ssize_t limit=100):
        """{topic: (subscribers, messages)} for the ``limit`` busiest topics."""
        cdef Topic t
        busiest = sorted(self._topics.values(), key=lambda t: -(<Topic>t).messages)[:limit]
        return {t.name: (self._receivers(t), t.messages) for t in busiest}

    cdef dict _topic_stats(self):
        cdef Audience a
        cdef Topic t
        cdef Py_ssize_t subscriptions = 0, entries = 0
        for a in self._auds.values():
            subscriptions += a.members * len(a.topics)
        for t in self._topics.values():
            if t.history is not None:
                entries += len(t.history)
        return {"topics": len(self._topics), "subscriptions": subscriptions, "envelope_clients": self._n_envelope,
                "recovered": self.recovered, "not_recovered": self.not_recovered, "replayed": self.replayed,
                "history_entries": entries, "subscribe_errors": self.subscribe_errors,
                "evicted": self.topics_evicted}

    # -- inbound -------------------------------------------------------------------

    cdef _on_message(self, Client c, WSMsgType t, const char* p, Py_ssize_t n):
        self.messages_in += 1
        cb = self._on_message_cb
        if cb is None:
            return
        if t == WSMsgType.TEXT:
            data = PyUnicode_DecodeUTF8Stateful(p, n, "strict", NULL)
        else:
            data = PyBytes_FromStringAndSize(p, n)
        try:
            cb(c, data)
        except Exception:
            _logger.exception("on_message callback failed")

    # -- heartbeat -----------------------------------------------------------------

    def ping_all(self):
        """Send a PING to every open client; return the time the round started.

        The same round closes (1008) clients whose fragmented message has been open
        longer than ``fragment_timeout``, so no timer per client is needed.
        """
        cdef double now = _now()
        cdef Client c
        cdef const char* p = PyBytes_AS_STRING(PING_FRAME)
        for c in self._clients:
            if c._state == S_OPEN:
                if c._frag_open and now - c._frag_at > self.fragment_timeout:
                    c._fragment_expired(now)
                    continue
                c._write(p, 2)
        return now

    def reap(self, double since):
        """Close every client connected before ``since`` that has sent nothing since then.

        Returns how many were closed (CLOSE 1001, then the TCP connection is dropped).
        """
        cdef Client c
        cdef list dead = []
        for c in self._clients:
            if c._state == S_OPEN and c.last_seen < since:
                dead.append(c)
        for c in dead:
            c._shut(R_HEARTBEAT, 1001, b"heartbeat timeout", DROP_NOW)
        return len(dead)

    def close_all(self, int code=1001, str reason="server shutting down"):
        """Send CLOSE to every open client (the closing handshake); return how many."""
        cdef Client c
        cdef Py_ssize_t n = 0
        cdef bytes r = reason.encode()
        for c in list(self._clients):
            n += c._shut(R_SERVER_CLOSE, code, r, KEEP_OPEN)
        return n

    def abort_all(self):
        cdef Client c
        for c in list(self._clients):
            c.abort()

    def stats(self):
        return {
            "connections": len(self._clients),
            "messages": self.messages,
            "deliveries": self.deliveries,
            "bytes_out": self.bytes_out,
            "flushes": self.flushes,
            "dropped": self.dropped,
            "dropping_clients": self._n_dropping,
            "slow_disconnects": self.slow_disconnects,
            "closed_skipped": self.closed_skipped,
            "encode_errors": self.encode_errors,
            "messages_in": self.messages_in,
            "protocol_errors": self.protocol_errors,
            "pongs_skipped": self.pongs_skipped,
            "nonfinite_numbers": self.nonfinite_numbers,
            "disconnect_reasons": {DISCONNECT_REASONS[i]: self._disconnects[i] for i in range(R_COUNT)},
            "topics": self._topic_stats(),
        }


cdef object _json_encoder = msgspec.json.Encoder()


def encode_frame(item, fallback=None, count_nonfinite=None, Py_ssize_t max_size=-1):
    """Serialize ``item`` as ``Hub.publish`` does and frame it; return the text frame as bytes.

    ``isinstance(item, str)`` goes out verbatim, anything else as msgspec JSON, then
    ``fallback(item) -> bytes`` if msgspec refuses it; ``EncodeError`` if both fail or
    the str is not valid UTF-8 (a lone surrogate). When ``count_nonfinite`` is set and
    the payload contains ``null``, it is called with ``item`` (it does its own counting;
    ``Hub`` adds the result to ``nonfinite_numbers``). ``max_size`` >= 0: ``EncodeError``
    for a payload longer than that (pass ``max_queued_bytes``, as ``Hub.publish`` does).
    """
    cdef Py_ssize_t n
    cdef const char* p
    cdef bytes payload
    if isinstance(item, str):
        try:
            p = PyUnicode_AsUTF8AndSize(item, &n)
        except UnicodeEncodeError as exc:
            raise _unencodable_str(exc) from None
    else:
        try:
            payload = _json_encoder.encode(item)
        except Exception as exc:
            payload = _fallback_payload(item, exc, fallback)
        p = PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
        if count_nonfinite is not None and memmem(p, n, b"null", 4) != NULL:
            count_nonfinite(item)
    if 0 <= max_size < n:
        raise _oversized(n, max_size)
    cdef uint8_t header[10]
    cdef Py_ssize_t h = _write_header(header, 0x1, n)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, h + n)
    cdef char* out = PyBytes_AS_STRING(frame)
    memcpy(out, header, h)
    memcpy(out + h, p, n)
    return frame
