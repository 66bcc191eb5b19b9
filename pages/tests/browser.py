"""The browser tests' parts, registered for every test module (root ``conftest.py``, ``pytest_plugins``):
one headless Chromium for the session (Debian's, driven by Playwright), a live site with the personas'
world and three days of readings, and ``visitors`` (logged-in people with a desktop and a phone tab).

Every page a visitor opens runs under the site's Content-Security-Policy: a JavaScript error or a CSP
violation seen in any of them fails the test at teardown.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from accounts.tests.personas import build_world
from collection.services import SampleBatch, ingest_samples
from conftest import REPO, service_unavailable
from pages.status import now_us

CHROMIUM = os.environ.get("DAQBROKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
PASSWORD = "a sensible passphrase 42"
MINUTE_US = 60_000_000


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_unavailable("the browser tests need Playwright's Python package (pip install -r requirements-dev.txt)")
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        service_unavailable(f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    # Playwright's sync API keeps an event loop running in this thread; the ORM calls the tests make
    # in between are ordinary synchronous calls, so Django's async-safety guard does not apply.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


class Visitor:
    """One logged-in person with a desktop tab and a phone tab (for the phone-width screenshots)."""

    def __init__(self, browser, base_url: str, username: str):
        self.base = base_url
        self.username = username
        self.errors: list[str] = []
        self.csp_violations: list[str] = []
        self.desktop = self._context(browser, DESKTOP)
        self.phone = self._context(browser, PHONE)

    def _context(self, browser, viewport):
        context = browser.new_context(viewport=viewport, base_url=self.base)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        watch_csp(context, page, self.csp_violations)
        return page

    def log_in(self, password: str = PASSWORD) -> None:
        for page in (self.desktop, self.phone):
            page.goto("/login/")
            page.fill("#id_username", self.username)
            page.fill("#id_password", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/login/" not in url)

    def open(self, path: str, page=None):
        page = page or self.desktop
        response = page.goto(path)
        wait_until_drawn(page)
        return response

    def shoot(self, name: str, path: str | None = None) -> None:
        """Desktop and phone screenshots of ``path`` (default: where the desktop tab is)."""
        path = path or self.desktop.url.removeprefix(self.base)
        wait_until_drawn(self.desktop)
        self.desktop.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
        self.open(path, self.phone)
        self.phone.screenshot(path=str(SCREENSHOTS / f"{name}-phone.png"), full_page=True)

    def close(self) -> None:
        self.desktop.context.close()
        self.phone.context.close()


# Every page the browser tests open runs under the site's Content-Security-Policy; any violation (an inline
# script or handler, eval, a style or image from elsewhere) fails the test that opened it.
CSP_LISTENER = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"} on ${location.pathname}`);
});
"""


def watch_csp(context, page, violations: list[str]) -> None:
    context.add_init_script(CSP_LISTENER)

    def on_console(message) -> None:
        text = message.text
        if "CSP violation" in text or "Content Security Policy" in text:
            violations.append(text)

    page.on("console", on_console)


def wait_until_drawn(page) -> None:
    """Every plot on the page has drawn at least once (pages without plots are ready at load)."""
    page.wait_for_load_state("load")
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('.daq-panel')).every(p => Number(p.dataset.drawCount || 0) > 0)"
    )


def draws(page, plot: str = "#main-plot") -> int:
    """How many times a plot (by default the plot page's main plot; a dashboard's: its ``.daq-panel``) has
    drawn so far."""
    return int(page.evaluate(f"() => Number(document.querySelector({plot!r}).dataset.drawCount)"))


def drawn_again(page, before: int, plot: str = "#main-plot") -> None:
    """The plot drew since ``before`` (``draws`` read before the action) with no load left running: a
    redraw of the previous answer does not count while the load the action started is on its way."""
    page.wait_for_function(
        f"() => {{ const root = document.querySelector({plot!r});"
        f" return Number(root.dataset.drawCount) > {before} && !root.dataset.loading; }}"
    )


def ingest(channel, stamps, values) -> None:
    ingest_samples(SampleBatch(channel=[channel.pk] * len(stamps), ts=stamps, value=values))


@pytest.fixture
def site(live_server):
    """The personas' world with passwords, three days of minute readings on alpha with one spike."""
    world = build_world()
    for name in ("olivia", "vera", "stan", "zed"):
        user = world.users[name]
        user.set_password(PASSWORD)
        user.save()
    channel = world.alpha_channel
    channel.expected_interval_seconds = 60
    channel.save()
    end = now_us() - 5_000_000
    stamps = [end - (3 * 1440 - 1 - i) * MINUTE_US for i in range(3 * 1440)]
    values = [20.0 + 5.0 * ((i % 720) / 720.0) for i in range(len(stamps))]
    values[2000] = 95.0  # a one-reading spike: the envelope must keep it at every zoom level
    ingest(channel, stamps, values)
    world.readings = len(stamps)
    world.spike_ts = stamps[2000]
    return world


@pytest.fixture
def visitors(browser, live_server):
    opened: list[Visitor] = []

    def visit(username: str) -> Visitor:
        visitor = Visitor(browser, live_server.url, username)
        opened.append(visitor)
        return visitor

    yield visit
    for visitor in opened:
        visitor.close()
    errors = [e for v in opened for e in v.errors]
    assert errors == [], f"JavaScript errors: {errors}"
    violations = [e for v in opened for e in v.csp_violations]
    assert violations == [], f"Content-Security-Policy violations: {violations}"
