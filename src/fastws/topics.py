"""PROVISIONAL (lead's stub until the handshake helper's module is merged)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from picows import WSUpgradeRequest

from .config import ServerConfig

_NAME = re.compile(r"[A-Za-z0-9_.:@/-]+")


@dataclass(frozen=True)
class Subscription:
    topics: frozenset[str] | None = None
    patterns: tuple[str, ...] | None = None
    envelope: bool = False
    since: dict[str, int | None] = field(default_factory=dict)
    epochs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientRequest:
    action: str
    topic: str
    since: int | None = None
    epoch: str | None = None


def matches(patterns: tuple[str, ...], topic: str) -> bool:
    return any(p == topic or (p.endswith("*") and topic.startswith(p[:-1])) for p in patterns)


def check_topic(name: str, max_len: int) -> str | None:
    if not name or len(name) > max_len or not _NAME.fullmatch(name):
        return f"invalid topic name {name!r}"
    return None


def subscription_parser(config: ServerConfig, grants: Callable[[WSUpgradeRequest], tuple[str, ...] | None] | None
                        ) -> Callable[[WSUpgradeRequest], Subscription | tuple[int, str, str]]:
    def parse(request: WSUpgradeRequest) -> Subscription | tuple[int, str, str]:
        q = parse_qs(request.path.partition(b"?")[2].decode("latin-1"))
        topics = frozenset(q["topics"][0].split(",")) if "topics" in q else None
        envelope = q.get("format", ["plain"])[0] == "envelope"
        since: dict[str, int | None] = {}
        epochs: dict[str, str] = {}
        if "since" in q:
            s = q["since"][0]
            if s == "latest":
                since = {t: None for t in topics or ()}
            else:
                for part in s.split(","):
                    t, _, n = part.partition(":")
                    since[t] = int(n)
        if "epoch" in q:
            for t in since:
                epochs[t] = q["epoch"][0]
        return Subscription(topics, None, envelope, since, epochs)

    return parse


def parse_client_message(text: str) -> ClientRequest | None | str:
    return None
