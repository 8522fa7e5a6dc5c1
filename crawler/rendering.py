"""Rendered fetching (``parse_options.use_browser_rendering: true``) through scrapy-playwright.

Static fetching is the default; nothing here is active unless an instance asks for
rendering.  Then the ``site`` spider calls :func:`apply_rendering_settings` from
``from_crawler`` (before Scrapy freezes its settings), which registers
scrapy-playwright's download handlers for this run only, and marks each *page*
request ``meta[RENDER_META]`` (robots.txt and sitemaps are always fetched
statically). :class:`RenderContextMiddleware` turns that mark into
:meth:`ContextRecycler.request_meta` when the request is about to be downloaded,
in the process that downloads it: with a shared Redis frontier the worker that
made a request is often not the one that renders it, and each worker's contexts
count only the pages it renders.

The browser is the system's Debian chromium (``/usr/bin/chromium``); we never run
``playwright install``.  Headless browsers grow over long crawls, so pages are
spread over browser contexts of at most ``pages_per_context`` pages each
(default 200): when a context has served its share and its last page is done, it
is closed and a fresh one takes over, which keeps memory flat.

Custom headers: scrapy-playwright's default ``PLAYWRIGHT_PROCESS_REQUEST_HEADERS``
sends the Scrapy request's headers (our ``include_headers``) on the navigation
request, so rendered pages carry them like static ones.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

logger = logging.getLogger(__name__)

CHROMIUM_PATH = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
DEFAULT_PAGES_PER_CONTEXT = 200  # pages rendered in one browser context before it is recycled
NAVIGATION_TIMEOUT_MS = 30_000  # milliseconds
PLAYWRIGHT_HANDLER = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"
ASYNCIO_REACTOR = "twisted.internet.asyncioreactor.AsyncioSelectorReactor"
_BLOCKED_RESOURCES = frozenset({"image", "media", "font"})  # never needed to build the text of a page


RENDER_META = "sitesearch_render"  # request meta: render this page (assigned a context at download time)


def _abort_request(request: Any) -> bool:
    """Skip downloads that cannot change a page's text (images, media, fonts)."""
    return request.resource_type in _BLOCKED_RESOURCES


def rendering_settings(*, concurrency: int, chromium_path: str = CHROMIUM_PATH) -> dict[str, Any]:
    """The Scrapy settings a rendered run needs.

    Args:
        concurrency: pages rendered at once per browser context (the per-host concurrency).
        chromium_path: the chromium executable.

    Returns:
        Setting name → value, to apply with priority ``"spider"``.
    """
    return {
        "DOWNLOAD_HANDLERS": {"http": PLAYWRIGHT_HANDLER, "https": PLAYWRIGHT_HANDLER},
        "TWISTED_REACTOR": ASYNCIO_REACTOR,
        "PLAYWRIGHT_BROWSER_TYPE": "chromium",
        "PLAYWRIGHT_LAUNCH_OPTIONS": {
            "executable_path": chromium_path,
            "headless": True,
            "args": list(CHROMIUM_ARGS),
        },
        "PLAYWRIGHT_MAX_PAGES_PER_CONTEXT": max(1, concurrency),
        "PLAYWRIGHT_DEFAULT_NAVIGATION_TIMEOUT": NAVIGATION_TIMEOUT_MS,
        "PLAYWRIGHT_ABORT_REQUEST": _abort_request,
        "PLAYWRIGHT_RESTART_DISCONNECTED_BROWSER": True,
    }


def apply_rendering_settings(settings: Any, *, concurrency: int, chromium_path: str = CHROMIUM_PATH) -> None:
    """Register scrapy-playwright on a not-yet-frozen Scrapy ``Settings`` object.

    Args:
        settings: ``crawler.settings`` (call from the spider's ``from_crawler``).
        concurrency: pages rendered at once per context.
        chromium_path: the chromium executable.
    """
    for name, value in rendering_settings(concurrency=concurrency, chromium_path=chromium_path).items():
        settings.set(name, value, priority="spider")
    logger.info("browser rendering on: %s via scrapy-playwright", chromium_path)


class ContextRecycler:
    """Assigns rendered page requests to browser contexts and closes each context once it is used up.

    Context ``render-N`` takes ``pages_per_context`` requests; then ``render-N+1`` is
    used for new requests, and ``render-N`` is closed as soon as its last page has
    been released (pages are kept open until the spider's callback releases them, so
    a context is never closed under a page that is still rendering).

    Args:
        pages_per_context: requests per context before recycling (default 200).
    """

    def __init__(self, pages_per_context: int = DEFAULT_PAGES_PER_CONTEXT) -> None:
        self.pages_per_context = max(1, pages_per_context)
        self.generation = 0
        self.assigned = 0
        self.open_pages: dict[str, int] = defaultdict(int)
        self.contexts: dict[str, Any] = {}  # name -> BrowserContext, as seen on released pages
        self.contexts_closed = 0

    @property
    def current(self) -> str:
        """Name of the context new requests go to."""
        return f"render-{self.generation}"

    def request_meta(self) -> dict[str, Any]:
        """Request meta for one rendered page (``playwright``, its context, the page handed back)."""
        if self.assigned >= self.pages_per_context:
            self.generation += 1
            self.assigned = 0
        self.assigned += 1
        name = self.current
        self.open_pages[name] += 1
        return {
            "playwright": True,
            "playwright_context": name,
            "playwright_include_page": True,
            "playwright_page_goto_kwargs": {"wait_until": "load"},
        }

    async def release(self, meta: dict[str, Any]) -> None:
        """Close the request's page, and its context when that context is used up and idle.

        Safe to call for static requests (does nothing) and more than once.

        Args:
            meta: the request's (or response's) meta.
        """
        if not meta.get("playwright"):
            return
        name = meta.get("playwright_context")
        page = meta.pop("playwright_page", None)
        if name is None or meta.get("_sitesearch_released"):
            return
        meta["_sitesearch_released"] = True
        self.open_pages[name] -= 1
        if page is not None:
            self.contexts.setdefault(name, page.context)
            try:
                await page.close()
            except Exception as exc:  # a crashed page cannot be closed twice
                logger.debug("closing page failed: %s", exc)
        await self._close_used_up()

    async def _close_used_up(self) -> None:
        """Close every retired context (not the current one) with no page left open."""
        for name in [n for n in self.contexts if n != self.current and self.open_pages.get(n, 0) <= 0]:
            self.open_pages.pop(name, None)
            context = self.contexts.pop(name)
            try:
                await context.close()
                self.contexts_closed += 1
                logger.info("browser context %s recycled", name)
            except Exception as exc:
                logger.debug("closing context %s failed: %s", name, exc)


class RenderContextMiddleware:
    """Downloader middleware: a page marked ``meta[RENDER_META]`` gets its browser context as it is downloaded.

    A no-op for static crawls and for requests without the mark (robots.txt, sitemaps).
    """

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Any) -> RenderContextMiddleware:
        return cls(crawler)

    def process_request(self, request: Any) -> None:
        renderer = getattr(self.crawler.spider, "renderer", None)
        if renderer is not None and request.meta.get(RENDER_META) and not request.meta.get("playwright"):
            request.meta.update(renderer.request_meta())
