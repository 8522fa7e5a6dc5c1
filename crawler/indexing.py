"""Scrapy extension: index fetched pages inside the crawler when this process owns the vector store.

Ownership: with ``SITESEARCH_CHROMA_URL`` (a Chroma server) every process may
write; with the embedded store only the process holding its lock may (see
:mod:`indexer.vectorstore`).  When ``sitesearch serve`` is running it holds the
lock, so a crawl it starts leaves pages ``fetched`` and the server's index worker
embeds them; a standalone ``scrapy crawl`` takes the lock and indexes itself.

Distributed crawls (``SITESEARCH_REDIS_URL``): with a Chroma server every worker
indexes the pages it fetched, from its own raw store.  With the embedded store
(workers on one machine sharing a data directory) the worker holding the lock
indexes its pages as it goes and, when the job has drained, the rest.

Indexing runs on one worker thread so embeddings never compete with each other
for the CPU, and the spider awaits it, which throttles fetching to indexing speed.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy import signals
from scrapy.utils.defer import deferred_to_future
from twisted.internet import reactor, threads
from twisted.python.threadpool import ThreadPool

from indexer.config import get_settings
from indexer.service import IndexService

logger = logging.getLogger(__name__)


class IndexingExtension:
    """Wires an :class:`~indexer.service.IndexService` into the ``site`` spider when we own the store."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.service: IndexService | None = None
        self.pool: ThreadPool | None = None

    @classmethod
    def from_crawler(cls, crawler: Any) -> IndexingExtension:
        ext = cls(crawler)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self, spider: Any) -> None:
        if getattr(spider, "name", None) != "site":
            return
        settings = get_settings()
        if settings.redis_url and not settings.chroma_url:
            spider.log_job(
                "distributed crawl with the embedded vector store: only workers sharing this data directory "
                "can be indexed; use a Chroma server (SITESEARCH_CHROMA_URL) for workers on several machines",
                level="warning",
            )
        service = IndexService.try_open(settings, state=spider.state)
        if service is None:
            spider.log_job("the API server owns the index: it will index the fetched pages")
            return
        self.service = service
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="sitesearch-indexer")
        self.pool.start()
        spider.indexer_sink = self._index
        spider.log_job("indexing in the crawler process")

    async def _index(self, item_id: str) -> None:
        assert self.service is not None and self.pool is not None
        d = threads.deferToThreadPool(reactor, self.pool, self.service.index_item_id, item_id)
        await deferred_to_future(d)

    def spider_closed(self, spider: Any, reason: str) -> None:
        if self.service is None:
            return
        try:
            if reason == "finished":
                self.service.drain()
                spider.state.update_job(spider.job_id, crawl_done=True)
                self.service.complete_finished_jobs()
        finally:
            if self.pool is not None:
                self.pool.stop()
            self.service.close()
