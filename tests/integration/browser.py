"""A small headless-Chromium harness for page tests (Selenium 4 over Debian's `chromium` and
`chromium-driver`).

The driver binary is passed explicitly through a Selenium `Service`, so Selenium Manager never
looks for (or downloads) a browser or driver. The harness records two kinds of page errors:

* console messages at level SEVERE (`goog:loggingPrefs`), which include uncaught exceptions and
  failed resource loads;
* uncaught errors and unhandled promise rejections caught by a listener that is installed before
  any page script runs (CDP `Page.addScriptToEvaluateOnNewDocument`), read back from
  `window.__browserErrors`.

Usage in a test::

    def test_page(browser, stack):
        browser.open("https://127.0.0.1:18090/")   # conftest.METRICS_URL
        browser.wait_for("document.querySelectorAll('[data-points]').length > 0", timeout=60)
        browser.screenshot("dashboard.png")      # -> build/test-artifacts/dashboard.png
        assert browser.errors() == []

Environment overrides: HEMAFED_CHROMIUM (browser binary), HEMAFED_CHROMEDRIVER (driver binary),
HEMAFED_ARTIFACTS (artifact folder; default build/test-artifacts).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("HEMAFED_ARTIFACTS", ROOT / "build" / "test-artifacts"))

_CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
_DRIVER_CANDIDATES = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")

#: installed before any page script: records uncaught errors and unhandled rejections
_ERROR_HOOK = """
(function () {
  if (window.__browserErrors) return;
  window.__browserErrors = [];
  window.addEventListener('error', function (e) {
    var where = e.filename ? (' (' + e.filename + ':' + e.lineno + ')') : '';
    var what = e.message || (e.target && (e.target.src || e.target.href)
                             ? 'failed to load ' + (e.target.src || e.target.href) : 'error');
    window.__browserErrors.push(String(what) + where);
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    var r = e.reason;
    window.__browserErrors.push('unhandled rejection: ' + (r && (r.stack || r.message) || String(r)));
  });
})();
"""


def find_chromium() -> tuple[str, str] | None:
    """(browser binary, driver binary), or None when either is missing."""
    browser = os.environ.get("HEMAFED_CHROMIUM") or next(
        (p for p in map(shutil.which, _CHROMIUM_CANDIDATES) if p), None)
    driver = os.environ.get("HEMAFED_CHROMEDRIVER") or shutil.which("chromedriver") or next(
        (p for p in _DRIVER_CANDIDATES if Path(p).exists()), None)
    if not browser or not driver or not Path(browser).exists() or not Path(driver).exists():
        return None
    return browser, driver


class BrowserError(AssertionError):
    pass


class Browser:
    """Headless Chromium with error collection, `wait_for` and `screenshot`."""

    def __init__(self, *, width: int = 1440, height: int = 1000, browser_binary: str | None = None,
                 driver_binary: str | None = None, accept_insecure_certs: bool = True) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        found = find_chromium()
        if browser_binary is None or driver_binary is None:
            if found is None:
                raise RuntimeError("chromium / chromedriver not found (apt-get install chromium chromium-driver)")
            browser_binary = browser_binary or found[0]
            driver_binary = driver_binary or found[1]
        options = webdriver.ChromeOptions()
        options.binary_location = browser_binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--metrics-recording-only", "--mute-audio",
                    f"--window-size={width},{height}", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # the test stack serves HTTPS with its own private CA (`make certs`), unknown to Chromium's
        # trust store; a test browser accepts it (the CA is checked by the API tests instead)
        options.accept_insecure_certs = accept_insecure_certs
        # the stack serves HTTPS with its own private CA (`make certs`), which this throw-away profile does not know
        options.accept_insecure_certs = True
        service = Service(executable_path=driver_binary)
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(60)
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _ERROR_HOOK})
        self.console: list[dict[str, Any]] = []

    # --- navigation and scripting -------------------------------------------------------
    def open(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        """Run `script` as a function body (use `return ...` to get a value)."""
        return self.driver.execute_script(script, *args)

    def eval(self, expression: str) -> Any:
        return self.driver.execute_script(f"return ({expression});")

    def wait_for(self, condition: str, timeout: float = 30.0, interval: float = 0.25,
                 message: str | None = None) -> Any:
        """Poll the JS expression `condition` until it is truthy; return its value.

        Raises BrowserError with the last value, the page errors and the page title on timeout.
        A JS exception inside the condition counts as "not yet" (the page may still be loading).
        """
        deadline = time.monotonic() + timeout
        last: Any = None
        last_exc: str | None = None
        while True:
            try:
                last = self.eval(condition)
                last_exc = None
                if last:
                    return last
            except Exception as exc:  # noqa: BLE001 - page not ready; retried until the deadline
                last_exc = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if time.monotonic() >= deadline:
                raise BrowserError(
                    f"{message or 'condition'} not met within {timeout:.0f} s: {condition!r}; last value "
                    f"{last!r}{'; last exception ' + last_exc if last_exc else ''}; page errors "
                    f"{self.errors()}; title {self.driver.title!r}")
            time.sleep(interval)

    # --- errors -------------------------------------------------------------------------
    def console_log(self) -> list[dict[str, Any]]:
        """All console entries so far (the driver hands each entry out once; we keep them)."""
        try:
            self.console.extend(self.driver.get_log("browser"))
        except Exception:  # noqa: BLE001 - logging not supported by this driver
            pass
        return list(self.console)

    def errors(self, ignore: tuple[str, ...] = ("favicon.ico",), network: bool = True) -> list[str]:
        """SEVERE console messages and uncaught page errors (deduplicated, in order).

        With ``network=False`` the browser's own "Failed to load resource" lines (an HTTP 4xx/5xx
        answer to a fetch the page handles, e.g. a 404 for an unknown run) are left out."""
        found: list[str] = []
        for entry in self.console_log():
            if entry.get("level") == "SEVERE":
                msg = str(entry.get("message", ""))
                if not network and "Failed to load resource" in msg:
                    continue
                found.append(msg)
        try:
            page = self.driver.execute_script("return window.__browserErrors || [];") or []
        except Exception:  # noqa: BLE001 - page gone
            page = []
        found.extend(str(p) for p in page)
        out: list[str] = []
        for msg in found:
            if msg not in out and not any(s in msg for s in ignore):
                out.append(msg)
        return out

    def assert_no_errors(self, ignore: tuple[str, ...] = ("favicon.ico",), network: bool = True) -> None:
        errs = self.errors(ignore, network=network)
        if errs:
            raise BrowserError("the page logged JavaScript errors:\n  " + "\n  ".join(errs))

    # --- artifacts ----------------------------------------------------------------------
    def screenshot(self, path: str | Path, full_page: bool = True) -> Path:
        """Save a PNG; a relative path goes under build/test-artifacts/. With full_page the
        window is resized to the document height first (headless Chromium)."""
        path = Path(path)
        if not path.is_absolute():
            path = ARTIFACTS / path
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            size = self.driver.get_window_size()
            height = int(self.eval("Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
                         or size["height"])
            self.driver.set_window_size(size["width"], min(max(height, 600), 8000))
            try:
                self.driver.save_screenshot(str(path))
            finally:
                self.driver.set_window_size(size["width"], size["height"])
        else:
            self.driver.save_screenshot(str(path))
        return path

    def save_console(self, path: str | Path) -> Path:
        path = Path(path)
        if not path.is_absolute():
            path = ARTIFACTS / path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"console": self.console_log(), "errors": self.errors()}, indent=2))
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit()


@pytest.fixture
def browser(request):
    """A fresh headless Chromium per test; skipped when chromium/chromedriver are missing.
    On failure the screenshot and console log are saved as <test name>-failure.* artifacts."""
    if find_chromium() is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; "
                    "`make test` installs them)")
    b = Browser()
    yield b
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        name = request.node.name.replace("/", "_")
        try:
            b.screenshot(f"{name}-failure.png")
            b.save_console(f"{name}-failure-console.json")
        except Exception:  # noqa: BLE001 - best effort
            pass
    b.quit()
