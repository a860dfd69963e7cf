"""Topics: what a client asks for at the handshake, and what it may ask for. Pure, no I/O.

The handshake query (docs/reference.md, "Topics"; the guide is docs/topics.md):

* ``?topics=a,b``: the topics a client subscribes to (comma separated; repeated
  ``topics=`` parameters add up; duplicates collapse). Without it, a client gets
  every broadcast (``firehose: true``, the default) or only broadcasts without a topic.
* ``?format=envelope`` (or ``plain``, the default): each message as
  ``{"topic": T, "offset": N, "epoch": E, "data": <item>}``.
* ``?since=a:17,b:4`` (resume after these offsets; needs ``format=envelope``) or
  ``?since=latest`` (first the most recent message of each topic).
* ``?epoch=E`` (the epoch of every topic of ``since``) or ``?epoch=a:E1,b:E2``.

A topic name is 1..``max_topic_length`` characters of ``[A-Za-z0-9_.:@/-]``. A pattern
(a JWT ``topics`` claim, ``auth.token_topics``) is a name, ``prefix*`` or ``*``.

Refusals, as ``(status, reason, message)``: 400 ``topic_invalid``, 400
``too_many_topics``, 400 ``since_invalid``, 400 ``format_invalid``, 403 ``topic_forbidden``.

This module imports nothing of fastws but small leaves (``http_types``, ``exceptions``,
``_paths``): the config and the auth module import it (for :func:`check_pattern`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol
from urllib.parse import parse_qs

import msgspec

from ._paths import MISSING, getter, split_dotted
from ._types import Item
from .exceptions import EncodeError
from .http_types import HTTPRequest

__all__ = [
    "REFUSAL_REASONS",
    "ClientRequest",
    "Grants",
    "HandshakeRefusal",
    "Subscription",
    "TopicSettings",
    "check_epoch",
    "check_pattern",
    "check_topic",
    "matches",
    "parse_client_message",
    "subscription_parser",
    "topic_reader",
]

#: Every reason :func:`subscription_parser` refuses with (shown at 0 in stats from the start).
REFUSAL_REASONS: Final = ("topic_invalid", "too_many_topics", "since_invalid", "format_invalid", "topic_forbidden")

#: A refused handshake: (HTTP status, reason counted in ``stats()["rejected"]``, message for the client).
HandshakeRefusal = tuple[int, str, str]

#: The topic grant of a request: the patterns it may subscribe to, ``None`` for any topic.
Grants = Callable[[HTTPRequest], tuple[str, ...] | None]

#: The characters of a topic name (documented in docs/reference.md, "Topics").
TOPIC_CHARS: Final = "A-Za-z0-9_.:@/-"
_TOPIC_RE = re.compile(f"[{TOPIC_CHARS}]+")
_EPOCH_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_OFFSET_RE = re.compile(r"[0-9]{1,19}")
#: Largest offset accepted (the core counts offsets in 64-bit integers).
MAX_OFFSET: Final = 2**63 - 1
#: Longest text quoted back in a message.
_QUOTE = 60


class TopicSettings(Protocol):
    """What the parser reads of :class:`fastws.config.ServerConfig`."""

    @property
    def firehose(self) -> bool: ...

    @property
    def deliver_latest(self) -> bool: ...

    @property
    def max_topics_per_client(self) -> int: ...

    @property
    def max_topic_length(self) -> int: ...


@dataclass(frozen=True, eq=True)
class Subscription:
    """What one client asked for at the handshake (given to ``Client.set_subscription``
    and ``Client.want_recovery``)."""

    #: The topics of ``?topics=``; ``None``: no ``?topics=`` (firehose or the allowed patterns).
    topics: frozenset[str] | None = None
    #: The patterns the client may subscribe to (its grant); ``None``: any topic.
    patterns: tuple[str, ...] | None = None
    #: ``?format=envelope``.
    envelope: bool = False
    #: ``?since=``: topic -> the last offset the client has, ``None`` for "the latest message".
    since: dict[str, int | None] = field(default_factory=dict)
    #: ``?epoch=``: topic -> the epoch of its offset in ``since``.
    epochs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientRequest:
    """A ``{"subscribe": T}`` / ``{"unsubscribe": T}`` message of a client."""

    action: Literal["subscribe", "unsubscribe"]
    topic: str
    since: int | None = None  # subscribe only: resume after this offset
    epoch: str | None = None  # subscribe only: the epoch of ``since``


def _quote(text: str) -> str:
    return repr(text) if len(text) <= _QUOTE else repr(text[:_QUOTE]) + "..."


def check_topic(name: str, max_len: int) -> str | None:
    """Why ``name`` is not a valid topic name, or ``None`` if it is."""
    if not name:
        return "a topic name must not be empty"
    if len(name) > max_len:
        return f"topic {_quote(name)} is longer than {max_len} characters (max_topic_length)"
    if not _TOPIC_RE.fullmatch(name):
        bad = next(ch for ch in name if not _TOPIC_RE.fullmatch(ch))
        return f"topic {_quote(name)} has the character {bad!r}; allowed: letters, digits and _ . : @ / -"
    return None


def check_pattern(pattern: object, max_len: int = 1024) -> str | None:
    """Why ``pattern`` is not a topic pattern (a name, ``prefix*`` or ``*``), or ``None``."""
    if not isinstance(pattern, str):
        return f"a topic pattern must be a string, got {type(pattern).__name__}"
    if pattern == "*":
        return None
    name = pattern[:-1] if pattern.endswith("*") else pattern
    if "*" in name:
        return f"pattern {_quote(pattern)}: '*' is allowed only at the end"
    why = check_topic(name, max_len)
    return None if why is None else f"pattern {_quote(pattern)}: {why}"


def check_epoch(epoch: object) -> str | None:
    """Why ``epoch`` is not an epoch (1..64 of ``[A-Za-z0-9_-]``), or ``None``."""
    if not isinstance(epoch, str):
        return f"epoch must be a string of 1-64 letters, digits, _ and -, got {type(epoch).__name__}"
    if not _EPOCH_RE.fullmatch(epoch):
        return f"epoch {_quote(epoch)} must be 1-64 characters of letters, digits, _ and -"
    return None


def matches(patterns: Iterable[str] | None, topic: str) -> bool:
    """True if ``topic`` is allowed by ``patterns`` (``None``: every topic)."""
    if patterns is None:
        return True
    for p in patterns:
        if p == topic or (p.endswith("*") and topic.startswith(p[:-1])):
            return True
    return False


def topic_reader(path: str, max_len: int = 128) -> Callable[[Item], str | None]:
    """``topic_of(item)``: the topic named by the field ``path`` (dotted) of ``item``,
    ``None`` when the item has no such field (it goes to every client).

    Raises :class:`EncodeError` (the item is not sent, and counted like other bad items)
    when the field is there but is not a valid topic name: not a string, empty, too long
    or with a character outside the documented set.
    """
    read = getter(split_dotted(path))

    def topic_of(item: Item) -> str | None:
        value = read(item)
        if value is MISSING or value is None:
            return None
        if not isinstance(value, str):
            raise EncodeError(f"topic_field {path!r}: the topic must be a string, got {type(value).__name__}")
        why = check_topic(value, max_len)
        if why is not None:
            raise EncodeError(f"topic_field {path!r}: {why}")
        return value

    return topic_of


# -- the handshake query --------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.refusal: HandshakeRefusal = (status, reason, message)


def _refuse(reason: str, message: str, status: int = 400) -> _Refused:
    return _Refused(status, reason, message)


def _query(path: bytes) -> dict[str, list[str]] | None:
    _, sep, query = path.partition(b"?")
    if not sep:
        return None
    query = query.partition(b"#")[0]
    return parse_qs(query.decode("latin-1"), keep_blank_values=True, errors="replace")


def _items(values: list[str]) -> list[str]:
    """The comma-separated items of every value of a repeated parameter."""
    return [item for value in values for item in value.split(",")]


def subscription_parser(config: TopicSettings, grants: Grants | None) -> Callable[[HTTPRequest], Subscription | HandshakeRefusal]:
    """The parser of the handshake query: ``parse(request)`` returns the client's
    :class:`Subscription`, or ``(status, reason, message)`` to refuse the upgrade with.

    ``grants(request)`` (from :meth:`fastws.auth.Authenticator.grants`) gives the patterns the
    request may subscribe to (``None``: any). Run it after the auth checks let the request in.
    Never raises: a request it cannot read is refused (400 ``topic_invalid``).
    """
    max_len = config.max_topic_length
    max_topics = config.max_topics_per_client
    firehose = config.firehose
    deliver_latest = config.deliver_latest
    unrestricted = Subscription()

    def allowed_patterns(request: HTTPRequest) -> tuple[str, ...] | None:
        if grants is None:
            return None
        try:
            patterns = grants(request)
        except Exception as exc:  # a grant that cannot be read is no grant
            raise _refuse("topic_forbidden", f"the token's topics cannot be read ({type(exc).__name__})",
                          403) from None
        if patterns is None:
            return None
        if not isinstance(patterns, tuple):
            raise _refuse("topic_forbidden", "the token's topics must be a list of names or patterns", 403)
        for p in patterns:
            why = check_pattern(p)
            if why is not None:
                raise _refuse("topic_forbidden", f"the token's topics: {why}", 403)
        return patterns

    def topics_of(values: list[str], patterns: tuple[str, ...] | None) -> frozenset[str]:
        names = _items(values)
        for name in names:
            if not name:
                raise _refuse("topic_invalid", "topics: an empty topic name (write ?topics=a,b)")
            why = check_topic(name, max_len)
            if why is not None:
                raise _refuse("topic_invalid", f"topics: {why}")
        topics = frozenset(names)
        if len(topics) > max_topics:
            raise _refuse("too_many_topics",
                          f"topics: {len(topics)} topics, at most {max_topics} allowed (max_topics_per_client)")
        for name in names:  # in the order asked, to name the first one refused
            if not matches(patterns, name):
                raise _refuse("topic_forbidden", f"topics: {_quote(name)} is not among the topics this token "
                              "may subscribe to", 403)
        return topics

    def since_of(values: list[str], topics: frozenset[str] | None,
                 patterns: tuple[str, ...] | None, envelope: bool) -> dict[str, int | None]:
        if values == ["latest"] or (values and all(v == "latest" for v in values)):
            if topics is None:
                raise _refuse("since_invalid", "since=latest needs ?topics= (the topics whose latest message to send)")
            return dict.fromkeys(sorted(topics))
        since: dict[str, int | None] = {}
        for item in _items(values):
            topic, sep, number = item.rpartition(":")
            if not sep or not topic:
                raise _refuse("since_invalid", f"since: {_quote(item)} is not TOPIC:OFFSET "
                              "(write since=a:17,b:4 or since=latest)")
            if not _OFFSET_RE.fullmatch(number) or int(number) > MAX_OFFSET:
                raise _refuse("since_invalid", f"since: the offset of {_quote(topic)} must be an integer >= 0, "
                              f"got {_quote(number)}")
            if topic in since:
                raise _refuse("since_invalid", f"since: {_quote(topic)} is given twice")
            if topics is not None:
                if topic not in topics:
                    raise _refuse("since_invalid", f"since: {_quote(topic)} is not one of the topics subscribed "
                                  "(?topics=)")
            else:
                why = check_topic(topic, max_len)
                if why is not None:
                    raise _refuse("since_invalid", f"since: {why}")
                if patterns is None and not firehose:
                    raise _refuse("since_invalid", f"since: {_quote(topic)} is not subscribed: without ?topics= "
                                  "this server sends only broadcasts without a topic (firehose: false)")
                if not matches(patterns, topic):
                    raise _refuse("since_invalid", f"since: {_quote(topic)} is not among the topics this token "
                                  "may subscribe to")
            since[topic] = int(number)
        if since and not envelope:
            raise _refuse("since_invalid", "since with offsets needs format=envelope (offsets are only seen in "
                          "envelopes; since=latest works without)")
        return since

    def epochs_of(values: list[str], since: dict[str, int | None]) -> dict[str, str]:
        if not since or all(v is None for v in since.values()):
            raise _refuse("since_invalid", "epoch goes with since=TOPIC:OFFSET (the epoch of those offsets)")
        items = _items(values)
        if len(items) == 1 and ":" not in items[0]:
            why = check_epoch(items[0])
            if why is not None:
                raise _refuse("since_invalid", why)
            return dict.fromkeys(since, items[0])
        epochs: dict[str, str] = {}
        for item in items:
            topic, sep, epoch = item.rpartition(":")
            if not sep or not topic:
                raise _refuse("since_invalid", f"epoch: {_quote(item)} is not TOPIC:EPOCH (write epoch=E for "
                              "every topic of since, or epoch=a:E1,b:E2)")
            why = check_epoch(epoch)
            if why is not None:
                raise _refuse("since_invalid", f"{why} (the epoch of {_quote(topic)})")
            if topic not in since:
                raise _refuse("since_invalid", f"epoch: {_quote(topic)} is not in since")
            if topic in epochs:
                raise _refuse("since_invalid", f"epoch: {_quote(topic)} is given twice")
            epochs[topic] = epoch
        return epochs

    def parse_query(query: dict[str, list[str]], patterns: tuple[str, ...] | None) -> Subscription:
        formats = set(query.get("format", ()))
        if len(formats) > 1 or (formats and not formats <= {"envelope", "plain"}):
            got = ", ".join(sorted(map(_quote, formats)))
            raise _refuse("format_invalid", f"format must be envelope or plain, got {got}")
        envelope = formats == {"envelope"}
        topics = topics_of(query["topics"], patterns) if "topics" in query else None
        since_values = query.get("since")
        if since_values is not None:
            since = since_of(since_values, topics, patterns, envelope)
        elif deliver_latest and topics is not None:
            since = dict.fromkeys(sorted(topics))
        else:
            since = {}
        epoch_values = query.get("epoch")
        if epoch_values is not None and since_values is None:
            raise _refuse("since_invalid", "epoch without since (write since=a:17&epoch=E)")
        epochs = epochs_of(epoch_values, since) if epoch_values is not None else {}
        return Subscription(topics=topics, patterns=patterns, envelope=envelope, since=since, epochs=epochs)

    def parse(request: HTTPRequest) -> Subscription | HandshakeRefusal:
        try:
            patterns = allowed_patterns(request)
            path: bytes = request.path
            query = _query(path) if b"?" in path else None
            if not query:
                return unrestricted if patterns is None else Subscription(patterns=patterns)
            return parse_query(query, patterns)
        except _Refused as refused:
            return refused.refusal
        except Exception as exc:  # a request it cannot read is refused, never a 500
            return 400, "topic_invalid", f"unreadable request ({type(exc).__name__})"

    return parse


# -- client messages ---------------------------------------------------------------------------------

_MESSAGE_KEYS: Final = frozenset({"subscribe", "unsubscribe", "since", "epoch"})


def parse_client_message(text: str, max_topic_length: int = 1024) -> ClientRequest | str | None:
    """Read a client's text message as a subscription request.

    ``max_topic_length``: pass the config's; the default is the largest the config allows.

    * ``ClientRequest``: ``{"subscribe": "T"}`` (optionally with ``"since": N`` and
      ``"epoch": "E"``) or ``{"unsubscribe": "T"}``;
    * a ``str``: a malformed subscription message, the error to answer with;
    * ``None``: not a subscription message (it goes to ``on_message`` as before): anything
      that is not a JSON object whose keys are only ``subscribe``, ``unsubscribe``,
      ``since`` and ``epoch`` with ``subscribe`` or ``unsubscribe`` among them.

    Cheap for other messages: without the text ``"subscribe"`` or ``"unsubscribe"`` the
    message is not decoded (a key spelled with ``\\u`` escapes is not seen as one).
    """
    if '"subscribe"' not in text and '"unsubscribe"' not in text:
        return None
    try:
        message = msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None
    if not isinstance(message, dict) or not message.keys() <= _MESSAGE_KEYS:
        return None
    sub, unsub = "subscribe" in message, "unsubscribe" in message
    if not (sub or unsub):
        return None
    if sub and unsub:
        return "a message has either subscribe or unsubscribe, not both"
    action: Literal["subscribe", "unsubscribe"] = "subscribe" if sub else "unsubscribe"
    topic = message[action]
    if not isinstance(topic, str):
        return f"{action}: the topic must be a string, got {type(topic).__name__}"
    why = check_topic(topic, max_topic_length)
    if why is not None:
        return f"{action}: {why}"
    since, epoch = message.get("since"), message.get("epoch")
    if unsub and ("since" in message or "epoch" in message):
        return "unsubscribe takes no since or epoch"
    if since is not None and (not isinstance(since, int) or isinstance(since, bool)
                              or not 0 <= since <= MAX_OFFSET):
        return f"since must be an integer offset >= 0, got {since!r:.60}"
    if epoch is not None:
        if since is None:
            return "epoch goes with since (the epoch of that offset)"
        why = check_epoch(epoch)
        if why is not None:
            return why
    return ClientRequest(action, topic, since, epoch)
