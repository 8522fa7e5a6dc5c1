"""Run one crawl job in this process: ``python -m crawler.run INSTANCE [--job JOB_ID]``.

The API server starts jobs this way in a child process (so Twisted's reactor
never lives inside the API process); ``sitesearch crawl ID`` calls :func:`run_crawl`.
Equivalent to ``scrapy crawl site -a instance=ID`` from the repository root.

With ``SITESEARCH_REDIS_URL`` this is one worker of the job: start more (this
command or ``scrapy crawl site -a instance=ID``, on any machine sharing the
database, Redis and a Chroma server) and they join the instance's running job,
sharing its frontier (docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import os
import sys


def run_crawl(
    instance_id: str,
    job_id: str | None = None,
    *,
    log_level: str | None = None,
    overrides: dict[str, str] | None = None,
) -> int:
    """Crawl one instance to completion; returns a process exit code.

    Args:
        instance_id: the instance to crawl.
        job_id: an existing queued job to run (a new ``cli`` job is created if omitted).
        log_level: Scrapy log level override (e.g. ``WARNING``).
        overrides: Scrapy settings to set for this run (``-s NAME=VALUE``), e.g. ``RENDER_CONTEXT_PAGES``.
    """
    os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "crawler.settings")
    from scrapy.crawler import CrawlerProcess
    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    if log_level:
        settings.set("LOG_LEVEL", log_level, priority="cmdline")
    for name, value in (overrides or {}).items():
        settings.set(name, value, priority="cmdline")
    process = CrawlerProcess(settings)
    kwargs = {"instance": instance_id}
    if job_id:
        kwargs["job"] = job_id
    process.crawl("site", **kwargs)
    process.start()
    return 0 if not getattr(process, "bootstrap_failed", False) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawler.run", description=__doc__)
    parser.add_argument("instance")
    parser.add_argument("--job", default=None)
    parser.add_argument("--log-level", default=None)
    parser.add_argument("-s", "--set", action="append", default=[], metavar="NAME=VALUE", help="Scrapy setting override")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    return run_crawl(args.instance, args.job, log_level=args.log_level, overrides=overrides)


if __name__ == "__main__":
    sys.exit(main())
