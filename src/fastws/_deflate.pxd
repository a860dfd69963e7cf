# permessage-deflate (RFC 7692) for the broadcast hot path: see _deflate.pyx.
from libc.stdint cimport uint8_t


cdef extern from "zlib.h":
    ctypedef struct z_stream:
        unsigned char* next_in
        unsigned int avail_in
        unsigned long total_in
        unsigned char* next_out
        unsigned int avail_out
        unsigned long total_out
        const char* msg
        void* zalloc
        void* zfree
        void* opaque


cdef class Inflater:
    cdef z_stream _zs
    cdef bint _ready

    cdef int reset(self) except -1
    cdef int _start(self) except -1
    cdef int _feed(self, const char* p, Py_ssize_t n, bytearray out, Py_ssize_t limit) except -2
    cdef int inflate_into(self, const char* p, Py_ssize_t n, bint fin, bytearray out, Py_ssize_t limit) except -2


cdef class Deflater:
    cdef:
        z_stream _zs[8]                 # one compressor per window size (bits 8..15), made on first use
        bint _ready[8]
        readonly int level
        readonly Py_ssize_t min_size
        # the deflate clients' tick buffer: the same messages as the Hub's, compressed
        char* buf
        Py_ssize_t len
        Py_ssize_t cap
        Py_ssize_t frames
        # one compressed message (payload at offset 10, the header written in front of it)
        char* _out
        Py_ssize_t _out_cap
        # deflate clients connected, by the server_max_window_bits they accepted
        Py_ssize_t _by_bits[8]
        readonly Py_ssize_t clients
        readonly int wbits              # window of broadcasts: the smallest one every deflate client accepts
        readonly Inflater shared        # for single-frame messages of client_no_context_takeover clients
        readonly unsigned long long messages_compressed
        readonly unsigned long long messages_plain
        readonly unsigned long long bytes_in
        readonly unsigned long long bytes_compressed
        readonly unsigned long long inflaters

    cdef int joined(self, int wbits) except -1
    cdef void _smallest(self) noexcept
    cdef int _put(self, const char* p, Py_ssize_t n) except -1
    cdef int left(self, int wbits) except -1
    cdef Py_ssize_t compress(self, const char* p, Py_ssize_t n, int wbits) except -1
    cdef int add(self, const char* p, Py_ssize_t n, uint8_t opcode) except -1
    cdef int add_frames(self, const char* p, Py_ssize_t n) except -1
    cdef void reset(self) noexcept
