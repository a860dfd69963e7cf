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


# -- topics (issue 15) ----------------------------------------------------------------------------


class CuttableProxy:
    """A TCP relay on loopback whose connections can be cut (a train tunnel) and refused until resumed."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.accepted = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=TIMEOUT)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self._lock:
                self._socks += [down, up]
                self.accepted += 1
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection abruptly (no CLOSE frame) and refuse new ones."""
        self.open = False
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:  # shutdown wakes the pumps blocked in recv(); neither side gets a CLOSE frame
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def resume(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
        self._thread.join(TIMEOUT)


def page_state(driver: Any) -> dict[str, Any]:
    return driver.execute_script("""
        const p = window.fastwsPage;
        return {state: p.state, received: p.received, reconnects: p.reconnects, perTopic: p.perTopic,
                events: p.events, wsUrl: p.wsUrl, topics: p.topics,
                rows: [...document.querySelectorAll('#topic-rows tr')].map(
                    (r) => [...r.children].map((td) => td.textContent)),
                log: [...document.querySelectorAll('#recoveries li')].map((li) => li.dataset.kind)};
    """)


def test_dashboard_page_topics_counts_and_resume_after_a_drop(page: Any, tmp_path: Path) -> None:
    """The page subscribes to chosen topics, counts per topic, and after a dropped connection
    resumes with since/epoch: every missed message arrives once, in order, and the recovery shows."""
    from websockets.sync.client import connect

    port = free_port()
    child = Child(["serve", "--page", "--host", "127.0.0.1", "--port", str(port), "--topic-field", "topic",
                   "--history-size", "100"], port, tmp_path / "serve.log", stdin=subprocess.PIPE)
    proxy = CuttableProxy(port)
    assert child.proc.stdin is not None
    stdin = child.proc.stdin
    sent: dict[str, int] = {"a": 0, "b": 0, "c": 0, "": 0}

    def publish(topic: str, n: int) -> None:
        for _ in range(n):
            sent[topic] += 1
            item = {"topic": topic, "value": sent[topic]} if topic else {"value": sent[topic]}
            stdin.write((json.dumps(item) + "\n").encode())
        stdin.flush()

    try:
        # an observer that sees every published message (so the test knows they went out)
        with connect(f"ws://127.0.0.1:{port}/?topics=a,b,c&format=envelope", open_timeout=TIMEOUT) as observer:
            def observe(n: int) -> list[Any]:
                got = []
                while len(got) < n:
                    m = json.loads(observer.recv(timeout=TIMEOUT))
                    if "data" in m:
                        got.append(m)
                return got

            page.get(f"http://127.0.0.1:{port}/?url=ws://127.0.0.1:{proxy.port}/&topics=a,b")
            wait_until("the page to subscribe to a and b", lambda: {
                e.get("topic") for e in page_state(page)["events"] if e["type"] == "subscribed"} >= {"a", "b"})
            state = page_state(page)
            assert state["state"] == "connected" and state["topics"] == ["a", "b"]
            assert "topics=a,b&format=envelope" in state["wsUrl"] and "since=" not in state["wsUrl"]

            publish("a", 5), publish("b", 3), publish("c", 2), publish("", 1)
            observe(11)
            wait_until("the page to count 5 a, 3 b, 1 without a topic", lambda: (
                (p := page_state(page)["perTopic"]).get("a", {}).get("count") == 5
                and p.get("b", {}).get("count") == 3 and p.get("", {}).get("count") == 1))
            assert "c" not in page_state(page)["perTopic"]  # not subscribed: never received

            proxy.cut()  # the tunnel: the page's connection drops, and reconnecting fails for now
            wait_until("the page to see the drop", lambda: page_state(page)["state"] != "connected")
            publish("a", 4), publish("b", 2)  # missed by the page
            observe(6)
            proxy.resume()
            resumed = wait_until("the page to resume and recover a and b", lambda: (
                (p := page_state(page))["state"] == "connected"
                and [e for e in p["events"] if e["type"] == "subscribed" and e.get("recovered") is True]
                and p["perTopic"]["a"]["count"] == 9 and p["perTopic"]["b"]["count"] == 5 and p), timeout=3 * TIMEOUT)
            assert "since=a:5,b:3&epoch=" in resumed["wsUrl"]
            recoveries = [e for e in resumed["events"] if e["type"] == "subscribed" and "recovered" in e]
            assert {(e["topic"], e["recovered"]) for e in recoveries} == {("a", True), ("b", True)}
            for topic, offset in (("a", 9), ("b", 5)):
                t = resumed["perTopic"][topic]
                assert (t["offset"], t["gaps"], t["dups"]) == (offset, 0, 0), (topic, t)
            assert resumed["reconnects"] >= 1
            # the table is redrawn on the page's own schedule: wait for it to show the counts
            rows = wait_until("the table to show 9 on a and 5 on b", lambda: (
                (r := page_state(page)["rows"])[:2] and ["a", "9", "9"] == r[0][:3]
                and ["b", "5", "5"] == r[1][:3] and r))
            assert rows
            assert "recovered" in resumed["log"]
            # the newest messages shown are the items themselves (the envelope's data)
            newest = json.loads(dom(page)["messages"][0])
            assert newest == {"topic": "b", "value": 5}

            # another topic through the field: a new connection with ?topics=c
            field = page.find_element("id", "topics")
            field.clear()
            field.send_keys("c")
            page.find_element("css selector", "#topics-form button").click()
            wait_until("the page to subscribe to c", lambda: any(
                e.get("topic") == "c" for e in page_state(page)["events"] if e["type"] == "subscribed"))
            publish("c", 1)
            observe(1)
            wait_until("the page to count c", lambda: page_state(page)["perTopic"].get("c", {}).get("count") == 1)
            state = page_state(page)
            assert "topics=c&format=envelope" in state["wsUrl"] and set(state["perTopic"]) <= {"c", ""}
            assert "topics=c" in page.current_url  # a reload keeps the choice
    finally:
        proxy.close()
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


def test_dashboard_page_resumes_on_another_node_from_the_redis_history(page: Any, tmp_path: Path) -> None:
    """Issue 15: the page is on node A, the connection drops, it comes back through the same
    address to node B (another process sharing a Redis history) and recovers with no gap."""
    import uuid

    from websockets.sync.client import connect

    shared = ["--topic-field", "topic", "--history-size", "100", "--backplane", "redis://127.0.0.1:6379/0",
              "--backplane-channel", f"fastws-test-{uuid.uuid4().hex[:12]}"]
    port_a, port_b = free_port(), free_port()
    node_a = Child(["serve", "--page", "--host", "127.0.0.1", "--port", str(port_a), *shared], port_a,
                   tmp_path / "a.log", stdin=subprocess.PIPE)
    node_b = Child(["serve", "--page", "--host", "127.0.0.1", "--port", str(port_b), *shared], port_b, tmp_path / "b.log")
    proxy = CuttableProxy(port_a)
    assert node_a.proc.stdin is not None
    stdin = node_a.proc.stdin
    sent = 0

    def publish(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            sent += 1
            stdin.write((json.dumps({"topic": "a", "value": sent}) + "\n").encode())
        stdin.flush()

    try:
        # an observer on node B: what it gets went through Redis (numbered, in the history)
        with connect(f"ws://127.0.0.1:{port_b}/?topics=a&format=envelope", open_timeout=TIMEOUT) as observer:
            def observe(n: int) -> list[Any]:
                got: list[Any] = []
                while len(got) < n:
                    m = json.loads(observer.recv(timeout=TIMEOUT))
                    if "data" in m:
                        got.append(m)
                return got

            page.get(f"http://127.0.0.1:{port_a}/?url=ws://127.0.0.1:{proxy.port}/&topics=a")
            wait_until("the page to connect", lambda: page_state(page)["state"] == "connected")
            publish(3)
            observe(3)
            wait_until("the page to count 3 on a", lambda: page_state(page)["perTopic"].get("a", {}).get("count") == 3)

            proxy.cut()
            wait_until("the page to see the drop", lambda: page_state(page)["state"] != "connected")
            publish(4)  # missed by the page
            observe(4)
            proxy.upstream = port_b  # the same address now leads to node B
            proxy.resume()
            resumed = wait_until("the page to recover on node B", lambda: (
                (p := page_state(page))["state"] == "connected"
                and any(e["type"] == "subscribed" and e.get("recovered") is True for e in p["events"])
                and p["perTopic"]["a"]["count"] == 7 and p), timeout=3 * TIMEOUT)
            assert "since=a:3&epoch=" in resumed["wsUrl"]
            t = resumed["perTopic"]["a"]
            assert (t["offset"], t["gaps"], t["dups"]) == (7, 0, 0), t
            publish(1)  # live again, through node B
            observe(1)
            wait_until("the page to count the live message", lambda: page_state(page)["perTopic"]["a"]["count"] == 8)
            assert page_state(page)["perTopic"]["a"]["gaps"] == 0
    finally:
        proxy.close()
        assert node_a.stop() == 0, (tmp_path / "a.log").read_text()
        assert node_b.stop() == 0, (tmp_path / "b.log").read_text()
    assert_no_page_errors(page)
