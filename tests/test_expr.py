"""The Filter expression language: parsing, semantics, errors, and no eval."""

from __future__ import annotations

import builtins

import pytest

from fastws.components.expr import Expression, ExpressionError, compile_expression
from fastws.exceptions import ConfigError

ITEM = {
    "id": 7,
    "name": "cpu",
    "value": 42.5,
    "active": True,
    "tags": ["a", "b"],
    "user": {"name": "ada", "address": {"city": "London"}, "roles": ["admin"]},
    "headers": {"content-type": "json"},
    "none": None,
    "in": 1,
}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("value > 40", True),
        ("value >= 42.5", True),
        ("value < 42.5", False),
        ("value <= 42.5 and id == 7", True),
        ("id != 7 or name == 'cpu'", True),
        ('name == "cpu"', True),
        ("not active", False),
        ("!active", False),
        ("not not active", True),
        ("active && value > 1", True),
        ("active || false", True),
        ("name in ['cpu', 'memory']", True),
        ("name not in ['cpu', 'memory']", False),
        ("'a' in tags", True),
        ("'z' not in tags", True),
        ("'pu' in name", True),
        ("user.name == 'ada'", True),
        ("user.address.city == 'London'", True),
        ("'admin' in user.roles", True),
        ("tags[0] == 'a'", True),
        ("tags[-1] == 'b'", True),
        ("tags[5] == null", True),
        ('headers["content-type"] == "json"', True),
        ("item.value > 40", True),
        ("item['value'] > 40", True),
        ("item.in == 1", True),
        ("missing == null", True),
        ("missing.deep.field == null", True),
        ("missing > 3", False),
        ("none < 3", False),
        ("name > 3", False),
        ("3 in missing", False),
        ("1 < id < 10", True),
        ("1 < id < 5", False),
        ("(id == 1 or id == 7) and active", True),
        ("id == 1 or id == 7 and not active", False),
        ("value == -1 or id > -3", True),
        ("active == True and none == None", True),
        ("value > 1e1", True),
        ("id == 7.0", True),
        ("[1, 2, id] == [1, 2, 7]", True),
        ("'it\\'s' == \"it's\"", True),
        ("active", True),
        ("none", False),
    ],
)
def test_semantics(source: str, expected: bool) -> None:
    assert Expression(source).matches(ITEM) is expected


def test_value_of_expression() -> None:
    assert compile_expression("user.address")(ITEM) == {"city": "London"}
    assert compile_expression("item")(ITEM) is ITEM


def test_non_mapping_items() -> None:
    assert Expression("item == 'hello'").matches("hello")
    assert Expression("item > 3").matches(5)
    assert not Expression("value > 3").matches("a string")
    assert Expression("item[1] == 2").matches([1, 2])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "empty expression at column 1"),
        ("value >", "unexpected end of expression (expected a value, a field name or '(') at column 8"),
        ("value = 3", "unexpected '='; use '==' to compare at column 7"),
        ("(a == 1", "unexpected end of expression (expected ')') at column 8"),
        ("a == 'x", "unterminated string at column 6"),
        ("a == 1 b", "unexpected 'b' (expected an operator or the end of the expression) at column 8"),
        ("a $ b", "unexpected character '$' at column 3"),
        ("a.", "unexpected end of expression (expected a field name after '.') at column 3"),
        ("a[b]", "unexpected 'b' (expected a string or an integer index) at column 3"),
        ("a == -b", "'-' must be followed by a number at column 6"),
        ("[1, 2", "unexpected end of expression (expected ',' or ']') at column 6"),
        (
            "__import__('os').system('x')",
            "unexpected '(' (expected an operator or the end of the expression) at column 11",
        ),
        ("a == 'x\\q'", "unknown escape '\\q' in string at column 8"),
        ("1.2.3 > 1", "invalid number '1.2.3' at column 1"),
    ],
)
def test_errors_name_the_column(source: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        Expression(source)
    assert str(info.value) == f"{message} in {source!r}"
    assert isinstance(info.value, ConfigError)


def test_not_a_string() -> None:
    with pytest.raises(ExpressionError, match="expected an expression string, got 3"):
        Expression(3)  # type: ignore[arg-type]


def test_never_calls_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec/compile must not be used")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    expr = Expression("value > 40 and user.name in ['ada'] and not (id == 3)")
    assert expr.matches(ITEM)


def test_no_attribute_access() -> None:
    # Dots read mapping keys, never Python attributes.
    class Obj:
        secret = "x"

    assert Expression("item.secret == null").matches(Obj())
    assert Expression("__class__ == null").matches({})
