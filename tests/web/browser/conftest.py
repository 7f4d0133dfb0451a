"""The console in a real browser: Debian's headless Chromium driven by Playwright.

One browser per test session (``browser``); every test gets a fresh context
and page (``console``) that records what the browser saw:

- console messages of type ``error`` and uncaught page errors (a
  Content-Security-Policy violation is reported there), which a test asserts
  are none (:meth:`Console.assert_clean`);
- the URL of every request the page made, which must all go to 127.0.0.1:
  the proof that the console works offline. The browser also runs with
  :data:`HERMETIC`, so Chromium resolves no host name at all (not even its
  own background services) and any other address fails to load.

Screenshots go to ``$FLEETWARD_SCREENSHOTS`` or ``<repo>/.artifacts/console/``,
named by test and page. The live server is the ``planes``/``live`` fixture of
tests/conftest.py; a page (and its event stream) is closed before the server
stops, since uvicorn's graceful shutdown waits for open streams.

Playwright runs on the system browser (``executable_path``): nothing is
downloaded, and the tests skip when ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
HERMETIC = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
"""Resolve no name but 127.0.0.1: no request, not even Chromium's own, leaves the machine."""
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
TIMEOUT_MS = 10_000  # Playwright's wait for any one element or navigation
SHOTS = Path(
    os.environ.get("FLEETWARD_SCREENSHOTS")
    or Path(__file__).resolve().parents[3] / ".artifacts" / "console"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "browser: drives the console in headless Chromium (/usr/bin/chromium)"
    )


def local(url: str) -> bool:
    """Whether a request stays on this machine (127.0.0.1, or no network at all)."""
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname == "127.0.0.1"


@dataclass
class Console:
    """One browser page of a test, with what it recorded."""

    page: Page
    context: BrowserContext
    base: str
    test: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)

    def goto(self, path: str) -> None:
        """Open ``path`` of the live server and wait for it to load."""
        response = self.page.goto(self.base + path)
        assert response is not None, path

    def sign_in(self, token: str, *, next_path: str = "/") -> None:
        """Sign in through the form, as a person would: type the token, press the button."""
        self.goto("/login" if next_path == "/" else f"/login?next={next_path}")
        self.page.get_by_label("API token").fill(token)
        with self.page.expect_navigation():
            self.page.get_by_role("button", name="Sign in").click()
        if urlsplit(self.page.url).path == "/login":
            refusal = self.page.locator("p.problem")
            said = refusal.inner_text() if refusal.count() else "no message"
            raise AssertionError(f"the sign-in form was refused: {said}")
        self.page.wait_for_url(self.base + next_path)

    def shot(self, name: str) -> Path:
        """Save a full-page screenshot named by the test and ``name``."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "root"
        path = SHOTS / f"{self.test}--{safe}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def assert_clean(self) -> None:
        """No console error, no page error, and no request that left 127.0.0.1."""
        assert self.errors == [], self.errors
        outside = [u for u in self.requests if not local(u)]
        assert outside == [], outside
        assert self.requests, "the page made no request at all"


@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    """Playwright's driver, per module (skips without the system Chromium).

    Not per session: while the sync API's driver runs, its event loop stays
    the thread's running loop between calls, and any later test calling
    ``asyncio.run`` fails with "cannot be called from a running event loop".
    The browser tests are one module, so this is still one browser per run."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_driver: Playwright) -> Iterator[Browser]:
    """One headless Chromium per module: the system browser, resolving no name."""
    b = playwright_driver.chromium.launch(executable_path=str(CHROMIUM), args=[HERMETIC])
    yield b
    b.close()


@pytest.fixture
def console(browser: Browser, live: str, request: pytest.FixtureRequest) -> Iterator[Console]:
    """A fresh browser context (own cookies) and page on the live server at
    1280x800. Requested after ``live``, so it closes (with its event stream)
    before the server stops."""
    context = browser.new_context(viewport=WIDE)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    c = Console(page=page, context=context, base=live, test=name)

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            c.errors.append(f"console: {msg.text} @ {page.url}")

    def on_request(req: Request) -> None:
        c.requests.append(req.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: c.errors.append(f"pageerror: {exc} @ {page.url}"))
    context.on("request", on_request)  # every page of the context, popups included
    yield c
    context.close()
