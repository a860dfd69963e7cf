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


# -- the docs as a whole: reading order, links, anchors -----------------------------------------

ROOT = pathlib.Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: Written on other branches (architecture by the lead, operations, dropin and topics by helpers):
#: their links are checked once the pages exist.
PENDING = {"docs/architecture.md", "docs/operations.md", "docs/dropin.md", "docs/topics.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_docs_index_reads_in_order() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    order = ["quickstart.md", "blueprints.md", "deployment.md", "scaling.md", "reference.md", "architecture.md"]
    positions = [index.index(f"]({name})") for name in order]
    assert positions == sorted(positions), "docs/README.md: quickstart, guides, reference, architecture"
    assert "](operations.md)" in index and "](dropin.md)" in index


def test_readme_first_screen() -> None:
    readme = (ROOT / "README.md").read_text()
    first = readme[: readme.index("| server |")]  # up to the benchmark table
    assert "](docs/quickstart.md)" in first
    assert "fastws run examples/realtime_dashboard.yaml" in first
    assert "python -m pytest -q" in first
    assert "import fastws" in first
    assert "python -m bench.bench_fanout" in first


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: pathlib.Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if rel in PENDING and not dest.exists():
            continue
        assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page.relative_to(ROOT)}: link to {target}: no such heading"


def test_no_machine_paths() -> None:
    for page in [*PAGES, ROOT / "bench" / "README.md"]:
        assert "/work/" not in page.read_text(), f"{page.relative_to(ROOT)} cites a path of our machines"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(python -m pip install -e '\.\[test\]' && python -m pytest -q)\s+#", readme, re.M)
    assert command, "the README's test command"
    ci = (ROOT / ".ci" / "run").read_text().rstrip().splitlines()
    assert ci[-1] == command.group(1)


def test_ci_preflight_names_what_is_missing() -> None:
    """``.ci/run --check`` installs nothing; with a component missing it says which and exits 2."""
    import os
    import subprocess

    ci = ROOT / ".ci" / "run"
    assert subprocess.run(["bash", "-n", str(ci)], timeout=30).returncode == 0
    proc = subprocess.run(["bash", str(ci), "--check"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FASTWS_CHROMIUM": "/nonexistent/chromium"})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("fastws CI cannot run: missing ")
    assert "chromium" in proc.stderr.splitlines()[0]
    assert "apt-get install -y" in proc.stderr
