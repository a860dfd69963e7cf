"""Which server implementations can run here, and the command line of each one's server role.

fastws, websockets and picows run in this interpreter. The optional peers, both on
uWebSockets, are skipped with a message when absent:

* ``bun``: ``bench/bun_server.js`` under Bun (``--bun PATH``, env ``BENCH_BUN``, or ``bun`` on PATH);
* ``socketify``: ``bench._server --impl socketify`` under a Python that imports socketify
  (``--socketify-python PATH``, env ``BENCH_SOCKETIFY_PYTHON``, else this interpreter).

See bench/README.md for how to install them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from bench._child import python_role
from bench._util import fastws_status

IMPLS = ("fastws", "websockets", "picows", "bun", "socketify")
#: Also runnable on request (``--impl fastws,fastws-component``), not by default.
EXTRA_IMPLS = ("fastws-component", "fastws-aiofastnet")
#: Implementations the CPU ratios are taken against, when they ran.
REFERENCES = ("websockets", "picows", "bun")
BUN_SERVER = "bench/bun_server.js"


def add_peer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bun", default=os.environ.get("BENCH_BUN") or shutil.which("bun"),
                   help="Bun executable for the bun peer (default: $BENCH_BUN, else bun on PATH)")
    p.add_argument("--socketify-python", default=os.environ.get("BENCH_SOCKETIFY_PYTHON") or sys.executable,
                   help="Python with socketify (and uvloop, msgspec) for the socketify peer "
                        "(default: $BENCH_SOCKETIFY_PYTHON, else this interpreter)")


def _run(argv: list[str]) -> str | None:
    """stdout of argv, or None if it cannot run or fails."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def missing(impl: str, args: argparse.Namespace) -> str | None:
    """Why ``impl`` cannot run here, or None if it can."""
    if impl in ("fastws", "fastws-component", "fastws-aiofastnet"):
        st = fastws_status()
        return None if st == "ok" else st
    if impl == "bun":
        if not args.bun or _run([args.bun, "--version"]) is None:
            return "no Bun found (npm install bun, then --bun PATH or BENCH_BUN; see bench/README.md)"
    elif impl == "socketify":
        if _run([args.socketify_python, "-c", "import socketify, uvloop, msgspec"]) is None:
            return (f"{args.socketify_python} cannot import socketify, uvloop and msgspec (pip install socketify "
                    "into a venv, then --socketify-python PATH or BENCH_SOCKETIFY_PYTHON; see bench/README.md)")
    return None


def available(impls: list[str], args: argparse.Namespace) -> list[str]:
    """``impls`` without the ones that cannot run here; says on stderr why each one is skipped."""
    out = []
    for impl in impls:
        why = missing(impl, args)
        if why is None:
            out.append(impl)
        else:
            print(f"{impl} skipped: {why}", file=sys.stderr)
    return out


def versions(impls: list[str], args: argparse.Namespace) -> dict[str, str]:
    """Versions of the peers that run, for the env record."""
    out: dict[str, str] = {}
    if "bun" in impls:
        out["bun"] = _run([args.bun, "--version"]) or "?"
    if "socketify" in impls:
        code = "from importlib.metadata import version; print(version('socketify'))"
        out["socketify"] = _run([args.socketify_python, "-c", code]) or "?"
    return out


def server_argv(impl: str, role_args: list[str], args: argparse.Namespace) -> list[str]:
    """Command line of ``impl``'s server role with ``role_args`` (``--mode``, ``--core`` ...)."""
    if impl == "bun":
        return [args.bun, BUN_SERVER, *role_args]
    python = args.socketify_python if impl == "socketify" else None
    return python_role("bench._server", "--impl", impl, *role_args, python=python)
