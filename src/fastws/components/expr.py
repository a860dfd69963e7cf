"""A small, safe expression language for :class:`~fastws.components.Filter`.

Expressions are parsed once, at load time, by a hand-written tokenizer and a
recursive-descent parser, and compiled into plain Python closures. Nothing is
ever passed to ``eval``/``exec``; the only things an expression can do are read
fields of the item and compare values.

Grammar (lowest precedence first)::

    expr       := or_expr
    or_expr    := and_expr (("or" | "||") and_expr)*
    and_expr   := not_expr (("and" | "&&") not_expr)*
    not_expr   := ("not" | "!") not_expr | comparison
    comparison := operand (comp_op operand)*          # chains like Python: 1 < x < 5
    comp_op    := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in"
    operand    := "-"? primary
    primary    := NUMBER | STRING | "true" | "false" | "null" | list | field | "(" expr ")"
    list       := "[" (expr ("," expr)* ","?)? "]"
    field      := NAME ("." NAME | "[" (STRING | INTEGER) "]")*

Semantics:

* a field path is looked up in the item: ``user.address.city``, ``tags[0]``,
  ``headers["content-type"]``; the name ``item`` stands for the whole item
  (``item.value``, ``item["value"]``, as upstream conditions were written);
* a missing field (or a step into something that is not a mapping/list) is ``null``;
* ``<``/``<=``/``>``/``>=`` between values that cannot be ordered (``"a" < 1``,
  ``null > 3``) are false rather than errors; ``in`` on ``null`` is false;
* ``True``/``False``/``None`` are accepted as aliases of ``true``/``false``/``null``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from fastws._paths import getter
from fastws._types import Item
from fastws.exceptions import ConfigError

__all__ = ["Expression", "ExpressionError", "compile_expression"]

_MISSING = None

#: A compiled expression: reads an item, gives a value (a field of the item, a constant, a bool).
Evaluator = Callable[[Item], Item]
#: A comparison of two such values (False when they cannot be compared).
Comparator = Callable[[Item, Item], bool]


class ExpressionError(ConfigError):
    """An expression could not be parsed. The message gives the column."""


# -- tokenizer ---------------------------------------------------------------------

_KEYWORDS = {
    "and": "and",
    "or": "or",
    "not": "not",
    "in": "in",
    "true": "true",
    "false": "false",
    "null": "null",
    "True": "true",
    "False": "false",
    "None": "null",
}
_TWO_CHAR_OPS = {"==", "!=", "<=", ">=", "&&", "||"}
_ONE_CHAR_OPS = {"<", ">", "(", ")", "[", "]", ",", ".", "!", "-"}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


class _Token:
    __slots__ = ("kind", "value", "pos")

    def __init__(self, kind: str, value: str | int | float | None, pos: int) -> None:
        self.kind = kind  # "num", "str", "name", "kw", "op", "end"
        self.value = value
        self.pos = pos

    def describe(self) -> str:
        if self.kind == "end":
            return "end of expression"
        if self.kind == "str":
            return f"string {self.value!r}"
        return repr(str(self.value))


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        start = i
        if c.isdigit() or (c == "." and i + 1 < n and text[i + 1].isdigit()):
            while i < n and (text[i].isdigit() or text[i] in "._"):
                i += 1
            if i < n and text[i] in "eE":
                j = i + 1
                if j < n and text[j] in "+-":
                    j += 1
                if j < n and text[j].isdigit():
                    i = j
                    while i < n and text[i].isdigit():
                        i += 1
            raw = text[start:i]
            try:
                value: int | float = int(raw) if raw.replace("_", "").isdigit() else float(raw)
            except ValueError:
                raise _error(text, start, f"invalid number {raw!r}") from None
            tokens.append(_Token("num", value, start))
            continue
        if c.isalpha() or c == "_":
            while i < n and (text[i].isalnum() or text[i] == "_"):
                i += 1
            word = text[start:i]
            if word in _KEYWORDS:
                tokens.append(_Token("kw", _KEYWORDS[word], start))
            else:
                tokens.append(_Token("name", word, start))
            continue
        if c in "'\"":
            quote = c
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise _error(text, start, "unterminated string")
                ch = text[i]
                if ch == quote:
                    i += 1
                    break
                if ch == "\\":
                    if i + 1 >= n:
                        raise _error(text, start, "unterminated string")
                    esc = text[i + 1]
                    if esc not in _ESCAPES:
                        raise _error(text, i, f"unknown escape '\\{esc}' in string")
                    chars.append(_ESCAPES[esc])
                    i += 2
                    continue
                chars.append(ch)
                i += 1
            tokens.append(_Token("str", "".join(chars), start))
            continue
        two = text[i : i + 2]
        if two in _TWO_CHAR_OPS:
            tokens.append(_Token("op", two, start))
            i += 2
            continue
        if c in _ONE_CHAR_OPS:
            tokens.append(_Token("op", c, start))
            i += 1
            continue
        if c == "=":
            raise _error(text, start, "unexpected '='; use '==' to compare")
        raise _error(text, start, f"unexpected character {c!r}")
    tokens.append(_Token("end", None, n))
    return tokens


def _error(text: str, pos: int, msg: str) -> ExpressionError:
    return ExpressionError(f"{msg} at column {pos + 1} in {text!r}")


# -- evaluation helpers --------------------------------------------------------------


def _lookup(path: tuple[str | int | float, ...]) -> Evaluator:
    """Return a function reading ``path`` from an item; missing steps give None."""
    return getter(path, default=_MISSING)


def _ordered(op: Comparator) -> Comparator:
    def compare(a: Item, b: Item) -> bool:
        if a is None or b is None:
            return False
        try:
            return bool(op(a, b))
        except TypeError:
            return False

    return compare


def _contains(a: Item, b: Item) -> bool:
    if b is None:
        return False
    try:
        return a in b
    except TypeError:
        return False


def _not_contains(a: Item, b: Item) -> bool:
    if b is None:
        return False
    try:
        return a not in b
    except TypeError:
        return False


_COMPARATORS: dict[str, Comparator] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": _ordered(operator.lt),
    "<=": _ordered(operator.le),
    ">": _ordered(operator.gt),
    ">=": _ordered(operator.ge),
    "in": _contains,
    "not in": _not_contains,
}


# -- parser ---------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def _next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _is(self, kind: str, *values: str) -> bool:
        tok = self.tok
        return tok.kind == kind and (not values or tok.value in values)

    def _expect_op(self, value: str) -> _Token:
        if not self._is("op", value):
            raise self._unexpected(f"expected '{value}'")
        return self._next()

    def _unexpected(self, hint: str = "") -> ExpressionError:
        tok = self.tok
        msg = f"unexpected {tok.describe()}"
        if hint:
            msg += f" ({hint})"
        return _error(self.text, tok.pos, msg)

    def parse(self) -> Evaluator:
        if self._is("end"):
            raise _error(self.text, 0, "empty expression")
        fn = self._or()
        if not self._is("end"):
            raise self._unexpected("expected an operator or the end of the expression")
        return fn

    def _or(self) -> Evaluator:
        parts = [self._and()]
        while self._is("kw", "or") or self._is("op", "||"):
            self._next()
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda item: any(p(item) for p in parts)

    def _and(self) -> Evaluator:
        parts = [self._not()]
        while self._is("kw", "and") or self._is("op", "&&"):
            self._next()
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda item: all(p(item) for p in parts)

    def _not(self) -> Evaluator:
        if self._is("kw", "not") or self._is("op", "!"):
            self._next()
            inner = self._not()
            return lambda item: not inner(item)
        return self._comparison()

    def _comp_op(self) -> str | None:
        tok = self.tok
        if tok.kind == "op" and tok.value in ("==", "!=", "<", "<=", ">", ">="):
            self._next()
            return str(tok.value)
        if tok.kind == "kw" and tok.value == "in":
            self._next()
            return "in"
        if tok.kind == "kw" and tok.value == "not":
            nxt = self.tokens[self.i + 1]
            if nxt.kind == "kw" and nxt.value == "in":
                self.i += 2
                return "not in"
        return None

    def _comparison(self) -> Evaluator:
        first = self._operand()
        ops: list[Comparator] = []
        operands = [first]
        while (op := self._comp_op()) is not None:
            ops.append(_COMPARATORS[op])
            operands.append(self._operand())
        if not ops:
            return first
        if len(ops) == 1:
            cmp, left, right = ops[0], operands[0], operands[1]
            return lambda item: cmp(left(item), right(item))

        def chain(item: Item) -> bool:
            left = operands[0](item)
            for cmp, right_fn in zip(ops, operands[1:], strict=True):
                right = right_fn(item)
                if not cmp(left, right):
                    return False
                left = right
            return True

        return chain

    def _operand(self) -> Evaluator:
        if self._is("op", "-"):
            minus = self._next()
            if not self._is("num"):
                raise _error(self.text, minus.pos, "'-' must be followed by a number")
            number = self._next().value
            assert isinstance(number, (int, float))  # a "num" token
            value = -number
            return lambda item: value
        return self._primary()

    def _primary(self) -> Evaluator:
        tok = self.tok
        if tok.kind in ("num", "str"):
            self._next()
            value = tok.value
            return lambda item: value
        if tok.kind == "kw" and tok.value in ("true", "false", "null"):
            self._next()
            const = {"true": True, "false": False, "null": None}[tok.value]
            return lambda item: const
        if self._is("op", "("):
            self._next()
            inner = self._or()
            self._expect_op(")")
            return inner
        if self._is("op", "["):
            return self._list()
        if tok.kind == "name":
            return self._field()
        raise self._unexpected("expected a value, a field name or '('")

    def _list(self) -> Evaluator:
        self._expect_op("[")
        elements: list[Evaluator] = []
        while not self._is("op", "]"):
            elements.append(self._or())
            if self._is("op", ","):
                self._next()
            elif not self._is("op", "]"):
                raise self._unexpected("expected ',' or ']'")
        self._next()
        return lambda item: [e(item) for e in elements]

    def _field(self) -> Evaluator:
        first = self._next()
        assert isinstance(first.value, str)  # a "name" token
        path: list[str | int | float] = [first.value]
        whole_item = first.value == "item"
        if whole_item:
            path = []
        while True:
            if self._is("op", "."):
                self._next()
                if not self._is("name") and not self._is("kw"):
                    raise self._unexpected("expected a field name after '.'")
                tok = self._next()
                assert isinstance(tok.value, str)  # a "name" or "kw" token
                # keywords are fine as field names after a dot: ``flags.in``
                path.append(
                    tok.value if tok.kind == "name" else self.text[tok.pos : tok.pos + len(tok.value)]
                )
            elif self._is("op", "["):
                self._next()
                tok = self.tok
                if (tok.kind == "str" and isinstance(tok.value, str)) or (
                    tok.kind == "num" and isinstance(tok.value, int)
                ):
                    self._next()
                    path.append(tok.value)
                elif tok.kind == "op" and tok.value == "-" and self.tokens[self.i + 1].kind == "num":
                    self._next()
                    number = self._next().value
                    assert isinstance(number, (int, float))  # a "num" token
                    path.append(-number)
                else:
                    raise self._unexpected("expected a string or an integer index")
                self._expect_op("]")
            else:
                break
        if not path:
            return lambda item: item
        return _lookup(tuple(path))


class Expression:
    """A parsed expression; call it with an item to get its value."""

    __slots__ = ("source", "_fn")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise ExpressionError(f"expected an expression string, got {source!r}")
        self.source = source
        self._fn = _Parser(source).parse()

    def __call__(self, item: Item) -> Item:
        return self._fn(item)

    def matches(self, item: Item) -> bool:
        """The expression's value as a bool."""
        return bool(self._fn(item))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(source: str) -> Expression:
    """Parse ``source``; raise :class:`ExpressionError` (with its column) if it is invalid."""
    return Expression(source)
