# Hand-written stub of fastws._core (kept in step with _core.pyx; tests/test_core.py
# checks that the names here and in the compiled module agree).
from asyncio import AbstractEventLoop
from collections.abc import Callable, Iterable

from picows import WSListener, WSTransport

from ._deflate import Deflater
from ._types import Item, Stats

def encode_frame(
    item: Item,
    fallback: Callable[[Item], bytes] | None = None,
    count_nonfinite: Callable[[Item], object] | None = None,
    max_size: int = -1,
) -> bytes: ...

class Topic:
    """One topic of a Hub (issue 15): offset counter, epoch, history."""

    name: str
    epoch: str
    offset: int
    flushed: int
    messages: int
    def __init__(self, name: str, keep: int, epoch: str) -> None: ...

class Audience:
    """Clients that get the same frames (same topics, format, compression)."""

    members: int

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
    # topics (issue 15)
    def set_subscription(
        self, topics: Iterable[str] | None = None, patterns: Iterable[str] | None = None, envelope: bool = False
    ) -> None: ...
    def want_recovery(self, since: dict[str, int | None], epochs: dict[str, str] | None = None) -> None: ...
    @property
    def pending_recovery(self) -> tuple[dict[str, int | None], dict[str, str]] | None: ...
    @property
    def topics(self) -> frozenset[str] | None: ...
    @property
    def patterns(self) -> tuple[str, ...] | None: ...
    @property
    def envelope(self) -> bool: ...

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
    # topics (issue 15)
    shared_history: bool
    idle_read_buffer: int  # picows' read buffer of a new connection is cut to this (+256); 0: not cut
    recovered: int
    not_recovered: int
    topics_evicted: int
    replayed: int
    subscribe_errors: int
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
    def publish(self, item: Item, topic: str | None = None) -> int: ...
    def publish_frame(self, frame: bytes, topic: str | None = None, offset: int = 0, epoch: str | None = None) -> int: ...
    # topics (issue 15)
    def configure_topics(
        self, firehose: bool = True, history_size: int = 0, history_ttl: float = 0.0, deliver_latest: bool = False,
        topic_idle_ttl: float = 0.0,
    ) -> None: ...
    def evict_idle_topics(self) -> int: ...
    def recover(self, c: Client, topic: str, epoch: str, latest: int, entries: list[tuple[int, bytes]]) -> None: ...
    def hold(self, c: Client) -> None: ...
    def release(self, c: Client) -> None: ...
    def subscribe(
        self, c: Client, topic: str, since: int | None = None, epoch: str | None = None, answer_now: bool = True
    ) -> dict[str, object]: ...
    def unsubscribe(self, c: Client, topic: str) -> bool: ...
    def send_control(self, c: Client, message: dict[str, object]) -> None: ...
    def receivers(self, topic: str) -> int: ...
    def topic_state(self, topic: str) -> tuple[str, int]: ...
    def history_after(self, topic: str, offset: int) -> list[tuple[int, bytes]]: ...
    def topic_counts(self, limit: int = 100) -> dict[str, tuple[int, int]]: ...
    def flush(self) -> int: ...
    def ping_all(self) -> float: ...
    def reap(self, since: float) -> int: ...
    def close_all(self, code: int = 1001, reason: str = "server shutting down") -> int: ...
    def abort_all(self) -> None: ...
    def stats(self) -> Stats: ...
