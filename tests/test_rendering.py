"""Rendered crawls (``use_browser_rendering``) with scrapy-playwright and Debian chromium.

A real crawl of ``tests/site_js`` (pages built by JavaScript) served on 127.0.0.1;
the static crawl of the same site is the control.  Skipped where ``/usr/bin/chromium``
is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from crawler.rendering import CHROMIUM_PATH, ContextRecycler, rendering_settings
from indexer.rawstore import RawStore
from server.devsite import DevSite
from tests.test_crawler_robots_fetch import crawl

SITE_JS = Path(__file__).resolve().parent / "site_js"
HEADER = ("X-Members-Key", "medlar")

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM_PATH).exists(), reason="no /usr/bin/chromium")


@pytest.fixture
def js_site() -> Iterator[DevSite]:
    with DevSite(SITE_JS, protected={"/members/": HEADER}) as site:
        yield site


def _bodies(result) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    raw = RawStore(result.settings.pages_dir)
    out = {}
    for key, item in result.items.items():
        if item["status"] == "fetched":
            page = raw.get("site", item["id"])
            assert page is not None
            out[key.split("/", 3)[3] if key.count("/") >= 3 else key] = page.body
    return out


def test_static_is_the_default_and_sees_no_js_content(js_site: DevSite, tmp_path: Path) -> None:
    result = crawl(tmp_path, js_site.url, web_crawler={"parse_options": {"include_headers": dict([HEADER])}})
    assert result.fetched() == {"/"}  # no links without JavaScript
    assert b"rendered orchard" not in _bodies(result)[""]
    assert "playwright" not in result.output.lower()


@pytest.mark.slow
@needs_chromium
def test_rendered_crawl_sees_js_content_and_sends_headers(js_site: DevSite, tmp_path: Path) -> None:
    wc = {"parse_options": {"use_browser_rendering": True, "include_headers": dict([HEADER])}}
    result = crawl(tmp_path, js_site.url, web_crawler=wc, timeout=120, scrapy_settings={"RENDER_CONTEXT_PAGES": "1"})
    assert result.fetched() == {"/", "/page1.html", "/members/page2.html"}, result.log_text()
    bodies = _bodies(result)
    assert b"rendered orchard" in bodies[""]
    assert b"quince trees" in bodies["page1.html"]
    assert b"medlar fruit" in bodies["members/page2.html"]  # the header reached the protected page
    for req in js_site.requests:
        if req.path.endswith(".html") or req.path in ("/", "/robots.txt"):
            assert req.headers.get(HEADER[0]) == HEADER[1], req.path
    # one page per context: the first two contexts were closed once their page was done
    assert "browser context render-0 recycled" in result.output
    assert "browser context render-1 recycled" in result.output


def test_rendering_settings_use_system_chromium() -> None:
    s = rendering_settings(concurrency=2)
    assert s["PLAYWRIGHT_LAUNCH_OPTIONS"]["executable_path"] == "/usr/bin/chromium"
    assert "--no-sandbox" in s["PLAYWRIGHT_LAUNCH_OPTIONS"]["args"]
    assert s["DOWNLOAD_HANDLERS"]["http"].startswith("scrapy_playwright.")


def test_context_recycler_assigns_generations() -> None:
    recycler = ContextRecycler(pages_per_context=2)
    names = [recycler.request_meta()["playwright_context"] for _ in range(5)]
    assert names == ["render-0", "render-0", "render-1", "render-1", "render-2"]
    assert dict(recycler.open_pages) == {"render-0": 2, "render-1": 2, "render-2": 1}
