# The one frame-header writer of fastws' compiled modules (_core and _deflate cimport it).

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
