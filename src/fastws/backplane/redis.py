"""Redis pub/sub backplane (``redis://host:port/db``), on ``redis.asyncio``, and the
topics' shared history (Redis Streams).

Two connections per node: one publishes (``PUBLISH channel batch``, awaited, so
batches go out in order and the next batch collects what was broadcast meanwhile),
one subscribes. Redis pub/sub keeps nothing: a node that is not subscribed when a
message is published does not get it.

**Shared history** (``history_size`` > 0). A batch that holds topic broadcasts is not
PUBLISHed by the node but by one Lua script (``EVALSHA``, :data:`PUBLISH_SCRIPT`),
which, atomically, for each topic frame in publish order:

* gets the topic's epoch, or creates it when the topic has none, or when Redis lost
  its keys (expired, evicted, flushed, a Redis without persistence restarted): then
  the epoch is a new random ``[A-Za-z0-9]{12}`` (made by the node, used only if it is
  needed), the offset starts again from 1 and the old entries are deleted;
* ``INCR``s the topic's offset;
* ``XADD``s the entry to the topic's stream with an *exact* ``MAXLEN history_size``
  (exact, not ``~``: a topic keeps ``history_size`` messages, as a single node does),
  with the stream ID ``<offset>-0`` and the fields ``o`` (offset), ``e`` (epoch), ``t``
  (Redis ``TIME`` in ms) and ``f`` (the frame, as the publisher framed it);
* with ``history_ttl``: ``PEXPIRE``s the stream after ``history_ttl`` (the offset and
  epoch keys after ``max(history_ttl, 1 day)``, so that a topic quiet for a while
  keeps its epoch and a client that missed nothing still recovers);

and ``PUBLISH``es one ``T`` message (``fastws.backplane.base``) with the numbered
records (and the batch's topic-less frames, in their place). Every node, the
publisher included, receives the records in the same order with their offsets and
epochs; the publisher delivers its own topic broadcasts to its clients only then.

Keys (the ``{channel}`` braces are a Redis Cluster hash tag, so that one script's keys
are in one slot)::

    fastws:{CHANNEL}:t:TOPIC:seq     the topic's latest offset (string, INCR)
    fastws:{CHANNEL}:t:TOPIC:epoch   the topic's epoch (string)
    fastws:{CHANNEL}:t:TOPIC:log     the topic's last history_size messages (stream)

:meth:`RedisBackplane.history` reads a topic's epoch, latest offset and entries after
an offset in one script (:data:`HISTORY_SCRIPT`, ``XRANGE``), so the three agree;
entries older than ``history_ttl`` (by the ``t`` field and Redis' clock) are left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..frames import new_epoch
from .base import Backplane, BackplaneOptions, Queued

if TYPE_CHECKING:  # pragma: no cover
    from typing import Unpack

    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub
    from redis.commands.core import AsyncScript

__all__ = ["RedisBackplane", "PUBLISH_SCRIPT", "HISTORY_SCRIPT", "topic_keys"]

#: Offset and epoch keys live at least this long with ``history_ttl`` (ms).
META_TTL_MIN_MS = 86_400_000

def topic_keys(channel: str, topic: str) -> tuple[str, str, str]:
    """The (offset, epoch, stream) keys of ``topic`` on ``channel``."""
    base = f"fastws:{{{channel}}}:t:{topic}:"
    return base + "seq", base + "epoch", base + "log"


#: Numbers, stores and publishes one batch. KEYS: (seq, epoch, log) per distinct topic.
#: ARGV: channel, message header, maxlen, stream ttl ms, meta ttl ms, number of topics,
#: then (topic, epoch candidate) per topic, then (topic index or 0, frame) per frame.
PUBLISH_SCRIPT = """
local channel, header = ARGV[1], ARGV[2]
local maxlen, ttl, meta_ttl = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local nt = tonumber(ARGV[6])
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
local function be(n, width)
  local b = {}
  for i = width, 1, -1 do b[i] = n % 256; n = math.floor(n / 256) end
  return string.char(unpack(b))
end
local heads, epochs = {}, {}
for i = 1, nt do
  local seq, ep, log = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local name = ARGV[5 + 2 * i]
  local e = redis.call('GET', ep)
  if not e or redis.call('EXISTS', seq) == 0 then
    e = ARGV[6 + 2 * i]
    redis.call('SET', ep, e)
    redis.call('SET', seq, 0)
    redis.call('DEL', log)
  end
  epochs[i] = e
  heads[i] = 'T' .. be(#name, 2) .. name
end
local out = {header}
local base = 6 + 2 * nt
for j = base + 1, #ARGV, 2 do
  local idx, frame = tonumber(ARGV[j]), ARGV[j + 1]
  if idx == 0 then
    out[#out + 1] = frame
  else
    local off = redis.call('INCR', KEYS[3 * idx - 2])
    local e = epochs[idx]
    redis.call('XADD', KEYS[3 * idx], 'MAXLEN', maxlen, string.format('%d-0', off), 'o', string.format('%d', off),
               'e', e, 't', string.format('%d', now), 'f', frame)
    out[#out + 1] = heads[idx] .. be(off, 8) .. string.char(#e) .. e .. frame
  end
end
if ttl > 0 then
  for i = 1, nt do
    redis.call('PEXPIRE', KEYS[3 * i], ttl)
    redis.call('PEXPIRE', KEYS[3 * i - 2], meta_ttl)
    redis.call('PEXPIRE', KEYS[3 * i - 1], meta_ttl)
  end
end
redis.call('PUBLISH', channel, table.concat(out))
return #out - 1
"""

#: One topic's epoch, latest offset and entries. KEYS: seq, epoch, log.
#: ARGV: after offset (-1: the latest entry only), ttl ms (0: none), the client's epoch ('' : any).
#: Returns {epoch or '', latest, {offset, frame, offset, frame, ...}}.
HISTORY_SCRIPT = """
local e = redis.call('GET', KEYS[2])
local s = tonumber(redis.call('GET', KEYS[1]) or '0')
if not e then return {'', 0, {}} end
if ARGV[3] ~= '' and ARGV[3] ~= e then return {e, s, {}} end
local after, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local entries
if after < 0 then
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
elseif after >= s then
  entries = {}
else
  entries = redis.call('XRANGE', KEYS[3], string.format('%d-0', after + 1), '+')
end
local cutoff = -1
if ttl > 0 then
  local now = redis.call('TIME')
  cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - ttl
end
local out = {}
for _, entry in ipairs(entries) do
  local f = entry[2]
  local off, t, frame
  for k = 1, #f, 2 do
    if f[k] == 'o' then off = tonumber(f[k + 1])
    elseif f[k] == 't' then t = tonumber(f[k + 1])
    elseif f[k] == 'f' then frame = f[k + 1] end
  end
  if off and frame and (t or 0) >= cutoff then
    out[#out + 1] = off
    out[#out + 1] = frame
  end
end
return {e, s, out}
"""


class RedisBackplane(Backplane):
    def __init__(self, url: str, channel: str = "fastws", **options: Unpack[BackplaneOptions]) -> None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError as exc:
            from ..exceptions import ConfigError
            from ..optional import missing_extra

            raise ConfigError(missing_extra(url) or f"backplane: {url} needs {exc}") from None
        super().__init__(url, channel, **options)
        self._pub: Redis | None = None
        self._sub: Redis | None = None
        self._ps: PubSub | None = None
        self._publish_script: AsyncScript | None = None
        self._history_script: AsyncScript | None = None

    @property
    def shared_history(self) -> bool:
        return self.history_size > 0

    async def _connect(self) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: a PUBLISH retried after a lost reply could be
        # delivered twice. The backplane's own loop reconnects.
        retry = Retry(NoBackoff(), 0)
        self._pub = Redis.from_url(self.url, socket_timeout=5.0, socket_connect_timeout=2.0, retry=retry,
                                   client_name="fastws")
        self._sub = Redis.from_url(self.url, socket_timeout=None, socket_connect_timeout=2.0, retry=retry,
                                   client_name="fastws")
        await self._pub.ping()
        if self.shared_history:
            self._publish_script = self._pub.register_script(PUBLISH_SCRIPT)
            self._history_script = self._pub.register_script(HISTORY_SCRIPT)
        self._ps = self._sub.pubsub()
        await self._ps.subscribe(self.channel)
        # wait for the confirmation: from here on, nothing published is missed
        while True:
            msg = await self._ps.get_message(timeout=2.0)
            if msg is None:
                raise ConnectionError("no subscription confirmation from Redis")
            if msg["type"] == "subscribe":
                return
            if msg["type"] == "message":
                self._on_message(msg["data"])

    async def _send(self, data: bytes) -> None:
        pub = self._pub
        assert pub is not None  # _send runs only while connected
        await pub.publish(self.channel, data)

    async def _send_batch(self, batch: list[Queued]) -> None:
        script = self._publish_script
        if script is None or all(isinstance(q, bytes) for q in batch):
            await super()._send_batch(batch)
            return
        index: dict[str, int] = {}
        keys: list[str] = []
        topics: list[str] = []
        frames: list[int | bytes] = []
        for q in batch:
            if isinstance(q, bytes):
                frames += (0, q)
                continue
            topic, frame = q
            i = index.get(topic)
            if i is None:
                i = index[topic] = len(index) + 1
                keys += topic_keys(self.channel, topic)
                topics += (topic, new_epoch())
            frames += (i, frame)
        ttl_ms = round(self.history_ttl * 1000)
        await script(keys=keys, args=[self.channel, self._header_topics, self.history_size, ttl_ms,
                                      max(ttl_ms, META_TTL_MIN_MS), len(index), *topics, *frames])

    async def history(self, topic: str, after_offset: int | None,
                      epoch: str | None = None) -> tuple[str | None, int, list[tuple[int, bytes]]]:
        if not self.shared_history:
            return await super().history(topic, after_offset, epoch)
        script = self._history_script
        if script is None or not self.connected:
            raise ConnectionError(f"backplane {self.safe_url}: not connected to Redis")
        ttl_ms = round(self.history_ttl * 1000)
        after = -1 if after_offset is None else max(after_offset, 0)
        got = await script(keys=list(topic_keys(self.channel, topic)), args=[after, ttl_ms, epoch or ""])
        raw_epoch, latest, flat = got
        entries = [(int(flat[i]), bytes(flat[i + 1])) for i in range(0, len(flat), 2)]
        return (raw_epoch.decode("ascii") if raw_epoch else None), int(latest), entries

    async def _receive_forever(self) -> None:
        ps = self._ps
        assert ps is not None  # called once connected
        on_message = self._on_message
        while True:
            msg = await ps.get_message(timeout=None)
            if msg is not None and msg["type"] == "message":
                on_message(msg["data"])

    async def _close(self) -> None:
        ps, sub, pub = self._ps, self._sub, self._pub
        self._ps = self._sub = self._pub = None
        self._publish_script = self._history_script = None
        if ps is not None:
            await ps.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated
        if sub is not None:
            await sub.aclose()
        if pub is not None:
            await pub.aclose()

    def _is_connection_error(self, exc: BaseException) -> bool:
        from redis.exceptions import ResponseError

        return not isinstance(exc, ResponseError)  # a script error: the connection is fine
