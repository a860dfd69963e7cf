"""What users install: the sdist, the wheel built from it, the extras, the license.

The sdist is built from this tree and the wheel from the unpacked sdist (so the sdist
provably builds), both with ``python -m build --no-isolation`` (the ``test`` extra holds
the build requirements). The whole test suite (but this file) then runs from the unpacked
sdist against the wheel's files, and a separate test checks that every tracked file under
tests/, examples/, docs/ and compliance/ is in the sdist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fastws.optional import missing_extra
from tests.utils import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
#: Run from the unpacked sdist: every test but this file's (which would build and run again).
SDIST_RUN = ["tests", "--ignore=tests/test_packaging.py"]


@dataclass
class Dist:
    sdist: Path
    sdist_names: list[str]
    sdist_dir: Path  # unpacked
    wheel: Path
    wheel_names: list[str]
    wheel_dir: Path  # unpacked: importable with PYTHONPATH


def build(kind: str, source: Path, out: Path) -> Path:
    proc = subprocess.run([sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out),
                           str(source)], capture_output=True, text=True, timeout=60 * TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [built] = out.glob("*.tar.gz" if kind == "sdist" else "*.whl")
    return built


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dist]:
    tmp = tmp_path_factory.mktemp("dist")
    sdist = build("sdist", ROOT, tmp / "sdist")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(tmp / "unpacked", filter="data")
        else:
            tar.extractall(tmp / "unpacked")  # noqa: S202 - our own sdist, just built
    [sdist_dir] = (tmp / "unpacked").iterdir()
    wheel = build("wheel", sdist_dir, tmp / "wheel")
    with zipfile.ZipFile(wheel) as zf:
        wheel_names = zf.namelist()
        zf.extractall(tmp / "site")
    yield Dist(sdist, [n.split("/", 1)[1] for n in names if "/" in n], sdist_dir, wheel, wheel_names, tmp / "site")


@pytest.mark.slow
def test_sdist_has_what_the_tests_need(dist: Dist) -> None:
    names = set(dist.sdist_names)
    for needed in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "src/fastws/_core.pyx",
                   "src/fastws/static/dashboard.html", "tests/conftest.py", "tests/utils.py"):
        assert needed in names, f"the sdist lacks {needed}"
    assert not [n for n in names if n.endswith((".c", ".so", ".pyc"))]
    git = subprocess.run(["git", "ls-files", "tests", "examples", "docs", "compliance"], cwd=ROOT,
                         capture_output=True, text=True)
    if git.returncode != 0:
        pytest.skip("not a git checkout: cannot list the tracked files")
    missing = [f for f in git.stdout.split() if f not in names and not f.startswith("compliance/results/")]
    assert not missing, f"tracked files the sdist lacks: {missing}"


@pytest.mark.slow
def test_wheel_has_the_compiled_core_and_no_sources(dist: Dist) -> None:
    names = dist.wheel_names
    assert [n for n in names if n.startswith("fastws/_core.") and n.endswith(".so")], names
    assert not [n for n in names if n.endswith((".c", ".pyx", ".html")) and "static/" not in n], names
    for needed in ("fastws/py.typed", "fastws/_core.pyi", "fastws/static/dashboard.html",
                   "fastws/optional.py", "fastws-0.1.0.dist-info/licenses/LICENSE"):
        assert needed in names, f"the wheel lacks {needed}"
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    with zipfile.ZipFile(dist.wheel) as zf:
        meta = zf.read(metadata).decode()
    for version in ("3.11", "3.12", "3.13"):
        assert f"Classifier: Programming Language :: Python :: {version}\n" in meta
    assert "License-Expression: MIT" in meta
    assert "Provides-Extra: redis" in meta and "Provides-Extra: nats" in meta
    assert "Requires-Dist: redis>=5; extra == \"redis\"" in meta
    assert "Requires-Dist: nats-py>=2.6; extra == \"nats\"" in meta


def wheel_env(dist: Dist) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(dist.wheel_dir), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_the_wheel_serves(dist: Dist, tmp_path: Path) -> None:
    """tests/smoke.py (a server, a client, a broadcast) on the wheel's files, outside the tree."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "smoke.py")], cwd=tmp_path, env=wheel_env(dist),
                          capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"from {dist.wheel_dir}/fastws/__init__.py: broadcast received" in proc.stdout


@pytest.mark.slow
def test_suite_runs_from_the_sdist(dist: Dist) -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", *SDIST_RUN], cwd=dist.sdist_dir,
                          env=wheel_env(dist), capture_output=True, text=True, timeout=240 * TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout.splitlines()[-1]
    # the tests imported the wheel's fastws, not this tree's
    check = subprocess.run([sys.executable, "-c", "import fastws; print(fastws.__file__)"], cwd=dist.sdist_dir,
                           env=wheel_env(dist), capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert check.stdout.strip() == str(dist.wheel_dir / "fastws" / "__init__.py")


# -- optional extras ---------------------------------------------------------------------------


def test_missing_extra_when_installed() -> None:
    pytest.importorskip("redis")
    pytest.importorskip("nats")
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380", "nats://127.0.0.1:4222", "tls://h:4222",
                "memory://x", "", None, "kafka://h"):
        assert missing_extra(url) is None, url


BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"redis", "nats"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Block())
from fastws.optional import missing_extra
for url in sys.argv[1:]:
    print(missing_extra(url))
"""


def test_missing_extra_names_the_extra() -> None:
    """With redis and nats-py not importable (blocked in a child process), the extra is named."""
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "redis://10.0.0.5:6379/0", "rediss://h", "NATS://h:4222",
                           "tls://h:4222", "memory://x"], capture_output=True, text=True, timeout=6 * TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "backplane: redis:// needs the redis package (the fastws[redis] extra): pip install redis",
        "backplane: rediss:// needs the redis package (the fastws[redis] extra): pip install redis",
        "backplane: nats:// needs the nats-py package (the fastws[nats] extra): pip install nats-py",
        "backplane: tls:// needs the nats-py package (the fastws[nats] extra): pip install nats-py",
        "None",
    ]


def test_license_file() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 fastws developers\n")


def test_cibuildwheel_config() -> None:
    """manylinux x86_64 and aarch64 wheels of CPython 3.11-3.13, each smoke-tested once installed."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert config["build"] == ["cp311-*", "cp312-*", "cp313-*"]
    assert config["linux"]["archs"] == ["x86_64", "aarch64"]
    assert "*-musllinux_*" in config["skip"]
    assert config["test-command"] == "python {project}/tests/smoke.py"
    assert (ROOT / "tests" / "smoke.py").is_file()
