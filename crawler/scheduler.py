"""The Scrapy scheduler for distributed crawls (``SITESEARCH_REDIS_URL``): one frontier per job in Redis.

scrapy-redis's own ``Scheduler`` runs on Scrapy 2.19 but does not fit: its keys are
per spider name (``site:requests``), not per job; ``close()`` flushes the shared
queue and dupefilter unless ``SCHEDULER_PERSIST`` (the first worker to finish would
wipe the others' work); it sends every request to Redis, but robots.txt and sitemap
requests must stay with the leader (only it holds the sitemap walk); and its
priority queue orders equal priorities by pickled bytes, not FIFO.  So this thin
scheduler keeps two queues:

* **local** (Scrapy's own scheduler, in memory): robots.txt and sitemaps (no
  ``item_id``), and continuations of a request this worker already holds
  (redirects and retries of a request popped from Redis: the worker that popped
  it finishes it, so the in-flight count stays with one worker);
* **shared** (:class:`crawler.shared_frontier.JobQueue`, a scrapy-redis
  ``PriorityQueue`` subclass): fresh page requests, for whichever worker pops first.
  A worker pops only while it has fewer than ``CONCURRENT_REQUESTS_PER_DOMAIN``
  downloads under way (and fewer than twice that many pages unanswered), so it
  never sits on pages another worker could fetch.

Every request that is not ``dont_filter`` passes the job's shared dupefilter
(scrapy-redis ``RFPDupeFilter`` fingerprints), so no URL is fetched twice by the cluster.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.core.scheduler import BaseScheduler, Scheduler
from scrapy.http import Request

from crawler.shared_frontier import SHARED_META, SharedFrontier

logger = logging.getLogger(__name__)


class SharedScheduler(BaseScheduler):
    """Local queue for the worker's own requests, the job's Redis queue for pages."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.local = Scheduler.from_crawler(crawler)
        self.frontier: SharedFrontier | None = None
        self.spider: Any = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> SharedScheduler:
        return cls(crawler)

    def open(self, spider: Any) -> Any:
        self.spider = spider
        self.frontier = getattr(spider, "shared", None)
        if self.frontier is None:
            raise RuntimeError("SharedScheduler needs a spider with a SharedFrontier (`shared`)")
        self.frontier.open_queue(spider)
        return self.local.open(spider)

    def close(self, reason: str) -> Any:
        return self.local.close(reason)  # the shared queue outlives this worker

    def has_pending_requests(self) -> bool:
        if self.local.has_pending_requests():
            return True
        return self._shared_ready() and self.frontier is not None and self.frontier.queue_len() > 0

    def enqueue_request(self, request: Request) -> bool:
        assert self.frontier is not None
        if request.meta.get("item_id") is None or request.meta.get(SHARED_META):
            # ours to finish: robots.txt / sitemaps, or a redirect/retry of a popped page
            if not request.dont_filter and self.frontier.seen(request):
                return False
            return self.local.enqueue_request(request)
        queued = self.frontier.push(request)
        if queued and self.crawler.stats:
            self.crawler.stats.inc_value("scheduler/enqueued/redis")
        return queued

    def next_request(self) -> Request | None:
        request = self.local.next_request()
        if request is not None or not self._shared_ready() or self._holding_enough():
            return request
        assert self.frontier is not None
        request = self.frontier.pop()
        if request is not None and self.crawler.stats:
            self.crawler.stats.inc_value("scheduler/dequeued/redis")
        return request

    def _holding_enough(self) -> bool:
        """Take no more pages than can download at once: what a worker holds, others cannot fetch.

        Scrapy would pull up to ``CONCURRENT_REQUESTS`` into the downloader, most of them
        waiting there for the one host's slot, and keep pulling while fetched pages wait
        for this worker's indexer, while other workers sit idle.  So a worker holds at
        most ``CONCURRENT_REQUESTS_PER_DOMAIN`` downloads and twice that many unanswered pages.
        """
        assert self.frontier is not None
        limit = self.crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN")
        if not limit:
            return False
        return len(self.crawler.engine.downloader.active) >= limit or self.frontier.held >= 2 * limit

    def _shared_ready(self) -> bool:
        """Pages are taken only once the spider has the leader's robots.txt (for its links and Crawl-delay)."""
        ready = getattr(self.spider, "shared_ready", None)
        return bool(ready()) if ready is not None else True
