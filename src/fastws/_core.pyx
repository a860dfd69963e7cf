# The broadcast hot path of fastws.
#
# Encode each item once (msgspec), frame it once, append the frame to a tick
# buffer, and write that one buffer to every connected client once per loop
# turn, through aiofastnet's C-level ``Transport.write_c`` (a direct send(2)).
#
# Python sees three names: ``Hub``, ``Client`` and ``encode_frame``. Test and
# benchmark transports live in ``fastws._testing``, never imported from here.

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy
from ._frame cimport write_header
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from aiofastnet.transport cimport Transport
from picows.picows cimport MemoryBuffer, WSCloseCode, WSCloseHandshake, WSFrame, WSListener, WSMsgType, WSTransport

import logging

import msgspec

from .exceptions import EncodeError

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


cdef class Client(WSListener):
    """One WebSocket connection: the picows listener and the registry entry.

    State lives in C fields (about 100 bytes); there is no task per connection.
    """

    cdef:
        readonly WSTransport transport
        Transport _raw
        Hub _hub
        Py_ssize_t _index              # position in Hub._clients, -1 when not listed
        int _state
        bint _reject                   # over max_connections: close 1008 after the handshake
        bint _over_cap                 # write backlog above the cap (pause_writing)
        bint _dropping                 # drop policy: an episode of skipped messages
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
        bint _deflate                  # broadcasts go to it compressed (Hub.deflater's buffer)
        bint _client_nct               # client_no_context_takeover: nothing kept between messages
        int _wbits                     # server_max_window_bits it accepted (8-15)
        bint _frag_compressed          # the open fragmented message is compressed
        Inflater _inflater             # its own decompressor, made on its first compressed message

    def __cinit__(self):
        self._index = -1
        self._state = S_OPEN

    # -- picows callbacks ----------------------------------------------------------

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        self._raw = <Transport?>transport.underlying_transport
        self.connected_at = self.last_seen = _now()
        self._tokens = self._hub.msg_burst
        self._tokens_at = self.connected_at
        self.remote = self._raw.get_extra_info("peername")
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
                transport.send_pong(frame.get_payload_as_bytes())
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
        self.transport.send(WSMsgType.TEXT if isinstance(message, str) else WSMsgType.BINARY,
                            d.compress_message(data, self._wbits), True, True)
        return True

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
        if isinstance(message, str):
            self.transport.send(WSMsgType.TEXT, message)
        else:
            self.transport.send(WSMsgType.BINARY, message)

    @property
    def is_open(self):
        return self._state == S_OPEN

    def write_buffer_size(self):
        return self._raw.get_write_buffer_size() if self._raw is not None else 0


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

    def __cinit__(self):
        self._clients = []
        self._over_cap = []
        self._scratch = bytearray()
        self._tick_cap = TICK_KEEP
        self._tick = <char*>PyMem_Malloc(self._tick_cap)
        if self._tick == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._tick)

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
        c._raw.set_write_buffer_limits(self.max_queued_bytes, self.max_queued_bytes // 4)
        c._index = len(self._clients)
        self._clients.append(c)
        if c._deflate and self.deflater is not None:
            self.deflater.joined(c._wbits)  # permessage-deflate
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
                                    c.remote, c._raw.get_write_buffer_size())
            else:
                _logger.warning("client %s is not reading (%d bytes queued): disconnecting it",
                                c.remote, c._raw.get_write_buffer_size())
                self.slow_disconnects += 1
                n += 1
                c._shut(R_SLOW_CLIENT, 0, None, DROP_NOW)
                if c._index >= 0:
                    self._forget(c)
        return n

    # -- encoding ------------------------------------------------------------------

    cdef inline int _reserve(self, Py_ssize_t n) except -1:
        """Make room for ``n`` more bytes in the tick buffer."""
        cdef Py_ssize_t need = self._tick_len + n
        cdef Py_ssize_t cap = self._tick_cap
        cdef char* p
        if need > cap:
            while cap < need:
                cap *= 2
            p = <char*>PyMem_Realloc(self._tick, cap)
            if p == NULL:
                raise MemoryError()
            self._tick = p
            self._tick_cap = cap
        return 0

    cdef inline int _queued(self) except -1:
        """Count one more queued frame and make sure a flush is scheduled."""
        self._tick_frames += 1
        self.messages += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_cb)
        return 0

    cdef inline _append(self, const char* payload, Py_ssize_t n, uint8_t opcode):
        self._reserve(n + 10)
        cdef Py_ssize_t h = _write_header(<uint8_t*>(self._tick + self._tick_len), opcode, n)
        memcpy(self._tick + self._tick_len + h, payload, n)
        self._tick_len += h + n
        if self.deflater is not None and self.deflater.clients:
            self.deflater.add(payload, n, opcode)  # permessage-deflate: compressed once

    cdef int _encode_append(self, item) except -1:
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
        self._append(p, n, 0x1)
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

    cpdef Py_ssize_t publish(self, item) except -1:
        """Queue ``item`` for every client; return how many clients it is queued to.

        A ``str`` goes out verbatim as a text frame, anything else as JSON text.
        Raises ``EncodeError`` (nothing is queued) when ``item`` cannot be serialized.
        """
        self._encode_append(item)
        self._queued()
        return len(self._clients) - self._n_dropping

    cpdef Py_ssize_t publish_frame(self, bytes frame) except -1:
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
        self._reserve(n)
        memcpy(self._tick + self._tick_len, PyBytes_AS_STRING(frame), n)
        self._tick_len += n
        if self.deflater is not None and self.deflater.clients:
            self.deflater.add_frames(PyBytes_AS_STRING(frame), n)  # permessage-deflate
        self._queued()
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
            # permessage-deflate: the same messages compressed, when the buffer has them all
            char* dptr = NULL
            Py_ssize_t dsize = 0, dextra = 0
        if self.deflater is not None and self.deflater.frames == frames:
            dptr = self.deflater.buf
            dsize = self.deflater.len
        self._in_fanout = True
        try:
            while i < len(clients):
                c = <Client>clients[i]
                if c._state != S_OPEN:
                    # closing (heartbeat timeout, close handshake, error): skip and forget
                    self.closed_skipped += 1
                    gone += 1
                    self._forget(c)
                    continue
                i += 1
                if c._dropping:
                    c.dropped += frames
                    c._episode_dropped += frames
                    self.dropped += frames
                    continue
                if c._deflate and dsize:
                    c._raw.write_c(dptr, dsize)
                    dextra += dsize - size
                else:
                    c._raw.write_c(ptr, size)
                sent += 1
        finally:
            self._in_fanout = False
            self._tick_len = 0
            self._tick_frames = 0
            if self.deflater is not None:
                self.deflater.reset()
            if self._tick_cap > 4 * TICK_KEEP:
                # a burst made the buffer grow; give the memory back
                self._tick = <char*>PyMem_Realloc(self._tick, TICK_KEEP)
                self._tick_cap = TICK_KEEP
        if self._over_cap:
            gone += self._handle_over_cap()
        self.flushes += 1
        self.deliveries += sent * frames
        self.bytes_out += sent * size + dextra
        self.last_sent = sent
        self.last_disconnected = gone
        if self._debug:
            _logger.debug("flush: %d frames, %d bytes to %d clients, %d removed", frames, size, sent, gone)
        return sent

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
                c._raw.write_c(p, 2)
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
