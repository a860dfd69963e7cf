"""The names of fastws' dynamic boundaries: the only places where ``typing.Any`` is used.

Everything else under ``src/fastws`` is typed exactly, or with ``object`` where a value
is only stored or passed on (``tests/test_typing.py`` checks that ``Any`` appears
nowhere but here). Each alias says why its values cannot have a static type. Aliases
only: this module imports nothing of fastws and runs no code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ConfigDict", "ConfigMapping", "ConfigValue", "Item", "Record", "Settings", "Stats"]

#: A user item, or any value taken out of one (a field an expression or a path reads):
#: broadcast as JSON, passed along pipelines and compared as the user wrote it.
Item = Any  # dynamic: whatever the user broadcasts or a component emits

#: A config value as the user wrote it (YAML, JSON, ``--set``, keyword arguments),
#: before it is checked against its msgspec struct.
ConfigValue = Any  # dynamic: user input, checked by msgspec.convert and the structs

#: A config mapping as the user wrote it (``config:`` of a component, ``serve --config``).
ConfigMapping = Mapping[str, ConfigValue]
#: The same, being built (the CLI merges file, environment and flags into one).
ConfigDict = dict[str, ConfigValue]

#: The parsed ``Config`` struct of a component; a subclass declares its own type
#: (``settings: FilterConfig``), a component without ``Config`` has ``None``.
Settings = Any  # dynamic: its type is the user's subclass' Config struct

#: ``stats()``: a JSON-like tree of counters (str keys; numbers, strings, lists and
#: nested dicts). Readers index it by key and do arithmetic on what they find, so a
#: recursive JSON type would need a cast at every read.
Stats = dict[str, Any]  # dynamic: nested counters whose shape depends on the fan-out target

#: A JSON object fastws builds around user items (broadcast reports, joined and
#: windowed records, health) or decodes from a peer (JWT claims).
Record = dict[str, Any]  # dynamic: its values are user items or decoded JSON
