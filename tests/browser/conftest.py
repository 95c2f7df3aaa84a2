"""Browser tests: Debian's Chromium, headless, driven by Playwright's Python package.

Playwright's own browser builds are never downloaded: Chromium is `/usr/bin/chromium` (Debian's
`chromium` package; `.ci/run` installs it), or `EXCHANGE_CHROMIUM`. Without it these tests fail
and say how to install it; they are never skipped. Screenshots go to `test-artifacts/browser/`
(or `$EXCHANGE_TEST_ARTIFACTS/browser/`), which git ignores: look at them after a run.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = Path(os.environ.get("EXCHANGE_CHROMIUM", "/usr/bin/chromium"))
# Headless, and quiet on a closed network: without the background-networking flags Chromium
# tries to reach its update and sync services and its connections are refused here.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("EXCHANGE_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
VIEWPORT = {"width": 1440, "height": 1000}

# Recorded in every page before its own scripts: CSP violations and console errors.
WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
"""

T = TypeVar("T")


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium. Install it with"
                    " `apt-get install -y chromium` (as root; .ci/run does it), or point EXCHANGE_CHROMIUM"
                    " at a Chromium binary.", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


@dataclass
class Tab:
    """A page in its own browser context (its own sessionStorage), with what it logged."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    async def csp_violations(self) -> list[str]:
        return list(await self.page.evaluate("window.__csp || []"))

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    async def close(self) -> None:
        await self.context.close()


async def open_tab(browser: Browser, url: str) -> Tab:
    context = await browser.new_context(viewport=VIEWPORT, locale="zh-CN", timezone_id="Asia/Shanghai")
    context.set_default_timeout(15_000)
    await context.add_init_script(WATCH)
    page = await context.new_page()
    tab = Tab(context, page)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: tab.errors.append(f"uncaught: {e}"))
    await page.goto(url)
    return tab


async def feed_state(page: Page) -> str:
    return str(await page.get_attribute("#feed-status", "data-state"))


async def wait_state(page: Page, state: str, timeout_s: float = 15.0) -> float:
    """Wait until the feed indicator shows `state`; the seconds it took."""
    t0 = time.monotonic()
    await page.locator(f'#feed-status[data-state="{state}"]').wait_for(timeout=timeout_s * 1000)
    return time.monotonic() - t0


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float = 10.0, every_s: float = 0.1) -> T:
    """Run `check` until it stops raising AssertionError; its result (the last error after the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(every_s)
