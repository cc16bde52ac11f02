"""Fixtures of the browser tests: Debian's Chromium (headless, launched by path) driven by Playwright's sync API,
and a fresh browser context per test on the live stack (tests/conftest.py ``live_stack``). On a test's failure,
screenshots of the states it went through, the page's console and the bodies it sent are saved under the test's
temporary folder (``<tmp_path>/browser``); ``ATELIER_BROWSER_SHOTS=1`` saves them after every test.

Without the playwright package or Chromium the tests are skipped, unless ``ATELIER_REQUIRE_BROWSER=1`` (CI),
which makes that a failure."""
from __future__ import annotations

import os

import pytest

from support.api import KEYS, PUB
from support.browser import DESKTOP, Playground, chromium_path, launch_args


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the item (``item.rep_call``), for the fixtures' teardown to see a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


def _missing(why: str):
    """Skip the browser tests on a machine without a browser; fail them where one is required (CI)."""
    if os.environ.get("ATELIER_REQUIRE_BROWSER") == "1":
        pytest.fail(f"ATELIER_REQUIRE_BROWSER=1: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module. Not for the whole session: Playwright's sync API keeps an event
    loop running in this thread while it is started, and later tests call asyncio.run()."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the browser tests need the playwright package (pip install playwright; no browser download)")
    path = chromium_path()
    if not path:
        _missing("the browser tests need Chromium (apt-get install chromium) at /usr/bin/chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=launch_args())
        yield b
        b.close()


def _page(browser, live_stack, request, tmp_path, viewport):
    context = browser.new_context(viewport=viewport, accept_downloads=True)
    context.set_default_timeout(30_000)
    ui = Playground(context.new_page(), live_stack.url)
    yield ui
    failed = any(getattr(request.node, f"rep_{w}", None) and getattr(request.node, f"rep_{w}").failed
                 for w in ("setup", "call"))
    if failed or os.environ.get("ATELIER_BROWSER_SHOTS") == "1":
        paths = ui.save_failure(tmp_path / "browser")
        print(f"browser screenshots: {paths[0].parent if paths else tmp_path}")
    context.close()
    if not failed:
        ui.assert_clean()


@pytest.fixture()
def fresh(browser, live_stack, request, tmp_path):
    """The playground opened at the service's address (1280x800), no keys entered yet."""
    yield from _page(browser, live_stack, request, tmp_path, DESKTOP)


@pytest.fixture()
def ui(fresh):
    """The playground with alice's keys entered and the deployment's models listed."""
    fresh.open()
    fresh.enter_keys(PUB["pk-alice"], KEYS["pk-alice"])
    fresh.wait_connected()
    return fresh


@pytest.fixture()
def phone(browser, live_stack, request, tmp_path):
    """The playground on a phone-sized screen (390x844)."""
    yield from _page(browser, live_stack, request, tmp_path, {"width": 390, "height": 844})
