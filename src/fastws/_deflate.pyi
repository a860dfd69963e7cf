# Hand-written stub of fastws._deflate (permessage-deflate; kept in step with _deflate.pyx).
from ._types import Stats

ZLIB_VERSION: str

class Inflater: ...

class Deflater:
    level: int
    min_size: int
    clients: int
    wbits: int
    shared: Inflater
    messages_compressed: int
    messages_plain: int
    bytes_in: int
    bytes_compressed: int
    inflaters: int
    def __init__(self, level: int = 6, min_size: int = 128) -> None: ...
    def compress_message(self, data: str | bytes | bytearray | memoryview, wbits: int = 15) -> bytes: ...
    def stats(self) -> Stats: ...
