"""One dotted-path getter, shared by expressions, the Transformer, the StreamProcessor
and config error messages: ``getter(("a", 0, "b"))(item)`` reads ``item["a"][0]["b"]``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from ._types import Item

__all__ = ["MISSING", "getter", "get_path", "split_dotted"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


#: Returned by :func:`get_path` (unless told otherwise) for a path that is not there.
MISSING: Final = _Missing()

#: A ``str`` indexes a mapping, an ``int`` a sequence; a ``float`` (``x[-1.5]`` in an
#: expression) indexes nothing.
Step = str | int | float


def get_path(data: Item, steps: Sequence[Step], default: Item = MISSING) -> Item:
    """Follow ``steps``: a ``str`` indexes a mapping, an ``int`` a list or tuple
    (negative counts from the end). Any step that is not there gives ``default``."""
    value = data
    for step in steps:
        if isinstance(value, Mapping):
            if not isinstance(step, str) or step not in value:
                return default
            value = value[step]
        elif isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
            if not isinstance(step, int) or not -len(value) <= step < len(value):
                return default
            value = value[step]
        else:
            return default
    return value


def getter(steps: Sequence[Step], default: Item = MISSING) -> Callable[[Item], Item]:
    """A function reading ``steps`` from its argument (see :func:`get_path`)."""
    path = tuple(steps)
    if len(path) == 1 and isinstance(path[0], str):
        key = path[0]

        def get_one(item: Item) -> Item:
            if isinstance(item, Mapping):
                return item.get(key, default)
            return default

        return get_one
    return lambda item: get_path(item, path, default)


def split_dotted(path: str) -> tuple[str, ...]:
    """``"meta.env"`` -> ``("meta", "env")``."""
    return tuple(path.split("."))
