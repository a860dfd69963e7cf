# Hand-written stub of fastws._core (kept in step with _core.pyx; tests/test_core.py
# checks that the names here and in the compiled module agree).
from asyncio import AbstractEventLoop
from collections.abc import Callable

from picows import WSListener, WSTransport

from ._deflate import Deflater
from ._types import Item, Stats

def encode_frame(
    item: Item,
    fallback: Callable[[Item], bytes] | None = None,
    count_nonfinite: Callable[[Item], object] | None = None,
    max_size: int = -1,
) -> bytes: ...

class Client(WSListener):
    transport: WSTransport | None
    dropped: int
    connected_at: float
    last_seen: float
    path: str | None
    remote: tuple[str, int] | None
    @property
    def is_open(self) -> bool: ...
    def send(self, message: str | bytes | bytearray | memoryview) -> None: ...
    def close(self, code: int = 1000, reason: str = "") -> None: ...
    def abort(self) -> None: ...
    def fail(self, code: int, reason: str) -> None: ...
    def write_buffer_size(self) -> int: ...
    # permessage-deflate
    @property
    def compression(self) -> str | None: ...
    def use_deflate(self, wbits: int = 15, client_no_context_takeover: bool = False) -> None: ...

class Hub:
    on_connect: Callable[[Client], object] | None
    on_disconnect: Callable[[Client], object] | None
    max_queued_bytes: int
    max_message_size: int
    fragment_timeout: float
    last_sent: int
    last_disconnected: int
    messages: int
    deliveries: int
    bytes_out: int
    flushes: int
    dropped: int
    slow_disconnects: int
    closed_skipped: int
    encode_errors: int
    messages_in: int
    protocol_errors: int
    pongs_skipped: int
    nonfinite_numbers: int
    msg_rate: float
    msg_burst: float
    deflater: Deflater | None  # permessage-deflate
    def __init__(
        self,
        loop: AbstractEventLoop,
        *,
        max_queued_bytes: int = ...,
        slow_client_policy: str = "disconnect",
        max_message_size: int = ...,
        on_message: Callable[[Client, str | bytes], object] | None = None,
        on_connect: Callable[[Client], object] | None = None,
        on_disconnect: Callable[[Client], object] | None = None,
        fragment_timeout: float = 10.0,
        encode_fallback: Callable[[Item], bytes] | None = None,
        count_nonfinite: Callable[[Item], int] | None = None,
    ) -> None: ...
    def new_client(self, reject: bool = False) -> Client: ...
    def enable_deflate(self, level: int = 6, min_size: int = 128) -> None: ...
    @property
    def clients(self) -> list[Client]: ...
    def __len__(self) -> int: ...
    def publish(self, item: Item) -> int: ...
    def publish_frame(self, frame: bytes) -> int: ...
    def flush(self) -> int: ...
    def ping_all(self) -> float: ...
    def reap(self, since: float) -> int: ...
    def close_all(self, code: int = 1001, reason: str = "server shutting down") -> int: ...
    def abort_all(self) -> None: ...
    def stats(self) -> Stats: ...
