"""The ``site`` spider: crawls one instance's website from robots.txt and sitemaps.

Flow (one sync job):

1. ``robots.txt`` (RFC 9309 status rules; our ``sitesearch`` group wins over ``*``).
2. Sitemaps, one at a time in the order robots.txt lists them (or the instance's
   ``specific_sitemaps``, or ``/sitemap.xml``), depth-first through sitemap
   indexes, so "sitemap order" is well defined.  Every ``<url>`` passes the
   host check, the include/exclude rules and robots.txt, and is recorded in the
   on-disk frontier (the ``items`` table) with its priority and sequence.
3. When discovery is complete, pages are pulled from the frontier in
   ``priority DESC, seq ASC`` order, a batch at a time, fetched and stored in
   the raw page store.  The process that owns the vector store indexes them
   (inline here when we own it, otherwise the API server does).

Run with ``scrapy crawl site -a instance=ID [-a job=JOB_ID]``.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Request, Response
from twisted.python.failure import Failure

from crawler.robots import RobotsTxt, robots_policy_for_status
from crawler.sitemaps import ParseReport, SitemapWalk, iter_sitemap, resolve_sitemap_url
from indexer.config import Settings, get_settings
from indexer.instance import InstanceConfig
from indexer.pathfilter import PathFilter
from indexer.rawstore import RawPage, RawStore
from indexer.state import StateStore

logger = logging.getLogger(__name__)

ROBOTS_PRIORITY = 1_000_000
SITEMAP_PRIORITY = 900_000
ERROR_STATUSES = list(range(400, 600))
PAGE_STATUSES = [304, *ERROR_STATUSES]
DISCOVERY_FLUSH = 1000  # discovered URLs written to the frontier per transaction


class SiteSpider(scrapy.Spider):
    """Crawl one instance (``-a instance=ID``) as one job (``-a job=ID``, else a new ``cli`` job)."""

    name = "site"

    def __init__(self, instance: str | None = None, job: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not instance:
            raise ValueError("usage: scrapy crawl site -a instance=ID")
        self.settings_obj: Settings = get_settings()
        self.state = StateStore(self.settings_obj.resolved_database_url)
        row = self.state.get_instance(instance)
        if row is None:
            raise ValueError(f"unknown instance {instance!r} (data dir {self.settings_obj.data_dir})")
        self.instance = InstanceConfig.model_validate({**row["config"], "id": row["id"]})
        if self.instance.type != "web-crawler":
            raise ValueError(f"instance {instance!r} has no website to crawl (type {self.instance.type})")
        self.instance_id = instance
        self.job_id = job or self.state.create_job(instance, "cli")["id"]
        self.state.update_job(self.job_id, status="running", started_at=time.time(), pid=os.getpid())
        self.allowed_domains = [self.instance.host]
        self.base_url = self.instance.base_url
        self.headers = dict(self.instance.parse_options.include_headers)
        self.filter = PathFilter(self.instance.source_params.include_items, self.instance.source_params.exclude_items)
        self.raw = RawStore(self.settings_obj.pages_dir)
        self.robots = RobotsTxt.allow_all()
        self.walk = SitemapWalk()
        self.sitemap_queue: deque[tuple[str, int]] = deque()
        self.seq = 0
        self.discovery_buffer: list[dict[str, Any]] = []
        self.discovery_done = False
        self.frontier_cursor: tuple[float, int] | None = None
        self.frontier_exhausted = False
        self.in_flight = 0
        self.pages_scheduled = 0
        self.fetch_order: list[str] = []
        self.crawl_delays: dict[str, float] = {}  # host -> seconds, read by PoliteDownloader
        self.indexer_sink: Any = None  # set by the pipeline when this process owns the vector store

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> SiteSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider._on_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider._on_closed, signal=signals.spider_closed)
        return spider

    # --- requests ----------------------------------------------------------------
    def _request(self, url: str, **kwargs: Any) -> Request:
        """Every request carries the instance's custom headers (robots.txt and sitemaps too)."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return Request(url, headers=headers, **kwargs)

    async def start(self) -> AsyncIterator[Request]:
        self.log_job(f"Sync started for {self.base_url}")
        yield self._request(
            urljoin(self.base_url, "/robots.txt"),
            callback=self.parse_robots,
            errback=self.robots_failed,
            priority=ROBOTS_PRIORITY,
            dont_filter=True,
            meta={"handle_httpstatus_list": ERROR_STATUSES},
        )

    # --- robots.txt ------------------------------------------------------------------
    def parse_robots(self, response: Response) -> Iterator[Request]:
        policy = robots_policy_for_status(response.status)
        if policy == "parse":
            self.robots = RobotsTxt.parse(response.body)
        elif policy == "allow_all":
            self.robots = RobotsTxt.allow_all()
            self.log_job(f"robots.txt answered HTTP {response.status}: everything allowed", url=response.url)
        else:
            self.robots = RobotsTxt.disallow_all()
            self.log_job(
                f"robots.txt answered HTTP {response.status}: nothing is crawled this sync (retried next sync)",
                url=response.url,
                level="warning",
            )
            return
        self._apply_crawl_delay()
        yield from self._queue_sitemaps()

    def robots_failed(self, failure: Failure) -> None:
        self.robots = RobotsTxt.disallow_all()
        self.log_job(
            f"robots.txt could not be fetched ({failure.getErrorMessage()}): nothing is crawled this sync",
            url=urljoin(self.base_url, "/robots.txt"),
            level="warning",
        )

    def _apply_crawl_delay(self) -> None:
        delay = self.robots.crawl_delay(self.settings.get("USER_AGENT", "sitesearch"))
        if delay:
            self.crawl_delays[self.instance.host] = float(delay)
            self.log_job(f"robots.txt Crawl-delay: {delay} s between requests")

    # --- sitemaps -----------------------------------------------------------------------
    def _queue_sitemaps(self) -> Iterator[Request]:
        specific = self.instance.parse_options.specific_sitemaps
        if specific:
            refs, origin = specific, "specific_sitemaps"
        else:
            refs, origin = self.robots.sitemaps, "robots.txt"
        urls = []
        for ref in refs:
            url = resolve_sitemap_url(ref, self.base_url + "/")
            if url is None:
                self.log_job(f"Skipped sitemap: {ref!r} is not a URL", level="warning")
            elif not self._on_host(url):
                self.log_job(f"Skipped sitemap: {url} is not on {self.instance.host}", url=url, level="warning")
            else:
                urls.append(url)
        if not urls and not specific:
            urls = [urljoin(self.base_url, "/sitemap.xml")]
            self.log_job("no Sitemap: line in robots.txt, trying /sitemap.xml")
        else:
            self.log_job(f"{len(urls)} sitemap(s) from {origin}")
        self.sitemap_queue.extend((u, 0) for u in urls)
        yield from self._next_sitemap()

    def _next_sitemap(self) -> Iterator[Request]:
        while self.sitemap_queue:
            url, depth = self.sitemap_queue.popleft()
            reason = self.walk.should_fetch(url, depth)
            if reason:
                self.log_job(f"Skipped sitemap: {reason}", url=url, level="warning")
                continue
            yield self._request(
                url,
                callback=self.parse_sitemap,
                errback=self.sitemap_failed,
                priority=SITEMAP_PRIORITY,
                dont_filter=True,
                meta={"handle_httpstatus_list": ERROR_STATUSES, "depth_in_index": depth},
            )
            return
        yield from self._finish_discovery()

    def parse_sitemap(self, response: Response) -> Iterator[Request]:
        if response.status >= 400:
            self.log_job(f"sitemap answered HTTP {response.status}", url=response.url, level="warning")
            yield from self._next_sitemap()
            return
        depth = response.meta.get("depth_in_index", 0)
        report = ParseReport()
        children = []
        for entry in iter_sitemap(response.body, base_url=response.url, report=report):
            if entry.kind == "sitemap":
                if self._on_host(entry.loc):
                    children.append((entry.loc, depth + 1))
                else:
                    self.log_job(f"Skipped sitemap: not on {self.instance.host}", url=entry.loc)
                continue
            self._discover(entry.loc, entry.priority, entry.lastmod, entry.changefreq)
        for err in report.errors:
            # "XML:"/"encoding:" notes describe repaired input, nothing lost
            level = "warning" if err.startswith(("XML:", "encoding:")) else "error"
            self.log_job(f"sitemap error: {err}", url=response.url, level=level)
        if report.skipped_over_limit:
            self.log_job(f"sitemap: {report.skipped_over_limit} URLs over the per-file limit skipped", url=response.url, level="warning")
        self.log_job(f"sitemap ({report.format}): {report.urls} URLs, {report.sitemaps} child sitemaps", url=response.url)
        self.sitemap_queue.extendleft(reversed(children))  # depth-first, in listed order
        self._flush_discovered()
        yield from self._next_sitemap()

    def sitemap_failed(self, failure: Failure) -> Iterator[Request]:
        url = failure.request.url if hasattr(failure, "request") else "?"
        self.log_job(f"sitemap could not be fetched: {failure.getErrorMessage()}", url=url, level="error")
        yield from self._next_sitemap()

    # --- discovery ------------------------------------------------------------------------
    def _on_host(self, url: str) -> bool:
        return (urlsplit(url).hostname or "").lower() == self.instance.host

    def _discover(self, url: str, priority: float | None, lastmod: str | None, changefreq: str | None) -> None:
        if not self._on_host(url):
            self.log_job(f"Skipped: not on {self.instance.host}", url=url)
            self.state.incr_job(self.job_id, skipped=1)
            return
        reason = self.filter.skip_reason(url)
        if reason:
            self.log_job(reason, url=url)
            self.state.incr_job(self.job_id, skipped_by_rule=1)
            return
        if not self.robots.allowed(url, self.settings.get("USER_AGENT", "sitesearch")):
            self.log_job("Skipped by robots.txt", url=url)
            self.state.incr_job(self.job_id, skipped=1)
            return
        self.seq += 1
        self.discovery_buffer.append(
            {
                "key": url,
                "priority": 0.5 if priority is None else priority,
                "seq": self.seq,
                "lastmod": lastmod,
                "changefreq": changefreq,
                "origin": "sitemap",
            }
        )
        if len(self.discovery_buffer) >= DISCOVERY_FLUSH:
            self._flush_discovered()

    def _flush_discovered(self) -> None:
        if self.discovery_buffer:
            new = self.state.record_discovered(self.instance_id, self.job_id, self.discovery_buffer)
            self.state.incr_job(self.job_id, discovered=new)
            self.discovery_buffer = []

    def _finish_discovery(self) -> Iterator[Request]:
        if self.discovery_done:
            return
        self._flush_discovered()
        self.discovery_done = True
        job = self.state.get_job(self.job_id) or {}
        self.log_job(f"discovery complete: {job.get('discovered', 0)} URLs in the frontier")
        self._schedule_frontier()
        yield from ()

    # --- frontier -----------------------------------------------------------------------
    def _frontier_requests(self) -> Iterator[Request]:
        if self.frontier_exhausted:
            return
        cap = self.settings_obj.max_pages_per_instance - self.pages_scheduled
        limit = min(self.settings_obj.frontier_batch, cap)
        if limit <= 0:
            self.frontier_exhausted = True
            self.log_job(f"page cap of {self.settings_obj.max_pages_per_instance} reached", level="warning")
            return
        batch = self.state.frontier_batch(self.instance_id, self.job_id, after=self.frontier_cursor, limit=limit)
        if len(batch) < limit:
            self.frontier_exhausted = True
        for item in batch:
            self.frontier_cursor = (item["priority"], item["seq"])
            self.pages_scheduled += 1
            self.in_flight += 1
            yield self._page_request(item)

    def _page_request(self, item: dict[str, Any]) -> Request:
        headers: dict[str, str] = {}
        if item.get("etag") and item.get("status") == "indexed":
            headers["If-None-Match"] = item["etag"]
        if item.get("last_modified") and item.get("status") == "indexed":
            headers["If-Modified-Since"] = item["last_modified"]
        return self._request(
            item["key"],
            callback=self.parse_page,
            errback=self.page_failed,
            priority=int(item["priority"] * 1000),
            headers=headers,
            meta={
                "item_id": item["id"],
                "handle_httpstatus_list": PAGE_STATUSES,
                "download_maxsize": self.settings_obj.max_page_bytes,
            },
        )

    def _schedule_frontier(self) -> int:
        """Enqueue the next frontier batch directly in the scheduler.

        Enqueued synchronously, in one go, so the scheduler's priority queue sees the
        whole batch before the downloader takes the first request (requests yielded from
        a callback are enqueued by concurrent tasks, in no guaranteed order).
        """
        n = 0
        for request in self._frontier_requests():
            self.crawler.engine.crawl(request)
            n += 1
        return n

    def _top_up(self) -> None:
        if self.discovery_done and not self.frontier_exhausted and self.in_flight < self.settings_obj.frontier_batch // 2:
            self._schedule_frontier()

    def _on_idle(self, spider: scrapy.Spider) -> None:
        if self.discovery_done and self._schedule_frontier():
            raise DontCloseSpider

    # --- pages -------------------------------------------------------------------------------
    async def parse_page(self, response: Response) -> None:
        self.in_flight -= 1
        item_id = response.meta["item_id"]
        self.fetch_order.append(response.request.url if response.request else response.url)
        status = response.status
        now = time.time()
        if status == 304:
            self.state.update_item(item_id, http_status=304, status="indexed")
            self.state.incr_job(self.job_id, not_modified=1)
        elif status in (404, 410):
            self.state.update_item(item_id, http_status=status, status="fetched", pending_job=self.job_id, fetched_at=now)
            self.state.incr_job(self.job_id, fetched=1)
            await self._maybe_index(item_id)
        elif status >= 400:
            self.state.update_item(item_id, http_status=status, error=f"HTTP {status}")
            self.state.incr_job(self.job_id, errors=1)
            self.log_job(f"HTTP {status}: kept previous version, retried next sync", url=response.url, level="error")
        else:
            ctype = response.headers.get("Content-Type", b"").decode("latin-1")
            self.raw.put(
                self.instance_id,
                item_id,
                RawPage(
                    url=response.url,
                    status=status,
                    headers={k.decode("latin-1"): b", ".join(v).decode("latin-1") for k, v in response.headers.items()},
                    body=response.body,
                    fetched_at=now,
                    content_type=ctype,
                ),
            )
            self.state.update_item(
                item_id,
                http_status=status,
                status="fetched",
                pending_job=self.job_id,
                fetched_at=now,
                etag=_header(response, "ETag"),
                last_modified=_header(response, "Last-Modified"),
                error=None,
            )
            self.state.incr_job(self.job_id, fetched=1)
            await self._maybe_index(item_id)
        self._top_up()

    async def _maybe_index(self, item_id: str) -> None:
        if self.indexer_sink is not None:
            await self.indexer_sink(item_id)

    def page_failed(self, failure: Failure) -> None:
        self.in_flight -= 1
        request = getattr(failure, "request", None)
        url = request.url if request else "?"
        message = failure.getErrorMessage()
        if "larger than" in message or "maxsize" in message.lower():
            self.log_job(f"Skipped: page is over the {self.settings_obj.max_page_bytes} byte limit", url=url)
            self.state.incr_job(self.job_id, skipped=1)
            if request is not None:
                self.state.update_item(request.meta["item_id"], status="skipped", error="over the page size limit")
        else:
            self.log_job(f"fetch failed: {message}", url=url, level="error")
            self.state.incr_job(self.job_id, errors=1)
            if request is not None:
                self.state.update_item(request.meta["item_id"], error=f"fetch failed: {message}")
        self._top_up()

    # --- job bookkeeping ------------------------------------------------------------------
    def log_job(self, message: str, *, url: str | None = None, level: str = "info") -> None:
        """Record a line in the job log (and the process log)."""
        logger.log(logging.getLevelName(level.upper()), "%s%s", message, f" [{url}]" if url else "")
        self.state.log(self.job_id, message, url=url, level=level)

    def _on_closed(self, spider: scrapy.Spider, reason: str) -> None:
        self._flush_discovered()
        self.state.update_job(self.job_id, crawl_done=True)
        if reason != "finished":
            status = "cancelled" if reason in ("cancelled", "shutdown") else "failed"
            self.state.finish_job(self.job_id, status, f"crawl ended: {reason}")
        self.log_job(f"crawl finished ({reason}); {self.pages_scheduled} pages requested")


def _header(response: Response, name: str) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value else None
