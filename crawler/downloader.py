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

With ``SITESEARCH_REDIS_URL`` (``REDIS_URL``, several workers crawling one site)
both limits are also held cluster-wide: before each download the worker takes a
lease from the host's shared budget (:mod:`crawler.politeness`), with
``CONCURRENT_REQUESTS_PER_DOMAIN`` leases per host and ``max(Crawl-delay,
DOWNLOAD_DELAY)`` between request starts across all workers.

Enabled with ``DOWNLOADER = "crawler.downloader.PoliteDownloader"``.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Any

from scrapy import signals
from scrapy.core.downloader import Downloader, Slot, _process_pending_io
from scrapy.http import Request, Response
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro
from scrapy.utils.httpobj import urlparse_cached

from crawler.politeness import HostBudget

logger = logging.getLogger(__name__)


class PoliteDownloader(Downloader):
    """Scrapy's downloader with a correct per-slot concurrency limit and a Crawl-delay floor."""

    LEASE = "sitesearch_host_lease"  # request.meta key: (host, token) of the shared budget lease

    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.budget: HostBudget | None = None
        url = crawler.settings.get("REDIS_URL")
        if url:
            import redis

            lease_ttl = crawler.settings.getfloat("DOWNLOAD_TIMEOUT", 180.0) + 10.0  # a dead worker's lease lapses
            self.budget = HostBudget(redis.Redis.from_url(url), lease_ttl=lease_ttl)

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
            if self.budget is not None:
                wait = self._acquire_shared(slot.queue[0][0], floor)
                if wait > 0:  # another worker is using this host's budget
                    slot.latercall = call_later(wait, self._latercall, slot)
                    return
            slot.lastseen = now
            request, queue_dfd = slot.queue.popleft()
            slot.transferring.add(request)  # reserve now; _download() adds (no-op) and removes it
            _schedule_coro(self._wait_for_download(slot, request, queue_dfd))
            if delay:
                self._process_queue(slot)
                break

    # --- the cluster-wide budget (Redis mode) -----------------------------------------
    def _acquire_shared(self, request: Request, floor: float) -> float:
        """Take a lease on the request's host; 0 when granted, else seconds to wait."""
        assert self.budget is not None
        host = _budget_host(request)
        token = HostBudget.new_token()
        wait = self.budget.acquire(
            host, token, max_concurrency=self.domain_concurrency, delay=max(floor, self._delay)
        )
        if wait <= 0:
            request.meta[self.LEASE] = (host, token)
        return wait

    def _release_shared(self, request: Request) -> None:
        lease = request.meta.pop(self.LEASE, None)
        if lease is not None and self.budget is not None:
            try:
                self.budget.release(*lease)
            except Exception:  # the lease expires on its own
                logger.warning("could not release the host lease of %s", request.url, exc_info=True)

    async def _download(self, slot: Slot, request: Request) -> Response:
        """Scrapy's ``_download``, giving the shared lease back before the slot's queue moves on."""
        if self.budget is None:
            return await super()._download(slot, request)
        slot.transferring.add(request)
        try:
            response: Response = await self.handlers.download_request_async(request)
            self.signals.send_catch_log(
                signal=signals.response_downloaded, response=response, request=request, spider=self.crawler.spider
            )
            return response
        except Exception:
            await _process_pending_io()
            raise
        finally:
            slot.transferring.remove(request)
            self._release_shared(request)
            self._process_queue(slot)
            self.signals.send_catch_log(signal=signals.request_left_downloader, request=request, spider=self.crawler.spider)


def _budget_host(request: Request) -> str:
    """``host[:port]``: the unit the shared budget is kept for."""
    parsed = urlparse_cached(request)
    host = parsed.hostname or ""
    return f"{host}:{parsed.port}" if parsed.port else host
