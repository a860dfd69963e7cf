# permessage-deflate (RFC 7692), compressed once per message for every client.
#
# fastws always answers with ``server_no_context_takeover``: each message is
# compressed on its own (a compressor reset per message), so ONE compressed frame
# serves every client that negotiated the extension, and no client holds a
# compressor. ``Deflater`` owns that compressor and the deflate clients' tick
# buffer, which the Hub fills beside its plain one (``Hub._append`` /
# ``publish_frame``) and writes in ``flush`` to the clients with ``Client._deflate``.
#
# Inbound, ``Inflater`` decompresses what clients send. A client that agreed to
# ``client_no_context_takeover`` needs none of its own: its single-frame messages
# go through ``Deflater.shared``, reset per message. A client that keeps its
# context needs one for as long as it is connected (RFC 7692 7.2.2: the window of
# earlier messages may be referenced later), made on its first compressed message.

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy, memset

from ._frame cimport header_size as _header_size, reserve, write_header as _header

cdef extern from "zlib.h":
    ctypedef z_stream* z_streamp
    int Z_OK
    int Z_STREAM_END
    int Z_BUF_ERROR
    int Z_SYNC_FLUSH
    int Z_DEFLATED
    int Z_DEFAULT_STRATEGY
    int Z_NEED_DICT
    const char* zlibVersion()
    int deflateInit2(z_streamp, int level, int method, int windowBits, int memLevel, int strategy)
    int deflate(z_streamp, int flush) nogil
    int deflateReset(z_streamp)
    int deflateEnd(z_streamp)
    unsigned long deflateBound(z_streamp, unsigned long)
    int inflateInit2(z_streamp, int windowBits)
    int inflate(z_streamp, int flush) nogil
    int inflateReset(z_streamp)
    int inflateEnd(z_streamp)

cdef:
    Py_ssize_t TICK_KEEP = 64 * 1024
    const char* TAIL = b"\x00\x00\xff\xff"     # RFC 7692 7.2.2: appended before inflating a message

ZLIB_VERSION = zlibVersion().decode()


@cython.final
cdef class Inflater:
    """A raw-deflate decompressor for one client's messages (32 KiB window, any client window fits)."""

    def __dealloc__(self):
        if self._ready:
            inflateEnd(&self._zs)

    cdef int reset(self) except -1:
        if self._ready:
            inflateReset(&self._zs)
        return 0

    cdef int _start(self) except -1:
        memset(&self._zs, 0, sizeof(z_stream))
        if inflateInit2(&self._zs, -15) != Z_OK:
            raise MemoryError("zlib inflateInit2 failed")
        self._ready = True
        return 0

    cdef int inflate_into(self, const char* p, Py_ssize_t n, bint fin, bytearray out, Py_ssize_t limit) except -2:
        """Inflate ``p[:n]`` (and at ``fin`` the 00 00 ff ff tail), appending to ``out``.

        Returns 0, or -1 as soon as ``out`` would pass ``limit`` bytes (it then holds
        ``limit + 1``: a zip bomb never costs more). Raises ValueError on corrupt data.
        """
        if not self._ready:
            self._start()
        if self._feed(p, n, out, limit) != 0:
            return -1
        if fin:
            return self._feed(TAIL, 4, out, limit)
        return 0

    cdef int _feed(self, const char* p, Py_ssize_t n, bytearray out, Py_ssize_t limit) except -2:
        cdef z_stream* zs = &self._zs
        cdef Py_ssize_t used = PyByteArray_GET_SIZE(out), cap, grow
        cdef int rc
        zs.next_in = <unsigned char*>p
        zs.avail_in = <unsigned int>n
        while True:
            cap = PyByteArray_GET_SIZE(out)
            if used == cap:
                if cap > limit:
                    break
                grow = cap * 2
                if grow < used + 4 * n:
                    grow = used + 4 * n
                if grow < 1024:
                    grow = 1024
                if grow > limit + 1:
                    grow = limit + 1
                PyByteArray_Resize(out, grow)
                cap = grow
            zs.next_out = <unsigned char*>PyByteArray_AS_STRING(out) + used
            zs.avail_out = <unsigned int>(cap - used)
            rc = inflate(zs, Z_SYNC_FLUSH)
            used = cap - zs.avail_out
            if rc == Z_STREAM_END:
                # the client ended the stream (a BFINAL block, RFC 7692 7.2.3.3): start a new one
                inflateReset(zs)
                break
            if rc != Z_OK and rc != Z_BUF_ERROR:
                msg = zs.msg.decode("ascii", "replace") if zs.msg != NULL else f"zlib error {rc}"
                inflateReset(zs)
                PyByteArray_Resize(out, used)
                raise ValueError(f"invalid compressed data: {msg}")
            if zs.avail_out > 0 and (zs.avail_in == 0 or rc == Z_BUF_ERROR):
                break
        PyByteArray_Resize(out, used)
        return -1 if used > limit else 0


@cython.final
cdef class Deflater:
    """The Hub's one compressor and the deflate clients' tick buffer.

    ``level``: zlib level 1-9 (``compression_level``); messages shorter than
    ``min_size`` bytes (``compression_min_size``) go to deflate clients uncompressed.
    """

    def __cinit__(self, int level=6, Py_ssize_t min_size=128):
        if not 0 <= level <= 9:
            raise ValueError(f"compression level must be 0-9, got {level}")
        self.level = level
        self.min_size = min_size
        self.wbits = 15
        self.cap = TICK_KEEP
        self.buf = <char*>PyMem_Malloc(self.cap)
        self._out_cap = 4096
        self._out = <char*>PyMem_Malloc(self._out_cap)
        if self.buf == NULL or self._out == NULL:
            raise MemoryError()
        self.shared = Inflater()

    def __dealloc__(self):
        cdef int i
        for i in range(8):
            if self._ready[i]:
                deflateEnd(&self._zs[i])
        PyMem_Free(self.buf)
        PyMem_Free(self._out)

    # -- deflate clients ---------------------------------------------------------------

    cdef int joined(self, int wbits) except -1:
        self._by_bits[wbits - 8] += 1
        self.clients += 1
        self._smallest()
        return 0

    cdef int left(self, int wbits) except -1:
        self._by_bits[wbits - 8] -= 1
        self.clients -= 1
        self._smallest()
        return 0

    cdef void _smallest(self) noexcept:
        # A smaller window is valid for every larger limit: compress broadcasts with
        # the smallest one any connected deflate client asked for.
        cdef int i
        self.wbits = 15
        for i in range(8):
            if self._by_bits[i] > 0:
                self.wbits = 8 + i
                return

    # -- compression ---------------------------------------------------------------------

    cdef Py_ssize_t compress(self, const char* p, Py_ssize_t n, int wbits) except -1:
        """Raw-deflate ``p[:n]`` alone (no context) into ``_out + 10``; return its size.

        RFC 7692 7.2.1: a sync flush ends the data with 00 00 ff ff, which is not sent.
        """
        cdef int i = wbits - 8
        cdef z_stream* zs = &self._zs[i]
        cdef Py_ssize_t need, done = 0
        cdef char* q
        cdef int rc
        if not self._ready[i]:
            memset(zs, 0, sizeof(z_stream))
            # zlib has no 256-byte raw window; with 512 its longest distance is 250 (512 - 262),
            # so the output is still valid for a peer that allows 8 bits.
            if deflateInit2(zs, self.level, Z_DEFLATED, -(9 if wbits == 8 else wbits), 8,
                            Z_DEFAULT_STRATEGY) != Z_OK:
                raise MemoryError("zlib deflateInit2 failed")
            self._ready[i] = True
        else:
            deflateReset(zs)
        need = 10 + <Py_ssize_t>deflateBound(zs, n) + 16
        if need > self._out_cap:
            q = <char*>PyMem_Realloc(self._out, need)
            if q == NULL:
                raise MemoryError()
            self._out = q
            self._out_cap = need
        zs.next_in = <unsigned char*>p
        zs.avail_in = <unsigned int>n
        while True:
            zs.next_out = <unsigned char*>(self._out + 10 + done)
            zs.avail_out = <unsigned int>(self._out_cap - 10 - done)
            with nogil:
                rc = deflate(zs, Z_SYNC_FLUSH)
            done = self._out_cap - 10 - zs.avail_out
            if rc != Z_OK and rc != Z_BUF_ERROR:
                raise RuntimeError(f"zlib deflate failed ({rc})")
            if zs.avail_out > 0 and zs.avail_in == 0:
                break
            q = <char*>PyMem_Realloc(self._out, self._out_cap * 2)   # never with deflateBound's room
            if q == NULL:
                raise MemoryError()
            self._out = q
            self._out_cap *= 2
        return done - 4

    cdef int _put(self, const char* p, Py_ssize_t n) except -1:
        reserve(&self.buf, &self.cap, self.len + n, 1024)
        memcpy(self.buf + self.len, p, n)
        self.len += n
        return 0

    cdef int add(self, const char* p, Py_ssize_t n, uint8_t opcode) except -1:
        """Append one message (a TEXT or BINARY payload) for the deflate clients: compressed
        with RSV1 set, or as the plain frame when shorter than ``min_size``."""
        cdef uint8_t head[10]
        cdef Py_ssize_t h, m
        self.frames += 1
        self.bytes_in += n
        if n < self.min_size:
            self.messages_plain += 1
            h = _header(head, 0x80 | opcode, n)
            self._put(<char*>head, h)
            return self._put(p, n)
        m = self.compress(p, n, self.wbits)
        h = _header_size(m)
        _header(<uint8_t*>(self._out + 10 - h), 0xC0 | opcode, m)
        self.messages_compressed += 1
        self.bytes_compressed += m
        return self._put(self._out + 10 - h, h + m)

    cdef int add_frames(self, const char* p, Py_ssize_t n) except -1:
        """Append the messages of complete unmasked frames (``encode_frame``'s) for the deflate
        clients; anything but a whole TEXT/BINARY frame without RSV bits is copied as is."""
        cdef const uint8_t* u
        cdef Py_ssize_t pos = 0, h, size
        cdef uint64_t ln
        cdef int i
        while pos < n:
            u = <const uint8_t*>(p + pos)
            h = 2 if n - pos < 2 or (u[1] & 0x7F) < 126 else (4 if (u[1] & 0x7F) == 126 else 10)
            if n - pos < h or (u[1] & 0x80):
                self._put(p + pos, n - pos)   # not a frame of ours: pass the rest through
                break
            ln = u[1] & 0x7F
            if h == 4:
                ln = (<uint64_t>u[2] << 8) | u[3]
            elif h == 10:
                ln = 0
                for i in range(8):
                    ln = (ln << 8) | u[2 + i]
            if ln > <uint64_t>(n - pos - h):
                self._put(p + pos, n - pos)   # truncated: pass the rest through
                break
            size = h + <Py_ssize_t>ln
            if (u[0] & 0xF0) == 0x80 and (u[0] & 0x0F) in (1, 2):
                self.add(p + pos + h, <Py_ssize_t>ln, u[0] & 0x0F)
                self.frames -= 1
            else:
                self._put(p + pos, size)
            pos += size
        self.frames += 1
        return 0

    cdef void reset(self) noexcept:
        self.len = 0
        self.frames = 0
        cdef char* q
        if self.cap > 4 * TICK_KEEP:
            q = <char*>PyMem_Realloc(self.buf, TICK_KEEP)
            if q != NULL:
                self.buf = q
                self.cap = TICK_KEEP

    # -- Python API (Client.send, tests, stats) -----------------------------------------

    def compress_message(self, data, int wbits=15):
        """The compressed payload of one message (``bytes``/``str``), as a client with
        ``server_max_window_bits=wbits`` may receive it."""
        if not 8 <= wbits <= 15:
            raise ValueError(f"window bits must be 8-15, got {wbits}")
        cdef const unsigned char[:] view = data.encode() if isinstance(data, str) else data
        cdef Py_ssize_t n = view.shape[0]
        cdef const char* p = b""
        if n:
            p = <const char*>&view[0]
        cdef Py_ssize_t m = self.compress(p, n, wbits)
        return PyBytes_FromStringAndSize(self._out + 10, m)

    def stats(self):
        return {
            "clients": self.clients,
            "window_bits": self.wbits,
            "level": self.level,
            "min_size": self.min_size,
            "messages_compressed": self.messages_compressed,
            "messages_uncompressed": self.messages_plain,
            "bytes_in": self.bytes_in,
            "bytes_compressed": self.bytes_compressed,
            "inflaters": self.inflaters,
        }
