"""A real browser against real servers: headless Chromium driven by Selenium.

* the built-in page of ``examples/realtime_dashboard.yaml`` (run by ``fastws run`` in a
  child process): it connects, counts and shows the broadcasts, charts their values,
  shows the server going away and reconnects when it is back on the same port;
* the built-in page of ``fastws serve --page``: plain text lines and JSON lines;
* the plain JavaScript client snippets of the WebSocket component spec, verbatim.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and
``selenium`` (the ``test`` extra). Without them the tests are skipped, saying why,
except when ``CI=true``: then they fail.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.utils import TIMEOUT

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "realtime_dashboard.yaml"
CHROMIUM = os.environ.get("FASTWS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FASTWS_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Flags for a root user on a machine with no screen and a closed network.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
)
METRICS = {"cpu_percent", "memory_percent", "requests_per_second", "latency_ms"}

# The spec's client snippets (shared/spec/websocket-component.md, "Client Connection
# Example" and "Client Integration"), verbatim but for the URL.
SPEC_SNIPPET = """\
// Client-side JavaScript
const ws = new WebSocket('ws://localhost:8080');

ws.onopen = function() {
    console.log('Connected to WebSocket server');
};

ws.onmessage = function(event) {
    const data = JSON.parse(event.data);
    console.log('Received:', data);
};

ws.onclose = function() {
    console.log('WebSocket connection closed');
};
"""
SPEC_INTEGRATION_SNIPPET = """\
const ws = new WebSocket('ws://localhost:8080');
ws.onmessage = (event) => {
    const data = JSON.parse(event.data);
    updateUI(data);
};
"""


def _unavailable() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) and os.access(p, os.X_OK))]
    if missing:
        return (f"headless Chromium is not installed ({', '.join(missing)} missing): "
                "apt-get install chromium chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _unavailable()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the browser tests cannot run: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(log)))
    driver.set_page_load_timeout(3 * TIMEOUT)
    driver.set_script_timeout(3 * TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    yield browser
    browser.get("about:blank")  # closes the page's WebSocket before the next test


# -- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, predicate: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    """Poll ``predicate`` (a DOM or JS read) until it returns something true; bounded."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last value: {last!r})")


def http_status(port: int, path: str = "/") -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class Child:
    """A ``fastws`` command in a child process, stopped with SIGTERM like Ctrl-C."""

    def __init__(self, args: list[str], port: int, log: Path, stdin: int | None = subprocess.DEVNULL) -> None:
        self.port = port
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "fastws", "--log-level", "WARNING", *args],
                                     stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            wait_until(f"{args[0]} to serve on port {port}", self._ready, 3 * TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"fastws exited with {self.proc.returncode}: {self.log_path.read_text()}")
        return http_status(self.port) == 200

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(3 * TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(TIMEOUT)
        if self.proc.stdin:
            self.proc.stdin.close()
        self.log.close()
        return code


@contextlib.contextmanager
def run_example(port: int, log: Path, *settings: str) -> Iterator[Child]:
    child = Child(["run", str(EXAMPLE), "--set", f"websocket_server.port={port}",
                   "--set", "websocket_server.host=127.0.0.1", *settings], port, log)
    try:
        yield child
    finally:
        child.stop()


@contextlib.contextmanager
def serve_html(body: bytes) -> Iterator[str]:
    """Serve ``body`` as an HTML page from a plain HTTP server of its own on loopback."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/client.html"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(TIMEOUT)


def dom(driver: Any) -> dict[str, Any]:
    """What the page shows, read from the DOM (not from the page's own variables)."""
    return driver.execute_script("""
        const q = (s) => document.querySelector(s);
        const canvas = q('.chart canvas');
        let inked = false;
        if (canvas && canvas.width) {
            const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 3; i < px.length; i += 4) { if (px[i]) { inked = true; break; } }
        }
        return {
            state: q('#state').dataset.state, stateText: q('#state').textContent,
            count: parseInt(q('#count').textContent.replace(/,/g, ''), 10),
            reconnects: parseInt(q('#reconnects').textContent, 10),
            url: q('#url').textContent, detail: q('#detail').textContent,
            messages: [...document.querySelectorAll('.msg pre')].map((p) => p.textContent),
            charts: [...document.querySelectorAll('.chart')].map((c) => c.dataset.series),
            chartInked: inked,
        };
    """)


def assert_no_page_errors(driver: Any) -> None:
    errors = [e for e in driver.get_log("browser")
              if e["level"] == "SEVERE" and "WebSocket connection to" not in e["message"]]
    assert not errors, errors


# -- the built-in page ----------------------------------------------------------------------


def test_dashboard_page_shows_broadcasts_and_reconnects(page: Any, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "system.log"
    with run_example(port, log) as system:
        page.get(f"http://127.0.0.1:{port}/")
        assert page.title == "fastws live"
        wait_until("the page to connect", lambda: dom(page)["state"] == "connected")
        shown = wait_until("3 messages, shown as JSON, and a drawn chart",
                           lambda: (d := dom(page))["count"] >= 3 and len(d["messages"]) >= 3
                           and d["chartInked"] and d)
        assert shown["stateText"] == "connected"
        assert shown["url"] == f"ws://127.0.0.1:{port}/"
        item = json.loads(shown["messages"][0])  # the newest, pretty-printed
        assert set(item) == {"id", "name", "value", "unit", "timestamp"}
        assert item["name"] in METRICS and isinstance(item["value"], (int, float))
        assert shown["messages"][0] == json.dumps(item, indent=2, ensure_ascii=False)
        assert set(shown["charts"]) <= METRICS and shown["charts"]
        # the counter keeps counting (ten items a second)
        before = shown["count"]
        wait_until("the counter to go up", lambda: dom(page)["count"] >= before + 3)
        if shot := os.environ.get("FASTWS_DASHBOARD_SCREENSHOT"):  # for docs/dashboard.png
            wait_until("80 messages for the screenshot", lambda: dom(page)["count"] >= 80, timeout=30)
            page.save_screenshot(shot)

        code = system.stop()
        assert code == 0, log.read_text()
    stopped = wait_until("the page to show the server gone",
                         lambda: (d := dom(page))["state"] == "disconnected" and d)
    assert "retrying" in stopped["detail"]
    # the server said goodbye: CLOSE 1001 (going away) before any failed retry (1006)
    closes = page.execute_script("return window.fastwsPage.closes")
    assert closes[0]["code"] == 1001, closes
    count_down = stopped["count"]

    with run_example(port, log):  # the same port: the page finds it again by itself
        back = wait_until("the page to reconnect and receive new broadcasts",
                          lambda: (d := dom(page))["state"] == "connected" and d["count"] >= count_down + 3 and d,
                          timeout=3 * TIMEOUT)
        assert back["reconnects"] >= 1
        # the source restarted: ids start again from 0 in the newest messages
        assert json.loads(back["messages"][0])["id"] < 100
    assert_no_page_errors(page)


def test_dashboard_page_passes_the_token_on(page: Any, tmp_path: Path) -> None:
    """With `auth`, the page loaded as /?token=... opens its WebSocket with that token."""
    port = free_port()
    with run_example(port, tmp_path / "system.log", "--set", "websocket_server.auth={tokens: [s3cret]}"):
        page.get(f"http://127.0.0.1:{port}/")  # no token: refused at the handshake, and retrying
        refused = wait_until("the page to be refused", lambda: (d := dom(page))["state"] == "disconnected" and d)
        assert refused["count"] == 0
        page.get(f"http://127.0.0.1:{port}/?token=s3cret")
        shown = wait_until("the page to connect with the token and receive",
                           lambda: (d := dom(page))["state"] == "connected" and d["count"] >= 2 and d)
        assert shown["url"] == f"ws://127.0.0.1:{port}/?\u2026"  # the token is not shown


def test_serve_page_shows_text_and_json_lines(page: Any, tmp_path: Path) -> None:
    port = free_port()
    child = Child(["serve", "--page", "--host", "127.0.0.1", "--port", str(port)], port,
                  tmp_path / "serve.log", stdin=subprocess.PIPE)
    try:
        page.get(f"http://127.0.0.1:{port}/")
        wait_until("the page to connect", lambda: dom(page)["state"] == "connected")
        assert child.proc.stdin is not None
        child.proc.stdin.write(b'plain text, not JSON\n{"price": 101.5, "nested": {"qty": 3}}\n'
                               b'{"price": 102.25, "nested": {"qty": 4}}\n7\n')
        child.proc.stdin.flush()
        shown = wait_until("4 messages", lambda: (d := dom(page))["count"] >= 4 and len(d["messages"]) >= 4 and d)
        newest_first = shown["messages"][:4]
        assert newest_first[0] == "7"
        assert json.loads(newest_first[1]) == {"price": 102.25, "nested": {"qty": 4}}
        assert newest_first[3] == "plain text, not JSON"
        assert {"price", "nested.qty", "value"} <= set(shown["charts"])
    finally:
        assert child.stop() == 0, (tmp_path / "serve.log").read_text()
    assert_no_page_errors(page)


# -- the spec's JavaScript client ---------------------------------------------------------------


def test_spec_javascript_snippets(page: Any, tmp_path: Path) -> None:
    """The spec's two snippets, verbatim in a page of their own, get parsed items.

    The page comes from another origin on loopback (a data: URL would be refused
    loopback access by Chromium's local network access checks).
    """
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    # Each snippet declares `const ws`: each runs in a script element of its own scope.
    html = f"""<!doctype html><meta charset="utf-8"><title>spec client</title>
<script>
window.logs = []; window.ui = [];
const log = console.log;
console.log = (...args) => {{ window.logs.push(args); log(...args); }};
function updateUI(data) {{ window.ui.push(data); }}
</script>
<script>{{
{SPEC_SNIPPET.replace("ws://localhost:8080", url)}
}}</script>
<script>{{
{SPEC_INTEGRATION_SNIPPET.replace("ws://localhost:8080", url)}
}}</script>"""
    with run_example(port, tmp_path / "system.log") as system, serve_html(html.encode()) as page_url:
        page.get(page_url)
        wait_until("both snippets to receive 3 items", lambda: page.execute_script(
            "return window.logs.filter((a) => a[0] === 'Received:').length >= 3 && window.ui.length >= 3"))
        logs = page.execute_script("return window.logs")
        ui = page.execute_script("return window.ui")
        assert logs[0] == ["Connected to WebSocket server"]
        received = [args[1] for args in logs if args[0] == "Received:"]
        for data in received + ui:  # JSON.parse gave objects, not strings
            assert isinstance(data, dict) and set(data) == {"id", "name", "value", "unit", "timestamp"}
            assert data["name"] in METRICS
        assert system.stop() == 0
    wait_until("onclose to run", lambda: ["WebSocket connection closed"] in page.execute_script("return window.logs"))
    assert_no_page_errors(page)
