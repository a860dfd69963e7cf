"""A backplane whose client library is missing fails the same way in validate and at run time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fastws
from fastws.optional import missing_extra

BLUEPRINT = """\
system:
  name: scaled
  components:
    - name: ws
      type: WebSocket
      config: {host: 127.0.0.1, port: 0, backplane: "redis://127.0.0.1:6379/0"}
"""


def _without_redis(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python where ``import redis`` fails, as if the extra were not installed."""
    prelude = "import sys; sys.modules['redis'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=60)


def test_installed_client_is_not_a_problem() -> None:
    assert missing_extra("redis://127.0.0.1:6379/0") is None
    assert missing_extra("nats://127.0.0.1:4222") is None
    assert missing_extra("memory://x") is None and missing_extra(None) is None


def test_validate_reports_the_missing_extra(tmp_path: Path) -> None:
    path = tmp_path / "scaled.yaml"
    path.write_text(BLUEPRINT)
    proc = _without_redis(f"""
        from fastws.cli import main
        raise SystemExit(main(["validate", {str(path)!r}]))
    """)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "fastws[redis]" in out and "pip install redis" in out
    assert "Traceback" not in out


def test_config_and_server_refuse_it_with_the_same_message() -> None:
    proc = _without_redis("""
        import fastws
        for make in (lambda: fastws.ServerConfig(backplane="redis://127.0.0.1:6379/0"),
                     lambda: fastws.Server(port=0, backplane="redis://127.0.0.1:6379/0")):
            try:
                make()
            except fastws.ConfigError as exc:
                print(exc)
            else:
                raise SystemExit("accepted")
    """)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    message = "backplane: redis:// needs the redis package (the fastws[redis] extra): pip install redis"
    assert lines == [message, f"config.{message}"]


def test_a_bad_url_is_still_a_bad_url() -> None:
    with pytest.raises(fastws.ConfigError, match="backplane"):
        fastws.ServerConfig(backplane="kafka://x")
