"""``Filter``: pass the items that satisfy conditions written in a safe expression language."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

from fastws._types import ConfigMapping, Item
from fastws.components._base import BuiltinComponent
from fastws.components.expr import Expression, ExpressionError
from fastws.exceptions import ConfigError

__all__ = ["Filter", "FilterConfig", "FilterCondition"]


class FilterCondition(msgspec.Struct, forbid_unknown_fields=True):
    #: An expression such as ``value > 50 and name in ["cpu", "memory"]``.
    condition: str
    #: Free text, for the reader of the blueprint.
    description: str | None = None
    name: str | None = None


class FilterConfig(msgspec.Struct, forbid_unknown_fields=True):
    #: Upstream form: a list of ``{condition: "<expression>"}`` (plain strings work too).
    filter_conditions: list[FilterCondition | str] = []
    #: Shorthand for a single condition.
    condition: str | None = None
    #: ``all``: every condition must hold; ``any``: at least one.
    match: Literal["all", "any"] = "all"


class Filter(BuiltinComponent):
    """Forward only the items for which the conditions hold; drop the others.

    With no condition every item passes. Conditions are parsed when the
    component is built (so a blueprint with a bad expression fails validation),
    never evaluated as Python.
    """

    Config = FilterConfig
    settings: FilterConfig

    def __init__(self, name: str, config: ConfigMapping | None = None) -> None:
        super().__init__(name, config)
        self.expressions = self.compile(self.settings, f"{name}.config")
        self.dropped_count = 0
        exprs = self.expressions
        self._test: Callable[[Item], bool]
        if not exprs:
            self._test = lambda item: True
        elif len(exprs) == 1:
            self._test = exprs[0].matches
        elif self.settings.match == "all":
            self._test = lambda item: all(e(item) for e in exprs)
        else:
            self._test = lambda item: any(e(item) for e in exprs)

    @classmethod
    def parse_config(cls, config: ConfigMapping | None, path: str = "config") -> tuple[FilterConfig, tuple[str, ...]]:
        settings, ignored = super().parse_config(config, path)
        cls.compile(settings, path)  # a bad expression is a config error
        return settings, ignored

    @staticmethod
    def compile(settings: FilterConfig, path: str) -> list[Expression]:
        sources: list[tuple[str, str]] = []
        for i, cond in enumerate(settings.filter_conditions):
            if isinstance(cond, str):
                sources.append((f"{path}.filter_conditions[{i}]", cond))
            else:
                sources.append((f"{path}.filter_conditions[{i}].condition", cond.condition))
        if settings.condition is not None:
            sources.append((f"{path}.condition", settings.condition))
        compiled = []
        for where, text in sources:
            try:
                compiled.append(Expression(text))
            except ExpressionError as exc:
                raise ConfigError(f"{where}: invalid expression: {exc}") from None
        return compiled

    def handle(self, item: Item) -> Item:
        if self._test(item):
            return item
        self.dropped_count += 1
        return None
