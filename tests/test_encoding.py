"""fastws.encoding: json.dumps-compatible fallback and the count of non-finite numbers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import subprocess
import sys
import uuid
from typing import Any

import msgspec
import pytest

from fastws.encoding import count_nonfinite, fallback_encode


class Color(str, enum.Enum):  # noqa: UP042 - the mixin, not StrEnum: str() differs
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Half(float, enum.Enum):
    HALF = 0.5


class Plain(enum.Enum):
    A = "a"


class Name(str):
    def __str__(self) -> str:
        return "not the value"


class Count(int):
    def __repr__(self) -> str:
        return "Count(?)"


class Ratio(float):
    def __repr__(self) -> str:
        return "Ratio(?)"


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Tick(msgspec.Struct):
    price: float
    at: dt.datetime


#: Items json.dumps accepts: the fallback must give what json.loads(json.dumps(item)) gives.
JSON_DUMPS_ITEMS: list[Any] = [
    {True: 1, False: 0, None: "n", 7: "i", 2.5: "f", -1.0: "neg"},
    {1e16: "big float key", 10**20: "big int key"},
    [Color.RED, Level.HIGH, Half.HALF, {Color.RED: Level.HIGH, Level.HIGH: Color.RED}],
    [Name("n"), Count(3), Ratio(0.25), {Name("k"): Count(4)}],
    {"s": "a\ud800b", "t": ["\udfff", "ok é ✓"]},
    {"nested": ({"tuple": (1, 2)}, [[], {}])},
    {float("nan"): 1, float("inf"): 2, float("-inf"): 3},
    [10**30, -(10**30), 0.1, 1e-300, -0.0],
]


@pytest.mark.parametrize("item", JSON_DUMPS_ITEMS, ids=range(len(JSON_DUMPS_ITEMS)))
def test_fallback_matches_json_dumps(item: Any) -> None:
    payload = fallback_encode(item)
    assert isinstance(payload, bytes)
    payload.decode("utf-8")  # valid UTF-8: a text frame may carry it
    assert json.loads(payload) == json.loads(json.dumps(item))


def test_lone_surrogate_is_escaped_and_the_rest_kept() -> None:
    assert fallback_encode({"a": "x\ud800y"}) == b'{"a":"x\\ud800y"}'
    assert fallback_encode({"a": "é"}) == '{"a":"é"}'.encode()  # no needless escapes otherwise


def test_nonfinite_numbers_become_null_and_are_counted() -> None:
    item = {"a": math.nan, "b": [math.inf, -math.inf, 1.0, Ratio(math.nan)], math.nan: 0}
    assert json.loads(fallback_encode(item)) == {"a": None, "b": [None, None, 1.0, None], "NaN": 0}
    assert count_nonfinite(item) == 4  # values only: a NaN key is the string "NaN"
    assert count_nonfinite([1.0, 2, "nan", None, {"x": 1.5}]) == 0
    assert count_nonfinite(math.inf) == 1
    assert count_nonfinite(Point(math.nan, 1.0)) == 1
    assert count_nonfinite(Tick(price=math.inf, at=dt.datetime(2025, 1, 1))) == 1
    assert count_nonfinite({"s": {math.nan, 1.0}}) == 1


def test_types_msgspec_handles_are_kept_inside_coerced_items() -> None:
    when = dt.datetime(2025, 8, 3, 10, 15, 30, tzinfo=dt.UTC)
    uid = uuid.UUID(int=1)
    item = {
        True: when,
        "d": dt.date(2025, 8, 3),
        "u": uid,
        "dec": decimal.Decimal("1.25"),
        "b": b"\x00\xff",
        "p": Point(1.0, 2.0),
        "t": Tick(price=1.5, at=when),
        "set": {1},
        "plain_enum": Plain.A,
        "name": Name("v"),
    }
    assert json.loads(fallback_encode(item)) == {
        "true": "2025-08-03T10:15:30Z",
        "d": "2025-08-03",
        "u": str(uid),
        "dec": "1.25",
        "b": "AP8=",
        "p": {"x": 1.0, "y": 2.0},
        "t": {"price": 1.5, "at": "2025-08-03T10:15:30Z"},
        "set": [1],
        "plain_enum": "a",
        "name": "v",
    }


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({(1, 2): "tuple key"}, "keys must be str, int, float, bool or None, not tuple"),
        ([object()], "Object of type object is not JSON serializable"),
        ({"f": len}, "Object of type builtin_function_or_method is not JSON serializable"),
    ],
)
def test_what_json_dumps_refuses_is_a_type_error(item: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        fallback_encode(item)


def test_numpy_values_when_numpy_is_installed() -> None:
    np = pytest.importorskip("numpy")
    item = {"arr": np.arange(3), "f": np.float32(0.5), "i": np.int64(7), "m": np.array([[1.0, np.nan]]),
            np.int32(2): "numpy key", "b": np.bool_(True)}
    assert json.loads(fallback_encode(item)) == {
        "arr": [0, 1, 2], "f": 0.5, "i": 7, "m": [[1.0, None]], "2": "numpy key", "b": True
    }
    assert count_nonfinite(item) == 1
    assert count_nonfinite(np.array([np.inf, 1, np.nan])) == 2
    assert count_nonfinite(np.arange(4)) == 0


def test_numpy_is_never_imported_for_items_without_numpy_values() -> None:
    code = (
        "import sys\n"
        "from fastws.encoding import fallback_encode, count_nonfinite\n"
        "fallback_encode({True: [1.5, float('nan')], 'x': {1: 'y'}})\n"
        "count_nonfinite({'a': [float('nan')]})\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
