"""The ``site`` spider: crawls one instance's website from robots.txt and sitemaps.

Flow (one sync job):

1. ``robots.txt`` (RFC 9309 status rules; our ``sitesearch`` group, else a ``Cloudflare-AI-Search``
   or ``Cloudflare-AutoRAG`` group, wins over ``*``; see crawler/robots.py).
2. Sitemaps, one at a time in the order robots.txt lists them (or the instance's
   ``specific_sitemaps``, or ``/sitemap.xml``), depth-first through sitemap
   indexes, so "sitemap order" is well defined.  Every ``<url>`` passes the
   host check, the include/exclude rules and robots.txt, and is recorded in the
   on-disk frontier (the ``items`` table) with its priority and sequence.
3. When discovery is complete, pages are pulled from the frontier in
   ``priority DESC, seq ASC`` order, a batch at a time, fetched and stored in
   the raw page store.  The process that owns the vector store indexes them
   (inline here when we own it, otherwise the API server does).

With ``SITESEARCH_REDIS_URL`` several processes (on any machines) share one job:
the first becomes the leader and does steps 1-2 alone, every worker fetches
pages from the job's Redis queue (see crawler/shared_frontier.py,
docs/scale-out.md).  Without it nothing below touches Redis.

Run with ``scrapy crawl site -a instance=ID [-a job=JOB_ID]``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urljoin

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.http import Request, Response
from scrapy.utils.defer import deferred_from_coro
from twisted.python.failure import Failure

from crawler.discovery import Scope, extract_links, site_port
from crawler.rendering import RENDER_META, ContextRecycler, apply_rendering_settings
from crawler.freshness import decide
from crawler.robots import RobotsTxt, robots_policy_for_status
from crawler.shared_frontier import SharedFrontier
from crawler.sitemaps import ParseReport, SitemapWalk, iter_sitemap, resolve_sitemap_url
from indexer.config import Settings, get_settings
from indexer.extract import HTML_TYPES, mime_type
from indexer.instance import InstanceConfig
from indexer.pathfilter import PathFilter
from indexer.pipeline import RELEASE_CLAIM
from indexer.rawstore import RawPage, RawStore
from indexer.robots_meta import NOFOLLOW, page_directives
from indexer.state import StateStore

logger = logging.getLogger(__name__)

ROBOTS_PRIORITY = 1_000_000
SITEMAP_PRIORITY = 900_000
ERROR_STATUSES = list(range(400, 600))
PAGE_STATUSES = [304, *ERROR_STATUSES]
DISCOVERY_FLUSH = 5000  # discovered URLs written to the frontier per transaction


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
        if job is None:  # `scrapy crawl site -a instance=ID`: a cli job, unless a sync is already running
            created = self.state.create_job_if_idle(instance, "cli")
            if created is None:
                active = self.state.active_job(instance) or {}
                if not (self.settings_obj.redis_url and active.get("id")):
                    raise ValueError(
                        f"instance {instance!r} already has a {active.get('status')} sync job {active.get('id')}"
                    )
                created = active  # distributed: join the running sync as one more worker
            job = created["id"]
        self.job_id = job
        if (self.state.get_job(job) or {}).get("status") == "queued":
            self.state.update_job(self.job_id, status="running", started_at=time.time(), pid=os.getpid())
        # distributed crawl: one frontier per job in Redis (None without SITESEARCH_REDIS_URL)
        self.shared: SharedFrontier | None = None
        if self.settings_obj.redis_url:
            self.shared = SharedFrontier.from_url(self.settings_obj.redis_url, self.job_id)
        self.shared_robots_loaded = False
        self.shared_fed = False  # leader: the whole frontier is in the shared queue
        self.follow_links_checked = False
        self.pages_answered = 0
        self.tick: Any = None
        self.ticks = 0
        # the bare domain: Scrapy's offsite filter then also lets www. through; _on_host decides exactly
        self.allowed_domains = [self.instance.host.removeprefix("www.")]
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
        # freshness and deletion (crawler/freshness.py, docs/freshness.md)
        self.max_age: float | None = self.instance.source_params.web_crawler.discover_options.max_age
        self.target: str | None = (self.state.get_job(self.job_id) or {}).get("target")  # sync one item
        self.sitemap_failures = 0
        self.gone: list[tuple[str, int]] = []  # (item id, 404|410): removed at the end unless too many
        self.deletions_done = False
        self.pages_scheduled = 0
        self.fetch_order: list[str] = []
        self.crawl_delays: dict[str, float] = {}  # host -> seconds, read by PoliteDownloader
        self.indexer_sink: Any = None  # set by the pipeline when this process owns the vector store
        self._init_link_discovery()

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> SiteSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        if spider.renderer is not None:  # settings are not frozen yet: register scrapy-playwright for this run
            apply_rendering_settings(crawler.settings, concurrency=spider.settings_obj.concurrent_requests_per_host)
            spider.renderer.pages_per_context = max(1, crawler.settings.getint("RENDER_CONTEXT_PAGES", 200))
        crawler.signals.connect(spider._on_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider._on_dropped, signal=signals.request_dropped)
        crawler.signals.connect(spider._on_scheduled, signal=signals.request_scheduled)
        crawler.signals.connect(spider._on_closed, signal=signals.spider_closed)
        if spider.shared is not None:
            spider.shared.heartbeat_ttl = crawler.settings.getint("SHARED_FRONTIER_HEARTBEAT_TTL", 30)
            spider.shared.leader_ttl = crawler.settings.getint("SHARED_FRONTIER_LEADER_TTL", 60)
            spider.shared.join()  # the first worker to join leads
            crawler.signals.connect(spider._on_opened_shared, signal=signals.spider_opened)
        return spider

    # --- requests ----------------------------------------------------------------
    def _request(self, url: str, **kwargs: Any) -> Request:
        """Every request carries the instance's custom headers (robots.txt and sitemaps too)."""
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return Request(url, headers=headers, **kwargs)

    async def start(self) -> AsyncIterator[Request]:
        if self.shared is not None and not self.shared.is_leader:
            self.log_job(f"worker {self.shared.worker_id} joined the sync of {self.base_url}")
            return
        self.log_job(f"Sync started for {self.base_url}")
        yield self._robots_request()

    def _robots_request(self) -> Request:
        return self._request(
            urljoin(self.base_url, "/robots.txt"),
            callback=self.parse_robots,
            errback=self.robots_failed,
            priority=ROBOTS_PRIORITY,
            dont_filter=True,
            # a robots.txt redirect may leave the host (RFC 9309 §2.3.1.2)
            meta={"handle_httpstatus_list": ERROR_STATUSES, "allow_offsite": True},
        )

    # --- robots.txt ------------------------------------------------------------------
    def parse_robots(self, response: Response) -> Iterator[Request]:
        policy = robots_policy_for_status(response.status)
        self._share_robots(policy, response.body if policy == "parse" else b"")
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
        if self.target:
            yield from self._sync_target()
            return
        yield from self._queue_sitemaps()

    def robots_failed(self, failure: Failure) -> Iterator[Request]:
        if "max redirections" in failure.getErrorMessage():
            # RFC 9309 §2.3.1.2: past five redirects robots.txt may be treated as unavailable (like a 4xx)
            self.robots = RobotsTxt.allow_all()
            self._share_robots("allow_all")
            self.log_job(
                "robots.txt: too many redirects (more than 5), treated as unavailable: everything allowed",
                url=urljoin(self.base_url, "/robots.txt"),
                level="warning",
            )
            yield from self._queue_sitemaps()
            return
        self.robots = RobotsTxt.disallow_all()
        self._share_robots("disallow_all")
        self.log_job(
            f"robots.txt could not be fetched ({failure.getErrorMessage()}): nothing is crawled this sync",
            url=urljoin(self.base_url, "/robots.txt"),
            level="warning",
        )

    def _apply_crawl_delay(self) -> None:
        delay = self.robots.crawl_delay(self.settings.get("USER_AGENT", "sitesearch"))
        if delay:
            bare = self.instance.host.removeprefix("www.")
            for host in (bare, f"www.{bare}"):  # download slots are keyed by hostname
                self.crawl_delays[host] = float(delay)
            self.log_job(f"robots.txt Crawl-delay: {delay} s between requests")

    # --- sitemaps -----------------------------------------------------------------------
    def _queue_sitemaps(self) -> Iterator[Request]:
        if self.link_mode == "links":
            self.log_job("discover_options.source is 'links': no sitemaps, following links from the start page")
            yield from self._finish_discovery()
            return
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
            self.sitemap_failures += 1
            self.log_job(f"sitemap answered HTTP {response.status}", url=response.url, level="warning")
            yield from self._next_sitemap()
            return
        self.sitemaps_fetched += 1
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
            self.sitemap_failures += level == "error"
            self.log_job(f"sitemap error: {err}", url=response.url, level=level)
        if report.skipped_over_limit:
            self.log_job(f"sitemap: {report.skipped_over_limit} URLs over the per-file limit skipped", url=response.url, level="warning")
        self.log_job(f"sitemap ({report.format}): {report.urls} URLs, {report.sitemaps} child sitemaps", url=response.url)
        self.sitemap_queue.extendleft(reversed(children))  # depth-first, in listed order
        self._flush_discovered()
        yield from self._next_sitemap()

    def sitemap_failed(self, failure: Failure) -> Iterator[Request]:
        url = failure.request.url if hasattr(failure, "request") else "?"
        self.sitemap_failures += 1
        self.log_job(f"sitemap could not be fetched: {failure.getErrorMessage()}", url=url, level="error")
        yield from self._next_sitemap()

    # --- discovery ------------------------------------------------------------------------
    def _on_host(self, url: str) -> bool:
        """The instance's host (``www.`` or not) on the instance's port (default ports: http and https)."""
        return Scope(self.instance.host, port=site_port(self.base_url)).contains(url)

    def _discover(
        self,
        url: str,
        priority: float | None,
        lastmod: str | None,
        changefreq: str | None,
        *,
        origin: str = "sitemap",
        depth: int = 0,
    ) -> None:
        if not (self._on_host(url) or (origin == "link" and self.scope.contains(url))):
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
        self.seq = self.shared.next_seq() if self.shared is not None else self.seq + 1
        self.discovery_buffer.append(
            {
                "key": url,
                "priority": 0.5 if priority is None else priority,
                "seq": self.seq,
                "lastmod": lastmod,
                "changefreq": changefreq,
                "origin": origin,
                "depth": depth,
            }
        )
        if len(self.discovery_buffer) >= DISCOVERY_FLUSH:
            self._flush_discovered()

    def _flush_discovered(self) -> None:
        if self.discovery_buffer:
            new = self.state.record_discovered(self.instance_id, self.job_id, self.discovery_buffer)
            self.state.incr_job(self.job_id, discovered=new)
            if self.shared is not None:
                self._push_links([r["key"] for r in self.discovery_buffer if r["origin"] == "link"])
            self.discovery_buffer = []

    def _finish_discovery(self) -> Iterator[Request]:
        if self.discovery_done:
            return
        self._flush_discovered()
        self.discovery_done = True
        job = self.state.get_job(self.job_id) or {}
        self.log_job(f"discovery complete: {job.get('discovered', 0)} URLs in the frontier")
        self._seed_link_discovery()
        self._schedule_frontier()
        if self.shared is not None:
            self._feed_shared()
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
        yielded = 0
        while True:
            batch = self.state.frontier_batch(self.instance_id, self.job_id, after=self.frontier_cursor, limit=limit)
            if len(batch) < limit:
                self.frontier_exhausted = True
            not_due: list[tuple[str | None, str, str]] = []
            now = time.time()
            for item in batch:
                self.frontier_cursor = (item["priority"], item["seq"])
                decision = decide(
                    item, lastmod=item.get("lastmod"), changefreq=item.get("changefreq"), now=now, max_age=self.max_age
                )
                if not decision.fetch:
                    not_due.append((item["key"], decision.reason, "info"))
                    continue
                self.pages_scheduled += 1
                self.in_flight += 1
                yielded += 1
                yield self._page_request(item)
            if not_due:  # not requested at all: the sitemap says they have not changed
                self.state.log_many(self.job_id, not_due)
                self.state.incr_job(self.job_id, not_modified=len(not_due))
            if yielded or self.frontier_exhausted:
                return

    def _page_request(self, item: dict[str, Any], *, force: bool = False) -> Request:
        headers: dict[str, str] = {}
        if item.get("etag") and item.get("status") == "indexed" and not force:
            headers["If-None-Match"] = item["etag"]
        if item.get("last_modified") and item.get("status") == "indexed" and not force:
            headers["If-Modified-Since"] = item["last_modified"]
        return self._request(
            item["key"],
            callback=self.parse_page,
            errback=self.page_failed,
            priority=int(item["priority"] * 1000),
            headers=headers,
            meta={
                "item_id": item["id"],
                "sitemap_lastmod": item.get("lastmod"),
                "site_depth": item.get("depth") or 0,
                "handle_httpstatus_list": PAGE_STATUSES,
                "download_maxsize": self.settings_obj.max_page_bytes,
                **({RENDER_META: True} if self.renderer is not None else {}),  # context: RenderContextMiddleware
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
        if self.shared is not None:
            self._feed_shared()
            return
        if self.discovery_done and not self.frontier_exhausted and self.in_flight < self.settings_obj.frontier_batch // 2:
            self._schedule_frontier()

    def _on_idle(self, spider: scrapy.Spider) -> None:
        if self.shared is not None:
            self._on_idle_shared()
            return
        if self.discovery_done and self._schedule_frontier():
            raise DontCloseSpider
        if self.discovery_done and not self.deletions_done:
            self.deletions_done = True
            self._apply_deletions()

    # --- deletion (see docs/freshness.md) --------------------------------------------------------
    def _apply_deletions(self) -> None:
        """Remove URLs gone from every sitemap and pages that answered 404/410, unless that is too many.

        Runs once, when every page of the frontier has been answered.  Items are handed
        to the index owner (status ``fetched`` + ``delete_reason``), which removes their
        chunks.  Safety guard: when more than half of the instance's items would go (a
        sitemap failed to load, the site is down), nothing is deleted and the job ends
        ``completed`` with a warning.
        """
        vanished: list[dict[str, Any]] = []
        if self.target:
            pass  # sync one item: nothing else was looked at
        elif self.sitemap_failures:
            self.log_job(
                f"{self.sitemap_failures} sitemap(s) failed to load: URLs missing from the sitemaps are kept this sync",
                level="warning",
            )
        else:
            vanished = self.state.vanished_items(self.instance_id, self.job_id)
        n = len(vanished) + len(self.gone)
        if not n:
            return
        total = self.state.count_live_items(self.instance_id)
        if n > total / 2:
            message = (
                f"safety guard: this sync would delete {n} of {total} items ({len(vanished)} missing from the "
                f"sitemaps, {len(self.gone)} answered 404/410), more than half; deleted nothing"
            )
            self.log_job(message, level="warning")
            self.state.update_job(self.job_id, end_reason=f"warning: {message}")
            return
        reason = "removed: no longer listed in any sitemap"
        self.state.mark_for_deletion([v["id"] for v in vanished], self.job_id, reason)
        for status, ids in _group_by_status(self.gone).items():
            self.state.mark_for_deletion(ids, self.job_id, f"HTTP {status}: removed from the index")

    def _sync_target(self) -> Iterator[Request]:
        """Sync one item: re-fetch the job's target URL unconditionally and re-index it (no sitemaps)."""
        url = self.target or ""
        self.discovery_done = True
        self.frontier_exhausted = True
        reason = None
        if not self._on_host(url):
            reason = f"Skipped: not on {self.instance.host}"
        elif self.filter.skip_reason(url):
            reason = self.filter.skip_reason(url)
        elif not self.robots.allowed(url, self.settings.get("USER_AGENT", "sitesearch")):
            reason = "Skipped by robots.txt"
        if reason:
            self.log_job(reason, url=url, level="warning")
            self.state.incr_job(self.job_id, skipped_by_rule=1)
            return
        item = self.state.ensure_item(self.instance_id, url, origin="link")
        self.state.update_item(item["id"], seen_job=self.job_id, content_hash=None)  # re-embed even if unchanged
        self.state.incr_job(self.job_id, discovered=1)
        self.log_job("sync one item: re-fetching and re-indexing", url=url)
        self.pages_scheduled += 1
        self.in_flight += 1
        request = self._page_request({**item, "content_hash": None}, force=True)
        if self.shared is not None:  # queued before the frontier counts as fed
            self.crawler.engine.crawl(request)
            return
        yield request

    # --- link discovery and URL keys (see crawler/discovery.py) ------------------------------
    def _init_link_discovery(self) -> None:
        """Link-discovery mode, scope and caps from ``parse_type`` / ``discover_options``; the renderer."""
        web = self.instance.source_params.web_crawler
        self.discover_options = web.discover_options
        # None: sitemaps only (links only as the no-sitemap fallback); "all" | "sitemaps" | "links" otherwise
        self.link_mode: str | None = self.discover_options.source if web.parse_type in ("discover", "crawl") else None
        if self.link_mode == "sitemaps":
            self.link_mode = None
        self.scope = Scope(
            self.instance.host, include_subdomains=self.discover_options.include_subdomains, port=site_port(self.base_url)
        )
        self.follow_links = False
        self.links_seen: set[str] = set()
        self.links_recorded = 0
        self.link_limit_logged = False
        self.sitemaps_fetched = 0
        self.started_at = time.time()
        self.renderer = ContextRecycler() if self.instance.parse_options.use_browser_rendering else None

    def _seed_link_discovery(self) -> None:
        """Start following links from the instance's source URL (explicitly, or as the no-sitemap fallback)."""
        web = self.instance.source_params.web_crawler
        if self.link_mode is None:
            if self.sitemaps_fetched or self.instance.parse_options.specific_sitemaps or web.parse_type == "discover":
                return
            self.log_job(
                "no sitemap found (robots.txt lists none and /sitemap.xml is missing): "
                f"falling back to link discovery from {self.instance.source}",
                level="warning",
            )
        self.follow_links = True
        if self.shared is not None:
            self.shared.publish_follow_links()
        seed = self.instance.source or self.base_url + "/"
        limit = min(self.discover_options.limit, self.settings_obj.max_pages_per_instance)
        if self._claim_link(seed, limit) == "new":
            self._discover(seed, 0.0, None, None, origin="link", depth=0)
        self._flush_discovered()
        if self.shared is None:
            self.frontier_exhausted = False

    def _follow_links(self, response: Response, item_id: str) -> None:
        """Record the same-site links of a fetched page (breadth-first, up to ``depth`` and ``limit``)."""
        depth = int(response.meta.get("site_depth") or 0)
        if self.shared is not None and not self.follow_links_checked:  # the leader decides, before any page
            self.follow_links_checked = True
            self.follow_links = self.follow_links or self.shared.follow_links()
        if not self.follow_links or depth >= self.discover_options.depth:
            return
        body: bytes = response.body if response.status != 304 else b""
        content_type = _header(response, "Content-Type")
        headers = _headers(response)
        if response.status == 304:  # unchanged since last sync: its links come from the stored copy
            page = self.raw.get(self.instance_id, item_id)
            body, content_type, headers = (page.body, page.content_type, page.headers) if page else (b"", "", {})
        ctype = mime_type(content_type)
        if not body or (ctype and ctype not in HTML_TYPES):
            return
        if self.instance.parse_options.respect_robots_meta:
            if NOFOLLOW in page_directives(body, content_type, headers):
                self.log_job("links not followed: the page says nofollow (robots meta tag or X-Robots-Tag)", url=response.url)
                return
        found = extract_links(body, response.url, self.scope, content_type)
        limit = min(self.discover_options.limit, self.settings_obj.max_pages_per_instance)
        for url in found.links:
            claim = self._claim_link(url, limit)
            if claim == "seen":
                continue
            if claim == "over":
                if not self.link_limit_logged:
                    self.link_limit_logged = True
                    self.log_job(f"link discovery limit of {limit} pages reached: further links skipped", level="warning")
                break
            self._discover(url, 0.0, None, None, origin="link", depth=depth + 1)
        for url in found.external:
            if url not in self.links_seen:
                self.links_seen.add(url)
                self.log_job("Skipped: external link (only this site's host is crawled)", url=url)
        self._flush_discovered()
        if self.shared is None:
            self.frontier_exhausted = False

    def _claim_link(self, url: str, limit: int) -> str:
        """``"new"`` (record it), ``"seen"`` (already recorded this sync) or ``"over"`` the limit."""
        if self.shared is not None:
            return self.shared.claim_link(url, limit)
        if url in self.links_seen:
            return "seen"
        if self.links_recorded >= limit:
            return "over"
        self.links_seen.add(url)
        self.links_recorded += 1
        return "new"

    def _on_scheduled(self, request: Request, spider: scrapy.Spider) -> None:
        """A page redirect leaving the site is not followed (Scrapy's offsite filter drops it silently)."""
        if request.meta.get("item_id") is None or not request.meta.get("redirect_urls"):
            return
        if not (self._on_host(request.url) or self.scope.contains(request.url)):
            self._redirect_not_followed(request, off_site=True)

    def _on_dropped(self, request: Request, spider: scrapy.Spider) -> None:
        """A page redirect to a URL already requested in this sync (dropped by the duplicate filter)."""
        if request.meta.get("item_id") is not None and request.meta.get("redirect_urls"):
            self._redirect_not_followed(request, off_site=False)

    def _redirect_not_followed(self, request: Request, *, off_site: bool) -> None:
        item_id = request.meta["item_id"]
        requested = request.meta["redirect_urls"][0]
        self.in_flight -= 1
        if off_site:
            reason = f"Skipped: redirected off {self.instance.host} to {request.url}"
            self.state.update_item(item_id, status="skipped", error=f"redirected off the site to {request.url}")
        else:
            reason = f"Skipped: redirects to {request.url}, already requested in this sync"
            self.state.update_item(item_id, status="skipped", error=f"duplicate of {request.url}", pending_job=None)
        self.log_job(reason, url=requested)
        self.state.incr_job(self.job_id, skipped=1)
        self._shared_done(request)
        self._top_up()

    def _collapse_to_key(self, response: Response, item_id: str) -> str | None:
        """The item a fetched page is stored under: its canonical URL, else its URL after redirects.

        Duplicates collapse onto one item: the fetched URL's own item is marked
        ``skipped`` with the key it collapsed into.  Returns None when the page must not
        be stored (redirected off the site, or its key was already fetched in this job).
        """
        requested = (response.meta.get("redirect_urls") or [response.url])[0]  # the item's own URL
        key = response.url
        if not self.scope.contains(key) and not self._on_host(key):
            self.state.update_item(item_id, status="skipped", error=f"redirected off the site to {key}")
            self.log_job(f"Skipped: redirected off {self.instance.host} to {key}", url=requested)
            self.state.incr_job(self.job_id, skipped=1)
            return None
        content_type = _header(response, "Content-Type")
        if mime_type(content_type) in ("", *HTML_TYPES):
            canonical = extract_links(response.body, response.url, self.scope, content_type).canonical
            if canonical:
                key = canonical
        if key == requested:
            return item_id
        current = self.state.get_item_by_id(item_id) or {}
        if current.get("key") == key:
            return item_id
        target = self.state.get_item_by_key(self.instance_id, key)
        if target is not None and target["id"] != item_id and target.get("seen_job") == self.job_id and (
            (target.get("fetched_at") or 0) >= self.started_at
        ):
            self.state.update_item(item_id, status="skipped", error=f"duplicate of {key}", pending_job=None)
            self.log_job(f"Skipped: same page as {key} (canonical URL / redirect)", url=requested)
            self.state.incr_job(self.job_id, skipped=1)
            return None
        if target is None:
            target = self.state.ensure_item(
                self.instance_id,
                key,
                origin=current.get("origin") or "link",
                priority=current.get("priority", 0.5),
                seq=current.get("seq", 0),
                depth=current.get("depth", 0),
            )
        self.state.update_item(target["id"], seen_job=self.job_id)
        if target["id"] != item_id:
            self.state.update_item(item_id, status="skipped", error=f"collapsed into {key}", pending_job=None)
            self.log_job(f"stored as {key} (canonical URL / redirect target)", url=requested)
        return target["id"]

    # --- pages -------------------------------------------------------------------------------
    async def parse_page(self, response: Response) -> None:
        self.pages_answered += 1
        try:
            await self._parse_page(response)
        finally:  # distributed: answered only now, after the links it found were pushed
            self._shared_done(response.request)

    async def _parse_page(self, response: Response) -> None:
        self.in_flight -= 1
        item_id = response.meta["item_id"]
        if self.renderer is not None:
            await self.renderer.release(response.meta)
        if status_ok(response.status) or response.status == 304:
            self._follow_links(response, item_id)
        if status_ok(response.status):
            collapsed = self._collapse_to_key(response, item_id)
            if collapsed is None:
                self._top_up()
                return
            item_id = collapsed
        self.fetch_order.append(response.request.url if response.request else response.url)
        status = response.status
        now = time.time()
        checked = {"checked_at": now, "checked_lastmod": response.meta.get("sitemap_lastmod")}
        if status == 304:
            self.state.update_item(item_id, http_status=304, status="indexed", error=None, **checked)
            self.state.incr_job(self.job_id, not_modified=1)
        elif status in (404, 410) and not (self.state.get_item_by_id(item_id) or {}).get("indexed_at"):
            # never indexed: a broken link (in a sitemap or a page), an error to show, nothing to remove
            message = f"HTTP {status}: listed but not found (nothing to index)"
            self.state.update_item(item_id, status="error", http_status=status, error=message, pending_job=None, **checked)
            self.state.incr_job(self.job_id, fetched=1, errors=1)
            self.log_job(message, url=response.url, level="error")
        elif status in (404, 410):  # chunks removed when the crawl ends (safety guard: _apply_deletions)
            self.state.update_item(item_id, http_status=status, error=f"HTTP {status}", **checked)
            if self.shared is not None:
                self.shared.add_gone(item_id, status)
            else:
                self.gone.append((item_id, status))
            self.state.incr_job(self.job_id, fetched=1)
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
                    headers=_headers(response),
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
                delete_reason=None,
                **checked,
                # distributed: a page re-queued from a dead worker may still carry that worker's indexing claim
                **(RELEASE_CLAIM if self.shared is not None else {}),
            )
            self.state.incr_job(self.job_id, fetched=1)
            await self._maybe_index(item_id)
        self._top_up()

    async def _maybe_index(self, item_id: str) -> None:
        if self.indexer_sink is not None:
            await self.indexer_sink(item_id)

    def page_failed(self, failure: Failure) -> None:
        try:
            self._page_failed(failure)
        finally:
            self._shared_done(getattr(failure, "request", None))

    def _page_failed(self, failure: Failure) -> None:
        self.in_flight -= 1
        if self.renderer is not None and getattr(failure, "request", None) is not None:
            asyncio.ensure_future(self.renderer.release(failure.request.meta))
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

    # --- distributed crawl (SITESEARCH_REDIS_URL; crawler/shared_frontier.py) ------------------
    def _on_opened_shared(self, spider: scrapy.Spider) -> None:
        from scrapy.utils.asyncio import create_looping_call

        # a worker whose queue ran dry looks at Redis again every 0.5 s, not every 5 s
        self.crawler.engine._SLOT_HEARTBEAT_INTERVAL = 0.5
        self.tick = create_looping_call(self._tick_shared)
        self.tick.start(1.0, now=False)
        assert self.shared is not None
        role = "leader" if self.shared.is_leader else "follower"
        self.log_job(f"distributed crawl: worker {self.shared.worker_id} is a {role}")

    def _tick_shared(self) -> None:
        """Every second: heartbeat, leadership refresh, (leader) keep the shared queue filled; stop if cancelled."""
        assert self.shared is not None
        self.ticks += 1
        try:
            self.shared.heartbeat()
            self._feed_shared()
            if self.ticks % 5 == 0 and (self.state.get_job(self.job_id) or {}).get("status") not in ("queued", "running"):
                self.log_job(f"worker {self.shared.worker_id}: the job has ended elsewhere, stopping", level="warning")
                self.tick.stop()
                deferred_from_coro(self.crawler.engine.close_spider_async(reason="cancelled"))
        except Exception:  # Redis or database hiccup: retried next tick
            logger.exception("distributed crawl: tick failed")

    def shared_ready(self) -> bool:
        """True once this worker has the leader's robots.txt (needed for links and Crawl-delay)."""
        if self.shared is None or self.shared_robots_loaded:
            return True
        published = self.shared.robots()
        if published is None:
            return False
        policy, body = published
        if policy == "parse":
            self.robots = RobotsTxt.parse(body)
            self._apply_crawl_delay()
        else:
            self.robots = RobotsTxt.allow_all() if policy == "allow_all" else RobotsTxt.disallow_all()
        self.shared_robots_loaded = True
        return True

    def _share_robots(self, policy: str, body: bytes = b"") -> None:
        """Leader: publish the robots.txt outcome for the other workers."""
        if self.shared is not None:
            self.shared.publish_robots(policy, body)
            self.shared_robots_loaded = True

    def _push_links(self, keys: list[str]) -> None:
        """Queue newly found links for any worker (the shared dupefilter drops those already queued)."""
        now = time.time()
        not_due: list[tuple[str | None, str, str]] = []
        for key in keys:
            item = self.state.get_item_by_key(self.instance_id, key)
            if item is None:
                continue
            decision = decide(item, lastmod=item.get("lastmod"), changefreq=item.get("changefreq"), now=now, max_age=self.max_age)
            if not decision.fetch:
                not_due.append((key, decision.reason, "info"))
                continue
            self.pages_scheduled += 1
            self.crawler.engine.crawl(self._page_request(item))
        if not_due:
            self.state.log_many(self.job_id, not_due)
            self.state.incr_job(self.job_id, not_modified=len(not_due))

    def _feed_shared(self) -> None:
        """Leader: top the shared queue up from the frontier; say so once everything is queued."""
        assert self.shared is not None
        if not self.shared.is_leader or not self.discovery_done:
            return
        if not self.frontier_exhausted and self.shared.queue_len() < max(1, self.settings_obj.frontier_batch // 2):
            self._schedule_frontier()
        if self.frontier_exhausted and not self.shared_fed:
            self.shared_fed = True
            self.shared.set_fed(sitemap_failures=self.sitemap_failures)
            self.log_job("every frontier URL is queued for the workers")

    def _on_idle_shared(self) -> None:
        """Stay open while the job has work anywhere; the first worker to see it drained finalizes."""
        sf = self.shared
        assert sf is not None
        if not sf.is_leader and not sf.fed() and not sf.leader_alive() and sf.try_lead():
            self.log_job(f"worker {sf.worker_id} takes over as leader: discovery starts again", level="warning")
            self.crawler.engine.crawl(self._robots_request())
            raise DontCloseSpider
        if sf.is_leader and not self.discovery_done and not self.shared_fed:
            self.shared_fed = True  # idle before discovery ended: robots.txt stopped this sync
            sf.set_fed(aborted=True)
        self._feed_shared()
        if sf.drain_state() != "drained":
            raise DontCloseSpider
        if sf.claim_finalizer():
            if sf.fed() != "aborted":
                self.gone = sf.gone()
                self.sitemap_failures = sf.sitemap_failures()
                self.deletions_done = True
                self._apply_deletions()
            sf.mark_closed()
            self.log_job("shared frontier drained: every worker is done")
        elif not sf.closed():
            raise DontCloseSpider  # wait for the finalizer's deletions before this worker ends

    def _shared_done(self, request: Request | None) -> None:
        if self.shared is not None:
            self.shared.done(request)

    def _close_shared(self, reason: str) -> None:
        sf = self.shared
        assert sf is not None
        if self.tick is not None and self.tick.running:
            self.tick.stop()
        sf.leave()
        if reason == "finished":
            self.state.update_job(self.job_id, crawl_done=True)
        elif not sf.closed() and sf.live_workers() == 0:
            status = "cancelled" if reason in ("cancelled", "shutdown") else "failed"
            self.state.finish_job(self.job_id, status, f"crawl ended: {reason} (last worker)")
            sf.expire_all()
        self.log_job(f"worker {sf.worker_id} finished ({reason}); it fetched {self.pages_answered} pages")

    # --- job bookkeeping ------------------------------------------------------------------
    def log_job(self, message: str, *, url: str | None = None, level: str = "info") -> None:
        """Record a line in the job log (and the process log)."""
        logger.log(logging.getLevelName(level.upper()), "%s%s", message, f" [{url}]" if url else "")
        self.state.log(self.job_id, message, url=url, level=level)

    def _on_closed(self, spider: scrapy.Spider, reason: str) -> None:
        self._flush_discovered()
        if self.shared is not None:
            self._close_shared(reason)
            return
        self.state.update_job(self.job_id, crawl_done=True)
        if reason != "finished":
            status = "cancelled" if reason in ("cancelled", "shutdown") else "failed"
            self.state.finish_job(self.job_id, status, f"crawl ended: {reason}")
        self.log_job(f"crawl finished ({reason}); {self.pages_scheduled} pages requested")


def _group_by_status(gone: list[tuple[str, int]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for item_id, status in gone:
        out.setdefault(status, []).append(item_id)
    return out


def status_ok(status: int) -> bool:
    """A 2xx answer (a page with content)."""
    return 200 <= status < 300


def _header(response: Response, name: str) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value else None


def _headers(response: Response) -> dict[str, str]:
    """All response headers as text, repeated ones joined by ``, ``."""
    return {k.decode("latin-1"): b", ".join(v).decode("latin-1") for k, v in response.headers.items()}
