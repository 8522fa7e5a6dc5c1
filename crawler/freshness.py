"""Change detection: is a known URL due for a (conditional) re-fetch at this sync?

Pure: item state + the sitemap entry seen at this sync + ``now`` in, a
:class:`Decision` out.  The spider calls :func:`decide` for every URL in the
frontier; URLs that are not due are not requested at all (their chunks stay).
The rules, in order (see ``docs/freshness.md``):

1. Never fetched, errored last time, or removed earlier because it vanished from the
   sitemaps → due.  Already fetched by an earlier (e.g. interrupted) job and waiting
   for the indexer → not due: the stored copy is indexed, not fetched again.
2. Sitemap ``<lastmod>`` present (and parseable):
   * equal to the ``<lastmod>`` recorded when we last checked the page → not due;
   * later than the last successful check (200, 304, 404, 410) → due;
   * later than the ``<lastmod>`` recorded at that check → due (date-only values);
   * otherwise → not due.
3. No ``<lastmod>``: ``<changefreq>`` gives the re-check interval (``always`` = every
   sync, ``hourly``, ``daily``, ``weekly``, ``monthly`` = 30 d, ``yearly`` = 365 d,
   ``never`` = only once); neither → daily.  A tenth of the interval (at most an hour)
   is allowed as slack, so a daily page on a daily schedule is not skipped because
   the previous sync reached it a few minutes later in its run.
4. ``max_age`` (the instance's ``discover_options.max_age``, seconds) caps how old a
   check may get whatever rules 2-3 say.

"Due" means a conditional GET (``If-None-Match`` / ``If-Modified-Since``) when we hold
validators, so a due but unchanged page usually costs one 304 and no extraction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from crawler.sitemaps import parse_lastmod

logger = logging.getLogger(__name__)

HOUR = 3600.0
DAY = 86400.0
#: Seconds between re-checks for each ``<changefreq>`` value (``never``: no re-check).
CHANGEFREQ_SECONDS: dict[str, float | None] = {
    "always": 0.0,
    "hourly": HOUR,
    "daily": DAY,
    "weekly": 7 * DAY,
    "monthly": 30 * DAY,
    "yearly": 365 * DAY,
    "never": None,
}
GONE_STATUSES = (404, 410)
DEFAULT_INTERVAL = DAY  # neither lastmod nor changefreq: once a day
SLACK_FRACTION = 0.1  # of the interval ...
MAX_SLACK = HOUR  # ... but at most this many seconds


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to fetch a URL at this sync, and why (the reason goes to the job log)."""

    fetch: bool
    reason: str


def decide(
    item: Mapping[str, Any],
    *,
    lastmod: str | None,
    changefreq: str | None,
    now: float,
    max_age: float | None = None,
) -> Decision:
    """Decide whether a frontier URL is due for fetching.

    Args:
        item: the URL's stored state (``status``, ``error``, ``http_status``, ``checked_at``,
            ``fetched_at``, ``checked_lastmod``); an empty mapping for a URL never seen.
        lastmod: the sitemap ``<lastmod>`` seen at this sync, as written (None if absent).
        changefreq: the sitemap ``<changefreq>`` seen at this sync (None if absent).
        now: the current time (epoch seconds).
        max_age: re-check anything last checked longer ago than this (seconds), if set.

    Returns:
        A :class:`Decision`.
    """
    status = item.get("status")
    checked_at = item.get("checked_at") or item.get("fetched_at")
    if not status or status == "queued" or not checked_at:
        return Decision(True, "new: never fetched")
    if status == "fetched":  # a previous job stored it (or marked it for removal): the index owner finishes it
        return Decision(False, "already fetched: waiting to be indexed")
    if status == "error":
        return Decision(True, "retry: indexing failed last time")
    if status == "deleted" and item.get("http_status") not in GONE_STATUSES:
        return Decision(True, "listed again after it was removed")
    if item.get("error") and status != "deleted":
        return Decision(True, f"retry: {item['error']}")
    age = max(0.0, now - float(checked_at))
    if max_age is not None and age >= max_age:
        return Decision(True, f"last checked {_dur(age)} ago, over max_age {_dur(max_age)}")

    lm = parse_lastmod(lastmod) if lastmod else None
    if lm is not None:
        previous = item.get("checked_lastmod")
        prev_lm = parse_lastmod(previous) if previous else None
        if prev_lm is not None and lm == prev_lm:
            return Decision(False, "not modified: sitemap lastmod unchanged since the last fetch")
        if lm.timestamp() > float(checked_at):
            return Decision(True, f"sitemap lastmod {lastmod} is after the last fetch")
        if prev_lm is not None and lm > prev_lm:
            return Decision(True, f"sitemap lastmod moved forward to {lastmod}")
        return Decision(False, f"not modified: sitemap lastmod {lastmod} is before the last fetch")

    freq = (changefreq or "").strip().lower()
    if freq in CHANGEFREQ_SECONDS:
        interval = CHANGEFREQ_SECONDS[freq]
        label = f"changefreq {freq}"
    else:
        interval, label = DEFAULT_INTERVAL, "no lastmod or changefreq (daily)"
    if interval is None:
        return Decision(False, "not modified: changefreq never")
    slack = min(interval * SLACK_FRACTION, MAX_SLACK)
    if age >= interval - slack:
        return Decision(True, f"{label}: last checked {_dur(age)} ago")
    return Decision(False, f"not modified: {label}, last checked {_dur(age)} ago")


def _dur(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * HOUR:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * DAY:
        return f"{seconds / HOUR:.1f} h"
    return f"{seconds / DAY:.1f} d"
