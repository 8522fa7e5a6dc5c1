"""The playground page, driven in headless Chromium (Playwright) against a real uvicorn server.

Skipped when ``/usr/bin/chromium`` is absent (``apt-get install chromium``); Playwright's
own browser download is never used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.devsite import DevSite
from tests.conftest import API_TOKEN, make_settings
from tests.test_mcp import crawl_fixture_site, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Chromium at /usr/bin/chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def base_url(fixture_site: DevSite, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("playground"), model_dir)
    with live_server(settings) as (url, _app):
        with httpx.Client(base_url=url, timeout=30) as client:
            crawl_fixture_site(client, fixture_site)
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_page_and_assets_are_served(base_url: str) -> None:
    page = httpx.get(f"{base_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'content="local"' in page.text and "/static/playground.js" in page.text
    assert httpx.get(f"{base_url}/static/playground.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{base_url}/static/playground.css").headers["content-type"].startswith("text/css")
    missing = httpx.get(f"{base_url}/static/..%2Fapp.py")
    assert missing.status_code == 404 and missing.json()["success"] is False


def test_search_and_answer_in_the_browser(base_url: str, browser: Any, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base_url}/")
    assert "paste" in (page.text_content("#status") or "").lower()

    page.fill("#token", API_TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#instance option[value=fixture]", state="attached", timeout=15_000)
    assert page.evaluate("localStorage.getItem('sitesearch.token')") == API_TOKEN
    assert page.input_value("#token") == ""  # not left in the field

    page.fill("#query", "How long is the bridge over the fjord?")
    page.press("#query", "Enter")
    page.wait_for_selector(".result", timeout=30_000)
    first = page.locator(".result").first
    assert first.locator(".result-url").text_content().endswith("/docs/beta.html")
    assert first.locator(".result-title").text_content().strip()
    assert first.locator(".result-score").text_content().startswith("score 0.")
    assert "fjord" in first.locator(".result-snippet").text_content().lower()
    assert page.locator("#answer").is_hidden()
    page.screenshot(path=str(tmp_path / "playground-search.png"), full_page=True)

    page.click(".tab[data-mode=answer]")
    page.fill("#query", "When are cardamom buns served?")
    page.click("#go")
    page.wait_for_function("document.getElementById('answer-text').textContent.includes('Sources:')", timeout=30_000)
    assert page.locator("#answer").is_visible()
    assert "vip.html" in page.text_content("#answer-text")
    assert page.locator(".result").first.locator(".result-url").text_content().endswith("/members/vip.html")
    page.screenshot(path=str(tmp_path / "playground-answer.png"), full_page=True)

    # The token survives a reload; a wrong token is reported, not thrown.
    page.reload()
    page.wait_for_selector("#instance option[value=fixture]", state="attached", timeout=15_000)
    page.fill("#token", "wrong-token")
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("#status.error", timeout=15_000)
    assert "invalid API token" in page.text_content("#status")
    assert errors == []
    page.close()
