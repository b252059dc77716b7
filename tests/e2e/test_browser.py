"""Headless Chromium loads the server's page and verifies /stream in JavaScript.

Against the fixed server the page must report every message verified and
close code 1000. Against ``direct`` the browser must drop the connection; the
close code and Chromium's own error text are recorded in the test output.
Both again over wss://, the page loaded over https:// from a TLS server
(Chromium trusts exactly the throwaway server key, by its SPKI hash).
Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); skipped without them, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from repro.disciplines import serve
from repro.server_proc import ServerOutcome, ServerProcess

from ..tls import TLSFiles

pytestmark = [pytest.mark.timeout(180), pytest.mark.browser]

CHROMIUM = "/usr/lib/chromium/chromium" if os.path.exists("/usr/lib/chromium/chromium") else shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")


def _require_browser() -> None:
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not path]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[object]:
    yield from _chromium()


@pytest.fixture
def tls_browser(tls_files: TLSFiles) -> Iterator[object]:
    """Chromium that accepts exactly our throwaway server key (by its SPKI hash), not any certificate."""
    yield from _chromium(f"--ignore-certificate-errors-spki-list={_spki_sha256(tls_files.cert)}")


def _spki_sha256(cert_pem: Path) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in ``cert_pem``: what Chromium's flag takes."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _chromium(*extra_flags: str) -> Iterator[object]:
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wsrace-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _run_page(driver, port: int, query: str, limit: float = 120, scheme: str = "http",
              on_stall: Callable[[], object] | None = None, stall: float = 20) -> tuple[dict, list[str]]:
    """Load the page and wait for its verdict; ``on_stall`` runs once if nothing arrives for ``stall`` seconds."""
    driver.get(f"{scheme}://127.0.0.1:{port}/{query}")
    deadline = time.monotonic() + limit
    result = None
    progress, last_progress = None, time.monotonic()
    while time.monotonic() < deadline:
        result = driver.execute_script("return window.wsraceResult")
        if result and result.get("done"):
            break
        if on_stall is not None:
            now = time.monotonic()
            if (result or {}).get("bytes") != progress:
                progress, last_progress = (result or {}).get("bytes"), now
            elif now - last_progress > stall:
                on_stall()
                on_stall = None
        time.sleep(0.2)
    logs = [entry["message"] for entry in driver.get_log("browser")]
    assert result and result.get("done"), f"page did not finish in {limit} s: {result}"
    return result, logs


def test_page_verifies_the_fixed_server_stream(browser) -> None:
    with serve("queued") as served:
        result, logs = _run_page(browser, served.port, "?producers=8&count=500&size=16&maxsize=65536")
    print("chromium (fixed server):", json.dumps(result))
    assert result["verified"], (result, logs)
    assert result["received"] == result["expected"] == 4000
    assert result["failures"] == 0
    assert result["close_code"] == 1000


def test_page_over_https_verifies_the_fixed_server_stream_over_wss(tls_browser, tls_files: TLSFiles) -> None:
    with serve("queued", ssl_context=tls_files.server_context()) as served:
        result, logs = _run_page(tls_browser, served.port, "?producers=8&count=250&size=16&maxsize=65536", scheme="https")
        assert tls_browser.current_url.startswith(f"https://127.0.0.1:{served.port}/"), tls_browser.current_url
        assert tls_browser.execute_script("return document.getElementById('target').textContent").startswith("wss://")
    print("chromium (fixed server over wss):", json.dumps(result))
    assert result["verified"], (result, logs)
    assert result["received"] == result["expected"] == 2000
    assert result["failures"] == 0
    assert result["close_code"] == 1000


def test_browser_drops_the_direct_server(browser) -> None:
    with serve("direct", sndbuf=16 * 1024, ping_interval=0.002) as served:
        result, logs = _run_page(browser, served.port, "?producers=8&count=100&size=262144")
    errors = [line for line in logs if "WebSocket" in line and "WSRACE-RESULT" not in line]
    print("chromium (direct): close code", result["close_code"], "| failures", result["failures"],
          "| browser said:", errors[:2])
    assert not result["verified"]
    # Chromium fails the connection on a bad frame (1006 to the page) or the page finds a bad CRC.
    assert result["close_code"] == 1006 or result["failures"] > 0, result
    if result["close_code"] == 1006:
        assert errors, f"Chromium gave no error text: {logs}"


def test_browser_drops_the_direct_server_over_wss(tls_browser, tls_files: TLSFiles) -> None:
    """Over TLS the worker threads' writes break the SSL object too: the server may drop the connection itself
    (``SSL: BAD_LENGTH``) or crash, so it runs in a child process, and Chromium's error text is not required here,
    only that the page is not verified."""
    server = ServerProcess("direct", tls_files.cert, tls_files.key, sndbuf=16 * 1024)
    port = server.start()
    outcome: list[ServerOutcome] = []

    def stop_the_hung_server() -> None:
        # The race can also leave the SSL object waiting forever (a HUNG row of make repro): what the user
        # sees then is a page that stops; stopping the server ends the connection, and the page says so.
        outcome.append(server.stop())

    try:
        result, logs = _run_page(tls_browser, port, "?producers=8&count=100&size=262144", scheme="https",
                                 on_stall=stop_the_hung_server)
    finally:
        died = outcome[0] if outcome else server.stop()
    errors = [line for line in logs if "WebSocket" in line and "WSRACE-RESULT" not in line]
    print("chromium (direct over wss): close code", result["close_code"], "| failures", result["failures"],
          "| received", result["received"], "| browser said:", errors[:2], "| server:", died.exit, died.fatal or died.errors,
          "| stopped while stalled" if outcome else "")
    assert not result["verified"]
    assert result["close_code"] == 1006 or result["failures"] > 0, result


def test_live_page_draws_the_server_metrics(browser) -> None:
    """The page's charts: fed over /live once a second, drawn on canvases, no console errors; a screenshot is kept."""
    from ..helpers import ROOT

    browser.set_window_size(1100, 1000)
    with serve("queued") as served:
        # The feed's first point is the change since its first sample: load the page after that sample.
        assert wait_for(lambda: served.server.sampler.latest.at > 0, 10)  # type: ignore[attr-defined]
        browser.get(f"http://127.0.0.1:{served.port}/?producers=4&count=5000&size=1024")
        deadline = time.monotonic() + 30
        live: dict = {}
        while time.monotonic() < deadline:
            live = browser.execute_script("return window.wsraceLive") or {}
            if live.get("samples", 0) >= 4 and any(p["out_per_s"] > 1000 for p in live.get("points", [])):
                break
            time.sleep(0.2)
        first_t = live["points"][-1]["t"]
        assert wait_for(lambda: browser.execute_script("return window.wsraceLive.points.at(-1).t") > first_t, 5)
        # Ink of the "out" series' colour (#1565c0) on the rate chart: the line was drawn, not just the axes.
        ink = browser.execute_script("""
            const c = document.getElementById('c-rate'), g = c.getContext('2d');
            const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4)
              if (Math.abs(d[i] - 0x15) < 40 && Math.abs(d[i + 1] - 0x65) < 40 && Math.abs(d[i + 2] - 0xc0) < 40 && d[i + 3] > 0) n++;
            return n;""")
        state = browser.execute_script("return document.getElementById('live-state').textContent")
        shot = Path(ROOT) / "reports" / "live-page.png"
        shot.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(shot))
        logs = browser.get_log("browser")
    print("live page:", live.get("samples"), "samples,", ink, "pixels of the out-rate line; screenshot", shot)
    assert live["samples"] >= 4 and live["errors"] == 0 and live["drawn"] >= 4, live
    assert any(p["out_per_s"] > 1000 for p in live["points"]), live["points"]  # the page's own /stream: 20,000 messages
    assert ink > 50, ink
    assert state == "live"
    assert shot.stat().st_size > 10_000
    severe = [entry for entry in logs if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_the_page_feed_resumes_after_closes_and_starts_over_after_a_restart(browser) -> None:
    """The page's reference resume loop in Chromium: cut off three times (1012, 1001, 1013) while a thread
    publishes, it shows every message once, in order; after the process restarts (memory://: a new epoch)
    its position is refused with 4410 and it starts over."""
    from server import Server
    from server.demo.app import DemoApp

    def feed() -> dict:
        return browser.execute_script("return window.wsraceFeed")

    srv = Server(DemoApp, host="127.0.0.1", port=0).start()
    port = srv.port
    try:
        browser.get(f"http://127.0.0.1:{port}/?topic=page&producers=1&count=1")
        assert wait_for(lambda: feed()["position"] is not None, 20), feed()
        count = 300

        def publish() -> None:
            for i in range(count):
                srv.publish(f"m{i}", "page")
                time.sleep(0.005)

        publisher = threading.Thread(target=publish)
        publisher.start()
        for cut, code in enumerate((1012, 1001, 1013)):
            assert wait_for(lambda: len(srv.subscribers("page")) == 1 and feed()["reconnects"] == cut, 20), feed()  # noqa: B023
            seen = len(feed()["messages"])
            assert wait_for(lambda: len(feed()["messages"]) > seen, 20) or not publisher.is_alive()  # noqa: B023
            for conn in srv.subscribers("page"):
                conn.close(code, "cut by the test")
        publisher.join(30)
        srv.publish(b"\x00\xff binary", "page")  # its position counts like any other
        assert wait_for(lambda: len(feed()["messages"]) >= count + 1, 30), len(feed()["messages"])
        state = feed()
        assert state["messages"] == [*(f"m{i}" for i in range(count)), "(9 bytes)"], "every message once, in order"
        assert state["position"].endswith(f".{count + 1}"), state["position"]
        assert state["closes"][:3] == [1012, 1001, 1013] and state["startOvers"] == 0, state["closes"]
    finally:
        assert srv.shutdown(timeout=10)
    srv = Server(DemoApp, host="127.0.0.1", port=port).start()  # restarted: a new history, a new epoch
    try:
        assert wait_for(lambda: feed()["startOvers"] == 1, 30), feed()["closes"]
        assert wait_for(lambda: len(srv.subscribers("page")) == 1, 20), feed()["closes"]
        srv.publish("after the restart", "page")
        assert wait_for(lambda: feed()["messages"][-1] == "after the restart", 20), feed()["messages"][-3:]
        assert feed()["closes"][3:] == [1001, 4410], feed()["closes"]
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        assert srv.shutdown(timeout=10)
    print("page feed closes:", feed()["closes"])
    assert not severe, severe


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
