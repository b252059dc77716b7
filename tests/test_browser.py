"""Headless Chromium loads the server's page and verifies /stream in JavaScript.

Against the fixed server the page must report every message verified and
close code 1000. Against ``direct`` the browser must drop the connection; the
close code and Chromium's own error text are recorded in the test output.
Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them); skipped without them, except under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from repro.disciplines import serve

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
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="wsrace-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # type: ignore[assignment]
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _run_page(driver, port: int, query: str, limit: float = 120) -> tuple[dict, list[str]]:
    driver.get(f"http://127.0.0.1:{port}/{query}")
    deadline = time.monotonic() + limit
    result = None
    while time.monotonic() < deadline:
        result = driver.execute_script("return window.wsraceResult")
        if result and result.get("done"):
            break
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
