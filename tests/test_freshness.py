"""The due-for-fetch rules of crawler/freshness.py (pure: state + sitemap entry + now)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from crawler.freshness import CHANGEFREQ_SECONDS, DAY, HOUR, decide

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc).timestamp()


def indexed(checked_ago: float, **extra: Any) -> dict[str, Any]:
    """An item indexed at some point, last checked ``checked_ago`` seconds before NOW."""
    return {"status": "indexed", "checked_at": NOW - checked_ago, "http_status": 200, **extra}


def fetch(item: dict[str, Any], lastmod: str | None = None, changefreq: str | None = None, **kw: Any) -> bool:
    return decide(item, lastmod=lastmod, changefreq=changefreq, now=NOW, **kw).fetch


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({}, "new"),
        ({"status": "queued"}, "new"),
        ({"status": "indexed", "checked_at": None, "fetched_at": None}, "new"),
        ({"status": "error", "checked_at": NOW - 60}, "retry"),
        ({"status": "indexed", "checked_at": NOW - 60, "error": "HTTP 503"}, "HTTP 503"),
        ({"status": "deleted", "checked_at": NOW - 60, "http_status": 200}, "listed again"),
    ],
)
def test_always_due_states(item: dict[str, Any], reason: str) -> None:
    d = decide(item, lastmod="2020-01-01", changefreq="never", now=NOW)
    assert d.fetch and reason in d.reason


def test_fetched_item_waits_for_the_indexer() -> None:
    d = decide({"status": "fetched", "checked_at": NOW - 60}, lastmod=None, changefreq="always", now=NOW)
    assert not d.fetch and "waiting to be indexed" in d.reason


def test_lastmod_after_last_fetch_is_due() -> None:
    item = indexed(HOUR, checked_lastmod="2026-11-01")
    d = decide(item, lastmod="2026-11-24T11:30:00Z", changefreq=None, now=NOW)
    assert d.fetch and "after the last fetch" in d.reason


def test_lastmod_before_last_fetch_is_not_due_even_with_changefreq_always() -> None:
    item = indexed(HOUR, checked_lastmod="2026-11-01")
    d = decide(item, lastmod="2026-11-01", changefreq="always", now=NOW)
    assert not d.fetch and d.reason.startswith("not modified")


def test_unchanged_lastmod_in_the_future_is_not_refetched() -> None:
    # a site whose clock runs ahead (or that lists future dates) must not be re-crawled every sync
    item = indexed(HOUR, checked_lastmod="2026-12-31T00:00:00Z")
    assert not fetch(item, "2026-12-31T00:00:00+00:00")  # same instant, other spelling
    assert fetch(item, "2027-01-01T00:00:00Z")


def test_date_only_lastmod_moving_forward_is_due() -> None:
    # checked at 10:00 on the 24th with lastmod the 23rd; the sitemap now says the 24th (midnight < 10:00)
    item = {"status": "indexed", "checked_at": NOW - 2 * HOUR, "checked_lastmod": "2026-11-23"}
    d = decide(item, lastmod="2026-11-24", changefreq=None, now=NOW)
    assert d.fetch and "moved forward" in d.reason


def test_item_without_recorded_lastmod_compares_with_fetch_time() -> None:
    item = indexed(2 * DAY)  # e.g. the sitemap had no lastmod last time
    assert fetch(item, "2026-11-23T12:00:00Z")
    assert not fetch(item, "2026-11-21T12:00:00Z")


def test_unparseable_lastmod_falls_back_to_changefreq() -> None:
    assert fetch(indexed(2 * HOUR), "yesterday-ish", "hourly")
    assert not fetch(indexed(2 * HOUR), "yesterday-ish", "weekly")


@pytest.mark.parametrize("freq", [f for f in CHANGEFREQ_SECONDS if f != "never"])
def test_changefreq_intervals(freq: str) -> None:
    interval = CHANGEFREQ_SECONDS[freq]
    assert interval is not None
    assert fetch(indexed(interval + 1), None, freq)
    if interval:
        assert not fetch(indexed(interval * 0.5), None, freq)


def test_changefreq_always_is_every_sync_and_never_is_once() -> None:
    assert fetch(indexed(1), None, "always")
    assert not fetch(indexed(3650 * DAY), None, "never")


def test_slack_is_a_tenth_of_the_interval_at_most_an_hour() -> None:
    assert fetch(indexed(DAY - 50 * 60), None, "daily")  # 50 min early: within the 1 h cap
    assert not fetch(indexed(DAY - 70 * 60), None, "daily")
    assert fetch(indexed(HOUR - 5 * 60), None, "hourly")  # 6 min slack
    assert not fetch(indexed(HOUR - 7 * 60), None, "hourly")


def test_neither_lastmod_nor_changefreq_means_daily() -> None:
    assert not fetch(indexed(12 * HOUR))
    d = decide(indexed(25 * HOUR), lastmod=None, changefreq=None, now=NOW)
    assert d.fetch and "daily" in d.reason
    assert fetch(indexed(25 * HOUR), None, "not-a-frequency")


def test_gone_page_follows_the_normal_rules() -> None:
    gone = {"status": "deleted", "checked_at": NOW - HOUR, "http_status": 410, "error": "HTTP 410"}
    assert not fetch(gone, None, "daily")
    assert fetch(gone, None, "hourly")


def test_max_age_caps_staleness() -> None:
    item = indexed(3 * DAY, checked_lastmod="2020-01-01")
    assert not fetch(item, "2020-01-01")
    d = decide(item, lastmod="2020-01-01", changefreq=None, now=NOW, max_age=2 * DAY)
    assert d.fetch and "max_age" in d.reason


def test_fetched_at_is_the_baseline_for_older_rows() -> None:
    item = {"status": "indexed", "fetched_at": NOW - HOUR}
    assert not fetch(item, "2026-11-01")
    assert fetch(item, "2026-11-24T11:59:00Z")
