"""Every option a user can set is documented in docs/reference.md."""

from __future__ import annotations

import argparse
import pathlib
import re

import msgspec
import pytest

from fastws.cli import build_parser
from fastws.config import ServerConfig

REFERENCE = (pathlib.Path(__file__).parent.parent / "docs" / "reference.md").read_text()


def struct_keys(cls, prefix=""):
    for name in cls.__struct_fields__:
        yield prefix + name
        hint = msgspec.inspect.type_info(cls)
        for field in hint.fields:
            if field.name != name:
                continue
            t = field.type
            if isinstance(t, msgspec.inspect.UnionType):
                t = next((x for x in t.types if isinstance(x, msgspec.inspect.StructType)), t)
            if isinstance(t, msgspec.inspect.StructType):
                yield from struct_keys(t.cls, prefix + name + ".")


@pytest.mark.parametrize("key", sorted(struct_keys(ServerConfig)))
def test_config_key_documented(key):
    # as a table entry (`port`, `ssl.keyfile`) or in a YAML example (`keyfile:`)
    name = key.rsplit(".", 1)[-1]
    assert f"`{key}`" in REFERENCE or f"`{name}`" in REFERENCE or f"{name}:" in REFERENCE


def cli_flags():
    parser = build_parser()
    seen = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in sub._actions:
                    for opt in a.option_strings:
                        if opt.startswith("--") and opt != "--help":
                            seen.add((name, opt))
        for opt in action.option_strings:
            if opt.startswith("--") and opt != "--help":
                seen.add(("", opt))
    return sorted(seen)


@pytest.mark.parametrize(("command", "flag"), cli_flags())
def test_cli_flag_documented(command, flag):
    assert re.search(rf"{re.escape(flag)}(?![\\w-])", REFERENCE), f"{command} {flag} is not in docs/reference.md"
