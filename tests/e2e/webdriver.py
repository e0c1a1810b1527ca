"""A minimal W3C WebDriver client (the HTTP+JSON protocol chromedriver speaks), standard library only.

Why not Selenium: the few commands the end-to-end test needs fit in this file, and this way
the test depends only on Debian's `chromium` + `chromium-driver` packages (pinned together
by Debian), not on a Python package whose releases track browser versions.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from app.launch import free_port

ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"  # the W3C spec's web element identifier

# The flags the project asks for: headless, no sandbox (containers), no GPU, and no traffic of its own.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1000,1400")


def find_chromium() -> str | None:
    """The installed Chromium (Debian's `chromium`, scripts/install_browser.sh), or None: the one lookup every test
    that opens a browser uses."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class WebDriverError(RuntimeError):
    """A WebDriver command failed; the message carries the driver's error and message."""


class Element:
    def __init__(self, session: "Session", element_id: str):
        self.session, self.id = session, element_id

    def _command(self, method: str, suffix: str, body: dict | None = None) -> Any:
        return self.session.command(method, f"/element/{self.id}/{suffix}", body)

    def click(self) -> None:
        self._command("POST", "click", {})

    def clear(self) -> None:
        self._command("POST", "clear", {})

    def send_keys(self, text: str) -> None:
        self._command("POST", "value", {"text": text})

    @property
    def text(self) -> str:
        return self._command("GET", "text")

    def property(self, name: str) -> Any:
        return self._command("GET", f"property/{name}")


class Session:
    """One browser session on a running chromedriver."""

    def __init__(self, driver_url: str, capabilities: dict, timeout_s: float = 30.0):
        self.driver_url, self.timeout_s = driver_url, timeout_s
        created = self._request("POST", f"{driver_url}/session", {"capabilities": {"alwaysMatch": capabilities}})
        self.id = created["sessionId"]

    def _request(self, method: str, url: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            payload = json.loads(exc.read() or b"{}")
            value = payload.get("value", {})
            raise WebDriverError(f"{method} {url}: {value.get('error')}: {value.get('message', '')[:500]}") from None
        return payload.get("value")

    def command(self, method: str, path: str, body: dict | None = None) -> Any:
        return self._request(method, f"{self.driver_url}/session/{self.id}{path}", body)

    def get(self, url: str) -> None:
        self.command("POST", "/url", {"url": url})

    def find(self, css: str) -> Element:
        return Element(self, self.command("POST", "/element", {"using": "css selector", "value": css})[ELEMENT_KEY])

    def find_all(self, css: str) -> list[Element]:
        found = self.command("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(self, e[ELEMENT_KEY]) for e in found]

    def set_window_size(self, width: int, height: int) -> None:
        self.command("POST", "/window/rect", {"width": width, "height": height})

    def screenshot(self, path: Path) -> Path:
        """The viewport as a PNG file (the W3C command returns it base64-encoded)."""
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))
        return path

    def execute(self, script: str, *args: Any) -> Any:
        return self.command("POST", "/execute/sync", {"script": script, "args": list(args)})

    def browser_log(self) -> list[dict]:
        """The console messages since the last call ({"level", "message", ...}): chromedriver's log command, which
        the W3C protocol lacks (it needs the session's goog:loggingPrefs, as ChromeDriver.session asks)."""
        return self.command("POST", "/se/log", {"type": "browser"})

    def wait_for(self, css: str, timeout_s: float = 15.0) -> Element:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.find_all(css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise WebDriverError(f"no element {css!r} within {timeout_s} s")
            time.sleep(0.1)

    def quit(self) -> None:
        try:
            self.command("DELETE", "")
        except (WebDriverError, OSError):
            pass


class ChromeDriver:
    """chromedriver on a free loopback port; `session()` opens headless Chromium with a fresh profile."""

    def __init__(self, driver: str, browser: str, profile_dir: Path, log_path: Path):
        self.browser, self.profile_dir = browser, profile_dir
        self.port = free_port()
        self._log = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen([driver, f"--port={self.port}", "--allowed-ips=127.0.0.1"],
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until_answers(f"{self.url}/status", timeout_s=20, process=self.process, what="chromedriver")

    def session(self) -> Session:
        self.profile_dir.mkdir(parents=True, exist_ok=False)  # a new, empty profile
        options = {"binary": self.browser, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}"]}
        # the console's messages kept for Session.browser_log (a Content-Security-Policy violation is one)
        return Session(self.url, {"browserName": "chrome", "goog:chromeOptions": options,
                                  "goog:loggingPrefs": {"browser": "ALL"}})

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


def wait_until_answers(url: str, timeout_s: float, process: subprocess.Popen, what: str) -> None:
    """Poll ``url`` until it answers 200 (or fail saying why: the process died, or time ran out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout_s} s")
        time.sleep(0.2)
