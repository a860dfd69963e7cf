"""JSON parity with the original component, which sent ``json.dumps(item)``.

fastws encodes with msgspec (fast, strict). For the items msgspec refuses but
``json.dumps`` accepts, the core calls :func:`fallback_encode`; after encoding, if
the payload holds a ``null``, it calls :func:`count_nonfinite` to count NaN and
±Infinity, which go out as ``null`` (strict JSON, which browsers parse), not as
``NaN``/``Infinity`` as ``json.dumps`` writes them.

:func:`fallback_encode` coerces like ``json.dumps``:

* dict keys: ``str`` as is, ``True``/``False``/``None`` -> ``"true"``/``"false"``/``"null"``,
  ``int`` and ``float`` as ``json.dumps`` writes them (``1.5`` -> ``"1.5"``,
  NaN -> ``"NaN"``); any other key type is an error, as in ``json.dumps``;
* subclasses of ``str``, ``int`` and ``float`` (``IntEnum``, ``StrEnum``, mixins)
  by their base value; other enums by their value;
* lone surrogates are written as ``\\udXXX`` escapes, as ``json.dumps`` does;
* numpy scalars and arrays (only if the item holds a numpy type: numpy is never
  imported otherwise) as Python numbers and lists;
* what msgspec encodes anyway (datetime, UUID, Decimal, bytes, dataclasses,
  msgspec Structs, sets) as msgspec encodes it.

Anything else raises ``TypeError`` (the core turns it into ``EncodeError``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
from types import ModuleType

import msgspec

from ._types import Item

__all__ = ["count_nonfinite", "fallback_encode"]


def fallback_encode(item: Item) -> bytes:
    """The JSON payload (UTF-8) for ``item`` as ``json.dumps`` would accept it, NaN as null."""
    value = _coerce(item)
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: escape it (and the rest) as json.dumps does
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def count_nonfinite(item: Item) -> int:
    """How many NaN/±Infinity numbers ``item`` holds (values, not keys)."""
    t = type(item)
    if t is float:
        return 0 if math.isfinite(item) else 1
    if t is str or t is int or t is bool or item is None:
        return 0
    if isinstance(item, dict):
        return sum(count_nonfinite(v) for v in item.values())
    if isinstance(item, (list, tuple, set, frozenset)):
        return sum(count_nonfinite(v) for v in item)
    if isinstance(item, float):
        return 0 if math.isfinite(item) else 1
    if isinstance(item, (str, int)):
        return 0
    np = _numpy_of(item)
    if np is not None:
        if isinstance(item, np.ndarray):
            if item.dtype.kind in "fc":
                return int(np.count_nonzero(~np.isfinite(item)))
            if item.dtype.kind == "O":
                return sum(count_nonfinite(v) for v in item.ravel().tolist())
            return 0
        if isinstance(item, np.generic):
            return count_nonfinite(item.item())
    if isinstance(item, enum.Enum):
        return count_nonfinite(item.value)
    if isinstance(item, msgspec.Struct):
        return count_nonfinite(msgspec.structs.asdict(item))
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return sum(count_nonfinite(getattr(item, f.name)) for f in dataclasses.fields(item))
    return 0


def _numpy_of(item: object) -> ModuleType | None:
    """The numpy module if ``item``'s type comes from numpy (already imported then), else None."""
    if type(item).__module__.partition(".")[0] != "numpy":
        return None
    return sys.modules.get("numpy")


def _key(key: Item) -> str:
    if isinstance(key, str):
        return str.__str__(key)
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, float):
        v = float(key)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "Infinity" if v > 0 else "-Infinity"
        return float.__repr__(v)
    if isinstance(key, int):
        return int.__repr__(key)
    np = _numpy_of(key)
    if np is not None and isinstance(key, np.generic):
        return _key(key.item())
    raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")


def _coerce(obj: Item) -> object:
    """``obj`` as plain JSON values (dict with str keys, list, str, int, float, bool, None)."""
    t = type(obj)
    if t is str or t is int or t is bool or obj is None:
        return obj
    if t is float:
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): _coerce(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_coerce(v) for v in obj]
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return int(int.__index__(obj))
    if isinstance(obj, float):
        v = float.__float__(obj)
        return v if math.isfinite(v) else None
    np = _numpy_of(obj)
    if np is not None:
        if isinstance(obj, np.ndarray):
            return _coerce(obj.tolist())
        if isinstance(obj, np.generic):
            return _coerce(obj.item())
    if isinstance(obj, enum.Enum):
        return _coerce(obj.value)
    if isinstance(obj, (set, frozenset)):
        return [_coerce(v) for v in obj]
    if isinstance(obj, msgspec.Struct):
        return _coerce(msgspec.structs.asdict(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _coerce(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    try:  # datetime, date, time, UUID, Decimal, bytes...: as msgspec encodes them
        return msgspec.to_builtins(obj)
    except (TypeError, msgspec.EncodeError):
        raise TypeError(f"Object of type {t.__name__} is not JSON serializable") from None
