"""Scrapy settings, derived from the one typed settings object (:mod:`indexer.config`).

Scrapy reads this module through ``scrapy.cfg`` (``scrapy crawl site -a instance=ID``)
or ``SCRAPY_SETTINGS_MODULE=crawler.settings``.  Edit defaults in ``indexer/config.py``,
not here.
"""

from __future__ import annotations

from pydantic import ValidationError

from indexer.config import get_settings, settings_errors

try:
    _s = get_settings()
except ValidationError as _exc:  # a bad SITESEARCH_* variable: say which, not a traceback
    raise SystemExit("\n".join(f"sitesearch: {line}" for line in settings_errors(_exc))) from None

BOT_NAME = "sitesearch"
SPIDER_MODULES = ["crawler.spiders"]
NEWSPIDER_MODULE = "crawler.spiders"

USER_AGENT = _s.user_agent
# robots.txt is fetched and obeyed by the spider itself (RFC 9309 matcher in crawler/robots.py),
# because Scrapy's middleware neither follows RFC 9309's status rules nor lets us log skips per job.
ROBOTSTXT_OBEY = False

# --- concurrency and politeness ---------------------------------------------------
CONCURRENT_REQUESTS = _s.concurrent_requests
CONCURRENT_REQUESTS_PER_DOMAIN = _s.concurrent_requests_per_host
DOWNLOAD_DELAY = _s.download_delay  # seconds; robots.txt Crawl-delay overrides per host
DOWNLOAD_DELAY_JITTER = 0.5  # ±50% random variation; crawler/downloader.py keeps Crawl-delay a hard minimum
AUTOTHROTTLE_ENABLED = _s.autothrottle
AUTOTHROTTLE_START_DELAY = 0.0  # seconds
AUTOTHROTTLE_TARGET_CONCURRENCY = float(_s.concurrent_requests_per_host)
DOWNLOAD_TIMEOUT = _s.download_timeout  # seconds

# --- downloads -----------------------------------------------------------------------
DOWNLOAD_MAXSIZE = 64 * 1024 * 1024  # bytes: sitemaps may be 50 MB; pages set their own 4 MB cap
DOWNLOAD_WARNSIZE = 0
REDIRECT_MAX_TIMES = 5  # RFC 9309 §2.3.1.2: follow at least five redirects
RETRY_TIMES = 2
COOKIES_ENABLED = False
COMPRESSION_ENABLED = True

# Strict priority order, FIFO within one priority (Scrapy's default is LIFO).
SCHEDULER_MEMORY_QUEUE = "scrapy.squeues.FifoMemoryQueue"
SCHEDULER_DISK_QUEUE = "scrapy.squeues.PickleFifoDiskQueue"

# --- scale-out (docs/scale-out.md): with SITESEARCH_REDIS_URL, workers share one frontier per job ---
REDIS_URL = _s.redis_url  # also read by crawler/downloader.py for the cluster-wide per-host budget
if REDIS_URL:
    SCHEDULER = "crawler.scheduler.SharedScheduler"
SHARED_FRONTIER_HEARTBEAT_TTL = 30  # seconds without a heartbeat before a worker's pages go back to the queue
SHARED_FRONTIER_LEADER_TTL = 60  # seconds without a refresh before another worker may take the lead

# --- services we do not want inside a crawler ----------------------------------------------
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
LOG_LEVEL = "INFO"
LOGSTATS_INTERVAL = 30.0  # seconds

# Per-host concurrency that holds, and robots.txt Crawl-delay applied (see crawler/downloader.py).
DOWNLOADER = "crawler.downloader.PoliteDownloader"

# --- browser rendering (only for instances with use_browser_rendering; see crawler/rendering.py) ---
RENDER_CONTEXT_PAGES = _s.render_context_pages  # pages per browser context before it is recycled

# --- our components ------------------------------------------------------------------------
EXTENSIONS = {"crawler.indexing.IndexingExtension": 500}
# late in the chain, so a request another middleware drops never holds a browser context
DOWNLOADER_MIDDLEWARES = {"crawler.rendering.RenderContextMiddleware": 950}
