"""Orchestrator side: child role processes with a JSON-lines control channel.

A child prints one JSON object per line on stdout (``{"event": ...}``) and reads
commands (``{"cmd": ...}``) one per line on stdin. ``{"event": "log"}`` lines and
anything that is not JSON are echoed to stderr with the child's name.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

from bench._util import REPO_ROOT


class ChildError(RuntimeError):
    pass


def python_role(module: str, *args: str, python: str | None = None) -> list[str]:
    """argv of ``python -m module args`` (this interpreter unless ``python`` is given)."""
    return [python or sys.executable, "-m", module, *args]


class Child:
    """A child process started from ``argv`` in the repository root, pinned to ``core`` if given."""

    def __init__(self, name: str, argv: list[str], core: int | None = None) -> None:
        self.name = name
        if core is not None and shutil.which("taskset") and (os.cpu_count() or 1) > core:
            argv = ["taskset", "-c", str(core), *argv]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_ROOT,
            env=env,
            text=True,
            bufsize=1,
        )
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()

    def _reader(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                print(f"[{self.name}] {line}", file=sys.stderr)
                continue
            if msg.get("event") == "log":
                print(f"[{self.name}] {msg.get('msg')}", file=sys.stderr)
                continue
            self._q.put(msg)
        self._q.put(None)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise ChildError(f"{self.name}: cannot send {cmd}: {exc}") from exc

    def recv(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            msg = self._q.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.name}: no {event!r} within {timeout:.0f}s") from None
        if msg is None:
            self.proc.wait(timeout=5)
            raise ChildError(f"{self.name}: exited (rc={self.proc.returncode}) while waiting for {event!r}")
        if msg.get("event") == "error":
            raise ChildError(f"{self.name}: {msg.get('msg')}")
        if msg.get("event") != event:
            raise ChildError(f"{self.name}: expected {event!r}, got {msg}")
        return msg

    def request(self, event: str, wait: float, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.recv(event, wait)

    def close(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
            except ChildError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(
                    f"[{self.name}] did not quit in {timeout}s, killing pid {self.proc.pid}", file=sys.stderr
                )
                self.proc.kill()
                self.proc.wait(timeout=5)
        # drain the reader so the last lines are printed
        self._t.join(timeout=2)


def wait_count(srv: Child, n: int, timeout: float) -> int:
    """Poll the server's connection count until it reaches n."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = srv.request("count", 10, cmd="count")["count"]
        if count == n:
            return count
        time.sleep(0.05)
    raise ChildError(f"{srv.name}: connection_count={count}, expected {n} after {timeout:.0f}s")


def start_clients(name: str, port: int, n: int, *extra: str, core: int | None = None,
                  timeout: float = 60.0) -> Child:
    """A load client (``bench._client``) with n connections open, or ChildError."""
    cli = Child(name, python_role("bench._client", "--port", str(port), "--clients", str(n), *extra), core=core)
    try:
        c = cli.recv("connected", timeout)
        if c["n"] != n:
            raise ChildError(f"{name}: only {c['n']}/{n} connected: {c['errors']}")
    except ChildError:
        cli.close()
        raise
    return cli


def run_phase(srv: Child, cli: Child, messages: int, burst: int, timeout: float,
              rate: float = 0.0) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """One measured phase: arm the client, broadcast, wait for every byte, close the CPU window.

    Returns the server's ``sent``, the client's ``done`` and the server's ``cpu`` events.
    """
    cli.request("armed", 10, cmd="expect", messages=messages, timeout=timeout)
    sent = srv.request("sent", timeout + 10, cmd="run", messages=messages, burst=burst, rate=rate)
    done = cli.recv("done", timeout + 10)
    cpu = srv.request("cpu", 10, cmd="stop")
    return sent, done, cpu
