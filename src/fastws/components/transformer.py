"""``Transformer``: reshape dict items (set, rename, drop, copy fields; add a timestamp)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from fastws._paths import MISSING, get_path, split_dotted
from fastws._types import ConfigMapping, ConfigValue, Item
from fastws.components._base import BuiltinComponent, utc_now_iso
from fastws.exceptions import ConfigError

__all__ = ["Transformer", "TransformerConfig"]



class TransformerConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Field path -> old field path (``{"metric": "name"}`` renames ``name`` to ``metric``).
    rename: dict[str, str] = {}
    #: Field path -> source field path; the source is kept.
    copy: dict[str, str] = {}
    #: Field path -> constant value (``{"meta.env": "prod"}`` creates ``meta`` if needed).
    set: dict[str, ConfigValue] = {}
    #: Field paths to remove.
    drop: list[str] = []
    #: Name of a field to set to the current UTC time (ISO 8601), or null.
    add_timestamp: str | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.rename or self.copy or self.set or self.drop or self.add_timestamp)

    def __post_init__(self) -> None:
        for key, mapping in (("rename", self.rename), ("copy", self.copy), ("set", self.set)):
            for field in mapping:
                if not all(field.split(".")):
                    raise ConfigError(f"{key}: invalid field path {field!r}")
        for i, field in enumerate(self.drop):
            if not all(field.split(".")):
                raise ConfigError(f"drop[{i}]: invalid field path {field!r}")


def _parent(item: dict[str, Item], path: tuple[str, ...], create: bool) -> dict[str, Item] | None:
    """The dict holding ``path[-1]``, copied on the way so that input items are not mutated."""
    node = item
    for key in path[:-1]:
        child = node.get(key)
        if isinstance(child, Mapping):
            child = dict(child)
        elif create:
            child = {}
        else:
            return None
        node[key] = child
        node = child
    return node


def _set(item: dict[str, Item], path: tuple[str, ...], value: Item) -> None:
    parent = _parent(item, path, create=True)
    assert parent is not None
    parent[path[-1]] = value


def _pop(item: dict[str, Item], path: tuple[str, ...]) -> Item:
    if len(path) > 1 and not isinstance(get_path(item, path[:-1]), Mapping):
        return MISSING
    parent = _parent(item, path, create=False)
    if parent is None:
        return MISSING
    return parent.pop(path[-1], MISSING)


class Transformer(BuiltinComponent):
    """Return a reshaped copy of each dict item (the input item is never mutated).

    Operations run in this order: ``rename``, ``copy``, ``set``, ``drop``,
    ``add_timestamp``. Dotted names reach into nested dicts. With no operation
    configured it does what upstream did: adds ``processed_by`` (the component
    name) and ``processed_at`` (UTC, ISO 8601).
    """

    Config = TransformerConfig
    settings: TransformerConfig

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        super().__init__(name, config)
        s = self.settings
        self._default = s.is_empty
        self._rename = [(split_dotted(new), split_dotted(old)) for new, old in s.rename.items()]
        self._copy = [(split_dotted(dst), split_dotted(src)) for dst, src in s.copy.items()]
        self._set = [(split_dotted(k), v) for k, v in s.set.items()]
        self._drop = [split_dotted(f) for f in s.drop]
        self._timestamp = split_dotted(s.add_timestamp) if s.add_timestamp else None

    def handle(self, item: Item) -> Item:
        if not isinstance(item, Mapping):
            raise TypeError(f"Transformer expects mapping items, got {type(item).__name__}")
        if self._default:
            return {**item, "processed_by": self.name, "processed_at": utc_now_iso()}
        out = dict(item)
        for new, old in self._rename:
            value = _pop(out, old)
            if value is not MISSING:
                _set(out, new, value)
        for dst, src in self._copy:
            value = get_path(out, src)
            if value is not MISSING:
                _set(out, dst, value)
        for path, value in self._set:
            _set(out, path, value)
        for path in self._drop:
            _pop(out, path)
        if self._timestamp is not None:
            _set(out, self._timestamp, utc_now_iso())
        return out
