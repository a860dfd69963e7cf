# The one frame-header writer of fastws' compiled modules (_core and _deflate cimport it),
# and the one way they grow a byte buffer.

from cpython.mem cimport PyMem_Realloc
from libc.stdint cimport uint8_t, uint64_t


cdef inline Py_ssize_t write_header(uint8_t* p, uint8_t first, uint64_t n) noexcept:
    """Write an unmasked frame header (first byte given: FIN, RSV1, opcode) for an
    ``n``-byte payload; return its size (2, 4 or 10)."""
    p[0] = first
    if n < 126:
        p[1] = <uint8_t>n
        return 2
    if n < 65536:
        p[1] = 126
        p[2] = <uint8_t>(n >> 8)
        p[3] = <uint8_t>n
        return 4
    p[1] = 127
    cdef int i
    for i in range(8):
        p[2 + i] = <uint8_t>(n >> (56 - 8 * i))
    return 10


cdef inline Py_ssize_t header_size(uint64_t n) noexcept:
    """The size of the header ``write_header`` writes for an ``n``-byte payload."""
    return 2 if n < 126 else (4 if n < 65536 else 10)


cdef inline int reserve(char** buf, Py_ssize_t* cap, Py_ssize_t need, Py_ssize_t first) except -1:
    """Make ``*buf`` hold at least ``need`` bytes: doubled from ``*cap`` (or ``first`` when it
    has none yet), as often as needed; ``MemoryError`` when the memory is not there."""
    cdef Py_ssize_t size = cap[0] or first
    cdef char* p
    if need <= cap[0] and buf[0] != NULL:
        return 0
    while size < need:
        size *= 2
    p = <char*>PyMem_Realloc(buf[0], size)
    if p == NULL:
        raise MemoryError()
    buf[0] = p
    cap[0] = size
    return 0
