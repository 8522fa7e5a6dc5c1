"""Distributed crawling (issue #7): workers sharing one Redis frontier, and the cluster-wide host budget.

The multi-process tests start real ``scrapy crawl site -a instance=ID`` workers
against a DevSite, with a real Redis and a real Chroma server (tests/services.py),
and a SQLite state database in a data directory both workers share.
"""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import redis
import scrapy
from fastapi.testclient import TestClient
from scrapy.http import Request

from crawler.politeness import CAP_POLL, HostBudget
from crawler.shared_frontier import SharedFrontier
from indexer.config import Settings
from indexer.state import StateStore
from server.app import create_app
from server.devsite import DevSite, write_sitemap_site
from tests.conftest import API_TOKEN, make_settings, wait_until
from tests.services import start_crawl_worker, wait_exit

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
WORDS = ["amber", "basalt", "cobalt", "dune", "ember", "fjord", "granite", "heath", "indigo", "juniper"]


def word(i: int) -> str:
    """A made-up word found on page ``i`` only."""
    return "zq" + WORDS[i % 10] + WORDS[(i // 10) % 10] + WORDS[(i // 100) % 10]


def write_pages(root: Path, n: int) -> None:
    for i in range(n):
        w = word(i)
        (root / f"p{i}.html").write_text(
            f"<!doctype html><html><head><title>Page {w}</title></head><body><main><h1>Page {w}</h1>"
            f"<p>The keeper of {w} writes down the weather every morning, and the notes of {w} go back "
            f"{10 + i % 50} years to the first keeper of the valley.</p></main></body></html>"
        )


def create_instance(settings: Settings, instance_id: str, site: DevSite) -> None:
    with TestClient(create_app(settings)) as client:
        body = {"id": instance_id, "type": "web-crawler", "source": site.url}
        r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
        assert r.status_code == 200, r.text


def start_workers(
    settings: Settings, instance_id: str, logs: Path, n: int = 2, *, first: int = 0, scrapy_settings: tuple[str, ...] = ()
) -> list[subprocess.Popen[bytes]]:
    """``n`` workers ``scrapy crawl site -a instance=ID`` (logs ``w{k}.log`` from ``first``)."""
    assert settings.redis_url and settings.chroma_url
    return [start_crawl_worker(settings, instance_id, logs / f"w{k}.log", *scrapy_settings) for k in range(first, first + n)]


def wait_workers(procs: list[subprocess.Popen[bytes]], logs: Path, timeout: float, *, first: int = 0) -> None:
    wait_exit(procs, [logs / f"w{k}.log" for k in range(first, first + len(procs))], timeout)


def assert_pages_found(settings: Settings, instance_id: str, pages: Iterable[int]) -> None:
    """Page ``i`` is the first keyword hit for its own word (it was fetched, extracted and indexed)."""
    with TestClient(create_app(settings)) as client:
        for i in pages:
            r = client.post(
                f"{ACCOUNT}/instances/{instance_id}/search",
                json={"query": word(i), "ai_search_options": {"retrieval": {"retrieval_type": "keyword", "max_num_results": 3}}},
                headers=AUTH,
            )
            hits = r.json()["result"]["data"]
            assert hits and hits[0]["filename"].endswith(f"p{i}.html"), (i, hits)


def per_worker_pages(state: StateStore, job_id: str) -> list[int]:
    """Pages each worker answered, from its last job log line (``worker X finished ...; it fetched N pages``)."""
    lines, _ = state.job_logs(job_id, limit=100_000)
    return [int(l["message"].rsplit("fetched ", 1)[1].split()[0]) for l in lines if "it fetched" in l["message"]]


# --- the Lua host budget, against the real Redis ------------------------------------------------
def test_host_budget_caps_concurrency_spaces_starts_and_expires_leases(redis_url: str) -> None:
    budget = HostBudget(redis.Redis.from_url(redis_url))
    host = f"unit-{uuid.uuid4().hex[:8]}:80"
    # concurrency cap of 2
    assert budget.acquire(host, "a", max_concurrency=2, delay=0, now=100.0, lease_ttl=10) == 0
    assert budget.acquire(host, "b", max_concurrency=2, delay=0, now=100.0, lease_ttl=10) == 0
    wait = budget.acquire(host, "c", max_concurrency=2, delay=0, now=100.0, lease_ttl=10)
    assert 0 < wait <= CAP_POLL
    assert budget.release(host, "a") is True
    assert budget.release(host, "a") is False
    assert budget.acquire(host, "c", max_concurrency=2, delay=0, now=100.5, lease_ttl=10) == 0
    assert budget.acquire(host, "d", max_concurrency=2, delay=0, now=105.0, lease_ttl=10) > 0
    # leases b and c were never released: they expire after their TTL
    assert budget.acquire(host, "d", max_concurrency=2, delay=0, now=110.6, lease_ttl=10) == 0
    assert budget.acquire(host, "e", max_concurrency=2, delay=0, now=110.6, lease_ttl=10) == 0
    # delay between starts, whatever the concurrency allows
    other = f"unit-{uuid.uuid4().hex[:8]}"
    assert budget.acquire(other, "a", max_concurrency=5, delay=1.5, now=200.0) == 0
    assert budget.acquire(other, "b", max_concurrency=5, delay=1.5, now=200.5) == pytest.approx(1.0)
    assert budget.acquire(other, "b", max_concurrency=5, delay=1.5, now=201.5) == 0
    assert budget.acquire(other, "c", max_concurrency=5, delay=1.5, now=202.0) == pytest.approx(1.0)
    # the Redis server's clock by default
    live = f"unit-{uuid.uuid4().hex[:8]}"
    assert budget.acquire(live, "a", max_concurrency=1, delay=1.0) == 0
    assert 0 < budget.acquire(live, "b", max_concurrency=1, delay=1.0) <= 1.0


# --- the shared frontier's bookkeeping, against the real Redis ----------------------------------------
def test_shared_queue_order_dupefilter_drain_and_dead_worker_requeue(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    job = uuid.uuid4().hex
    spider = scrapy.Spider(name="site")
    a, b = SharedFrontier(r, job, worker_id="a"), SharedFrontier(r, job, worker_id="b")
    assert a.join() is True and b.join() is False  # the first to join leads
    a.open_queue(spider)
    b.open_queue(spider)

    def page(n: int, priority: int) -> Request:
        return Request(f"http://example.test/{n}", priority=priority, meta={"item_id": str(n)})

    for n, prio in [(1, 0), (2, 500), (3, 1000), (4, 500), (5, 500)]:
        assert a.push(page(n, prio)) is True
    assert a.push(page(2, 900)) is False  # the job's dupefilter
    assert b.drain_state() == "discovering"
    a.set_fed()
    assert b.drain_state() == "queued"
    held_by_a = [a.pop(), a.pop()]
    assert [q.url[-1] for q in held_by_a] == ["3", "2"]  # priority order, FIFO within a priority
    got = b.pop()
    assert got is not None and got.url.endswith("/4")
    b.done(got)
    b.done(got)  # idempotent
    assert b.drain_state() == "queued"
    last = b.pop()
    assert last is not None and last.url.endswith("/5")
    b.done(last)
    assert b.pop() is not None and b.pop() is None  # /1 (held by b, never answered)
    assert b.drain_state() == "in_flight"
    r.delete(a.heartbeat_key)  # worker a dies holding /3 and /2
    assert b.drain_state() == "queued"
    requeued = [b.pop(), b.pop()]
    assert [q.url[-1] for q in requeued] == ["3", "2"]
    for q in requeued:
        b.done(q)
    assert b.drain_state() == "in_flight"  # b still holds /1
    b.leave()  # ... and gives it back
    assert r.zcard(a.keys["requests"]) == 1
    assert b.try_lead() is False  # a's lead has not expired: nobody else leads
    a.leave()
    assert b.try_lead() is True
    assert b.claim_link("http://example.test/x", 1) == "new"
    assert b.claim_link("http://example.test/x", 1) == "seen"
    assert b.claim_link("http://example.test/y", 1) == "over"
    assert b.claim_finalizer() is True and a.claim_finalizer() is False


# --- two workers, one job ---------------------------------------------------------------------------
PAGES = 300


@pytest.fixture
def shared_settings(tmp_path: Path, model_dir: Path, redis_url: str, chroma_url: str) -> Settings:
    return make_settings(
        tmp_path / "data", model_dir, redis_url=redis_url, chroma_url=chroma_url, concurrent_requests_per_host=4
    )


@pytest.fixture
def site300(tmp_path: Path) -> Iterator[DevSite]:
    root = tmp_path / "site"
    root.mkdir()
    write_pages(root, PAGES)
    with DevSite(root, delay=0.01) as site:
        write_sitemap_site(root, site.url, {f"p{i}": {"priority": f"{(i % 5) / 5:.1f}"} for i in range(PAGES)})
        yield site


@pytest.mark.slow
def test_two_workers_share_one_frontier(shared_settings: Settings, site300: DevSite, tmp_path: Path) -> None:
    instance_id = f"dist-{uuid.uuid4().hex[:6]}"
    create_instance(shared_settings, instance_id, site300)
    site300.clear()
    workers = start_workers(shared_settings, instance_id, tmp_path)
    wait_workers(workers, tmp_path, timeout=120)

    gets = Counter(r.path for r in site300.requests if r.method == "GET")
    pages = {f"/p{i}.html" for i in range(PAGES)}
    assert pages <= set(gets), f"never fetched: {sorted(pages - set(gets))[:10]}"
    assert {p: n for p, n in gets.items() if n > 1} == {}, "a URL was fetched twice"
    assert gets["/robots.txt"] == 1 and gets["/sitemap.xml"] == 1  # the leader alone discovers
    # the cluster kept the sitemap's priority order: each priority group starts after the previous one's first page
    order = [int(r.path[2:-5]) for r in site300.requests if r.path.startswith("/p")]
    first_seen = {}
    for pos, i in enumerate(order):
        first_seen.setdefault(i % 5, pos)
    assert sorted(first_seen, key=first_seen.get) == [4, 3, 2, 1, 0]

    state = StateStore(shared_settings.resolved_database_url)
    jobs = state.list_jobs(instance_id)
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["status"] == "completed", job
    assert (job["discovered"], job["fetched"], job["indexed"], job["errors"]) == (PAGES, PAGES, PAGES, 0)
    fetched = per_worker_pages(state, job["id"])
    assert len(fetched) == 2 and all(n > 0 for n in fetched) and sum(fetched) == PAGES, fetched

    assert_pages_found(shared_settings, instance_id, range(0, PAGES, 37))


@pytest.mark.slow
def test_crawl_delay_holds_across_workers(tmp_path: Path, model_dir: Path, redis_url: str, chroma_url: str) -> None:
    root = tmp_path / "site"
    root.mkdir()
    write_pages(root, 6)
    with DevSite(root, delay=0.1) as site:
        write_sitemap_site(root, site.url, {f"p{i}": {} for i in range(6)})
        (root / "robots.txt").write_text(f"User-agent: *\nCrawl-delay: 1\nSitemap: {site.url}/sitemap.xml\n")
        settings = make_settings(
            tmp_path / "data", model_dir, redis_url=redis_url, chroma_url=chroma_url, concurrent_requests_per_host=2
        )
        instance_id = f"polite-{uuid.uuid4().hex[:6]}"
        create_instance(settings, instance_id, site)
        site.clear()
        site.max_in_flight = 0
        wait_workers(start_workers(settings, instance_id, tmp_path), tmp_path, timeout=60)
        starts = [r.ts for r in site.requests]
        assert len(starts) == 8, [r.path for r in site.requests]  # robots.txt, sitemap, 6 pages
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert min(gaps) >= 0.9, gaps
        assert site.max_in_flight == 1
    state = StateStore(settings.resolved_database_url)
    job = state.list_jobs(instance_id)[0]
    assert job["status"] == "completed" and job["fetched"] == 6, job
    fetched = per_worker_pages(state, job["id"])
    assert len(fetched) == 2 and all(n > 0 for n in fetched), fetched


#: short heartbeat, lead and download timeouts, so a killed worker's pages and lead pass on in seconds
FAST_FAILOVER = ("SHARED_FRONTIER_HEARTBEAT_TTL=2", "SHARED_FRONTIER_LEADER_TTL=3", "DOWNLOAD_TIMEOUT=3")


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_pages_requeued(
    tmp_path: Path, model_dir: Path, redis_url: str, chroma_url: str
) -> None:
    """kill -9 the only worker mid-crawl; a worker started later finishes the job, re-fetching what it held."""
    n = 40
    root = tmp_path / "site"
    root.mkdir()
    write_pages(root, n)
    with DevSite(root, delay=0.2) as site:
        write_sitemap_site(root, site.url, {f"p{i}": {} for i in range(n)})
        settings = make_settings(tmp_path / "data", model_dir, redis_url=redis_url, chroma_url=chroma_url)
        instance_id = f"failover-{uuid.uuid4().hex[:6]}"
        create_instance(settings, instance_id, site)
        site.clear()
        [first] = start_workers(settings, instance_id, tmp_path, 1, scrapy_settings=FAST_FAILOVER)
        wait_until(lambda: sum(p.startswith("/p") for p in site.paths()) >= 5, timeout=60, interval=0.05)
        first.kill()
        first.wait()
        wait_workers(start_workers(settings, instance_id, tmp_path, 1, first=1, scrapy_settings=FAST_FAILOVER), tmp_path, 90, first=1)
        gets = Counter(p for p in site.paths() if p.startswith("/p"))
    assert set(gets) == {f"/p{i}.html" for i in range(n)}
    assert sum(gets.values()) - n <= 2, gets  # at most what the killed worker held (1 downloading + 1 indexing)
    state = StateStore(settings.resolved_database_url)
    [job] = state.list_jobs(instance_id)
    assert job["status"] == "completed", job
    assert state.item_stats(instance_id).get("indexed") == n
    lines, _ = state.job_logs(job["id"], limit=10_000)
    assert any("is a follower" in l["message"] for l in lines)  # the second worker joined the killed one's job


@pytest.mark.slow
def test_a_follower_takes_over_when_the_leader_dies_during_discovery(
    tmp_path: Path, model_dir: Path, redis_url: str, chroma_url: str
) -> None:
    """The leader is killed after robots.txt, before the sitemap: a later worker takes the lead and starts over."""
    n = 8
    root = tmp_path / "site"
    root.mkdir()
    write_pages(root, n)
    with DevSite(root) as site:
        write_sitemap_site(root, site.url, {f"p{i}": {} for i in range(n)})
        # Crawl-delay keeps the sitemap request 2 s behind robots.txt: time to kill the leader in between
        (root / "robots.txt").write_text(f"User-agent: *\nCrawl-delay: 2\nSitemap: {site.url}/sitemap.xml\n")
        settings = make_settings(tmp_path / "data", model_dir, redis_url=redis_url, chroma_url=chroma_url)
        instance_id = f"takeover-{uuid.uuid4().hex[:6]}"
        create_instance(settings, instance_id, site)
        site.clear()
        [leader] = start_workers(settings, instance_id, tmp_path, 1, scrapy_settings=FAST_FAILOVER)
        wait_until(lambda: "/robots.txt" in site.paths(), timeout=60, interval=0.02)
        leader.kill()
        leader.wait()
        assert "/sitemap.xml" not in site.paths()
        wait_workers(start_workers(settings, instance_id, tmp_path, 1, first=1, scrapy_settings=FAST_FAILOVER), tmp_path, 90, first=1)
        gets = Counter(site.paths())
    assert gets["/robots.txt"] == 2 and gets["/sitemap.xml"] == 1, gets
    assert all(gets[f"/p{i}.html"] == 1 for i in range(n)), gets
    state = StateStore(settings.resolved_database_url)
    [job] = state.list_jobs(instance_id)
    assert job["status"] == "completed" and job["fetched"] == n, job
    lines, _ = state.job_logs(job["id"], limit=10_000)
    assert any("takes over as leader" in l["message"] for l in lines)


# --- rendered pages, two workers ----------------------------------------------------------------------
RENDERED = 24
CONTEXT_PAGES = 4


def write_js_pages(root: Path, n: int) -> None:
    """Pages whose text exists only once their inline script has run (the word is split in the source)."""
    for i in range(n):
        w = word(i)
        parts = " + ".join(f"'{w[k:k + 3]}'" for k in range(0, len(w), 3))
        (root / f"p{i}.html").write_text(
            f"<!doctype html><html><head><title>Page {i}</title></head><body><main id='m'></main><script>"
            f"var w = {parts}; document.getElementById('m').innerHTML = '<h1>Page ' + w + '</h1><p>The keeper of ' + w"
            f" + ' writes down the weather every morning, and the notes of ' + w + ' go back years.</p>';"
            f"</script></body></html>"
        )


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="no /usr/bin/chromium")
def test_two_workers_render_pages_and_recycle_their_own_contexts(
    tmp_path: Path, model_dir: Path, redis_url: str, chroma_url: str
) -> None:
    """Each worker assigns browser contexts to the pages it renders (not to the pages it queued for others)."""
    root = tmp_path / "site"
    root.mkdir()
    write_js_pages(root, RENDERED)
    settings = make_settings(tmp_path / "data", model_dir, redis_url=redis_url, chroma_url=chroma_url,
                             concurrent_requests_per_host=4, render_context_pages=CONTEXT_PAGES)
    with DevSite(root, delay=0.05) as site:
        write_sitemap_site(root, site.url, {f"p{i}": {} for i in range(RENDERED)})
        instance_id = f"render-{uuid.uuid4().hex[:6]}"
        with TestClient(create_app(settings)) as client:
            body = {"id": instance_id, "type": "web-crawler", "source": site.url,
                    "source_params": {"web_crawler": {"parse_options": {"use_browser_rendering": True}}}}
            r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
        site.clear()
        workers = start_workers(settings, instance_id, tmp_path)
        wait_workers(workers, tmp_path, timeout=240)
        gets = Counter(r.path for r in site.requests if r.method == "GET" and r.path.startswith("/p"))
        assert gets == Counter({f"/p{i}.html": 1 for i in range(RENDERED)}), gets

    state = StateStore(settings.resolved_database_url)
    job = state.list_jobs(instance_id)[0]
    assert job["status"] == "completed", job
    assert (job["fetched"], job["indexed"], job["errors"]) == (RENDERED, RENDERED, 0), job
    for k, proc in enumerate(workers):
        log = (tmp_path / f"w{k}.log").read_text()
        assert "has been closed" not in log, log[-3000:]  # no context closed under a page still rendering
        mine = [line for line in log.splitlines() if f":{proc.pid}:" in line and "it fetched" in line]
        fetched = int(mine[-1].rsplit("fetched ", 1)[1].split()[0])
        assert fetched > 0, log[-3000:]
        # this worker used up and closed its contexts, all but the one in use at its end
        assert log.count("recycled") >= -(-fetched // CONTEXT_PAGES) - 1, (k, fetched, log.count("recycled"))

    assert_pages_found(settings, instance_id, range(RENDERED))
