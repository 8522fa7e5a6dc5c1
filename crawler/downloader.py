"""A Scrapy downloader that keeps per-host limits: concurrency and robots.txt Crawl-delay.

Two gaps in Scrapy 2.19's :class:`scrapy.core.downloader.Downloader` are closed here:

* Its ``_process_queue`` schedules each download as a coroutine and only marks
  the request as transferring when that coroutine starts, so when several
  requests are queued for one host at once they all start together and
  ``CONCURRENT_REQUESTS_PER_DOMAIN`` is not honoured (seen with 1: seven pages
  in flight at once).  We reserve the transfer slot before scheduling.
* Scrapy parses ``Crawl-delay`` but never applies it.  The ``site`` spider records
  it per host in ``spider.crawl_delays``; every slot's delay is kept at least
  that large, whatever AutoThrottle computes.

Enabled with ``DOWNLOADER = "crawler.downloader.PoliteDownloader"``.
"""

from __future__ import annotations

import logging
from time import monotonic

from scrapy.core.downloader import Downloader, Slot
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro

logger = logging.getLogger(__name__)


class PoliteDownloader(Downloader):
    """Scrapy's downloader with a correct per-slot concurrency limit and a Crawl-delay floor."""

    def _crawl_delay_floor(self, slot: Slot) -> float:
        spider = self.crawler.spider
        delays = getattr(spider, "crawl_delays", None)
        if not delays:
            return 0.0
        key = next((k for k, s in self.slots.items() if s is slot), None)
        return float(delays.get(key, 0.0)) if key is not None else 0.0

    def _process_queue(self, slot: Slot) -> None:
        if slot.latercall:
            return
        floor = self._crawl_delay_floor(slot)
        if floor and slot.delay < floor:
            slot.delay = floor
        now = monotonic()
        delay = slot.download_delay()  # includes Scrapy's random jitter ...
        if floor:
            delay = max(delay, floor)  # ... which must never undercut Crawl-delay
        if delay:
            penalty = delay - now + slot.lastseen
            if penalty > 0:
                slot.latercall = call_later(penalty, self._latercall, slot)
                return
        while slot.queue and slot.free_transfer_slots() > 0:
            slot.lastseen = now
            request, queue_dfd = slot.queue.popleft()
            slot.transferring.add(request)  # reserve now; _download() adds (no-op) and removes it
            _schedule_coro(self._wait_for_download(slot, request, queue_dfd))
            if delay:
                self._process_queue(slot)
                break
