"""``Any`` only at the dynamic boundaries: every use is one of the named aliases in
``fastws._types`` (CI runs ``mypy --strict`` itself; this test does not run mypy)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "fastws"

#: Where ``Any`` may appear, and why. Keep this short: a new dynamic boundary gets an
#: alias in ``fastws/_types.py`` (with a comment saying why), not an entry here.
ALLOWED = {
    # the alias definitions: Item, ConfigValue, Settings, Stats, Record (and the import)
    "_types.py",
}
#: In ``_types.py``: the import, or ``Name = <type using Any>  # why it is dynamic``.
_ALIAS_LINE = re.compile(r"^(from typing import Any|[A-Z]\w* = [^#]*\bAny\b[^#]*  # \S.*)$")


#: A string annotation (``"dict[str, Any]"``), not prose (``"Any other key..."``).
_TYPE_STRING = re.compile(r"^[\w.\[\], |]*\bAny\b[\w.\[\], |]*$")


def _any_lines(path: Path) -> list[tuple[int, str]]:
    """The lines where ``Any`` is a name in the code or in a string annotation
    (not in prose: a docstring or a comment)."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        in_code = tok.type == tokenize.NAME and tok.string == "Any"
        in_annotation = (
            tok.type == tokenize.STRING
            and tok.string[:1] in "'\""
            and ("[" in tok.string or "|" in tok.string or tok.string[1:-1] == "Any")
            and _TYPE_STRING.match(tok.string[1:-1]) is not None
        )
        if in_code or in_annotation:
            found.append((tok.start[0], lines[tok.start[0] - 1]))
    return found


def _sources() -> list[Path]:
    files = [p for p in SRC.rglob("*") if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts]
    assert len(files) > 40, files  # the whole package, not an empty glob
    return sorted(files)


def test_any_only_in_the_alias_module():
    offending = [
        f"{path.relative_to(SRC.parent)}:{n}: {line.strip()}"
        for path in _sources()
        if path.relative_to(SRC).as_posix() not in ALLOWED
        for n, line in _any_lines(path)
    ]
    assert not offending, (
        "typing.Any outside fastws._types: use a precise type, object, or one of the aliases "
        "there (Item, ConfigValue, ConfigMapping, ConfigDict, Settings, Stats, Record):\n" + "\n".join(offending)
    )


def test_each_alias_says_why_it_is_dynamic():
    lines = _any_lines(SRC / "_types.py")
    assert lines  # the aliases are there
    bad = [f"_types.py:{n}: {line}" for n, line in lines if not _ALIAS_LINE.match(line)]
    assert not bad, "each Any in _types.py is one alias with a comment saying why:\n" + "\n".join(bad)


def test_the_check_sees_any_in_code_not_in_words(tmp_path: Path):
    sample = tmp_path / "probe.py"
    sample.write_text(
        '"""Any docstring."""\n'  # 1: prose
        "from typing import Any  # Any\n"  # 2
        'x: "int | None" = 1\n'  # 3
        "y: Any = 2\n"  # 4
        'z: "dict[str, Any]" = {}\n'  # 5: a string annotation
        'w = "Any other key is refused"\n'  # 6: prose
        "# Any comment\n"  # 7
    )
    assert [n for n, _ in _any_lines(sample)] == [2, 4, 5]
