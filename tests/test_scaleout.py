"""Scale-out end to end (issue #7): Redis frontier, PostgreSQL state, Chroma server, 2 workers, 2 API processes.

A generated 3,000-page site is crawled twice:

* by a cluster — Redis, PostgreSQL and a Chroma server started on loopback, two
  ``sitesearch serve`` processes and two ``scrapy crawl site -a instance=ID``
  workers, every process with its own data directory (so nothing can be shared
  through local files);
* by one process — a standalone ``scrapy crawl`` on SQLite and the embedded Chroma.

Checks: every page URL fetched exactly once by the cluster (the site's own request
log), the job completes with the right counters, every page is found by its unique
word through either API process, and vector results equal the single-process run's.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.devsite import DevSite, write_sitemap_site
from tests.conftest import API_TOKEN, REPO, make_settings
from tests.services import create_database, free_port, service_env, start_crawl_worker, wait_exit

pytestmark = pytest.mark.slow

PAGES = 3000
ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SYLLABLES = ["ka", "lo", "mi", "ne", "pu", "ra", "si", "to", "vu", "ze", "bo", "di", "fa", "gu", "hi", "jo", "ku", "ly", "mo", "ny"]
SUBJECTS = ["lighthouse", "orchard", "observatory", "bakery", "harbour", "library", "glacier", "vineyard", "foundry", "monastery"]
ACTIVITIES = [
    "repairs old clocks", "brews dark tea", "counts migrating geese", "paints ceramic tiles", "grows winter squash",
    "tunes church organs", "keeps honey bees", "binds leather books", "carves wooden boats", "maps tidal pools",
]


def unique_word(i: int) -> str:
    """A made-up word that appears on page ``i`` only (three syllables: 8,000 combinations)."""
    n = len(SYLLABLES)
    return "q" + SYLLABLES[i % n] + SYLLABLES[(i // n) % n] + SYLLABLES[(i // (n * n)) % n]


def page_html(i: int) -> str:
    rng = random.Random(i)
    subject, activity = rng.choice(SUBJECTS), rng.choice(ACTIVITIES)
    word = unique_word(i)
    return (
        f"<!doctype html><html><head><title>The {subject} of {word}</title></head><body><main>"
        f"<h1>The {subject} of {word}</h1>"
        f"<p>In the village of {word}, the keeper of the {subject} {activity} every morning before sunrise. "
        f"Visitors to {word} say the {subject} is the oldest building in the valley, and the keeper has "
        f"done this work for {10 + i % 40} years.</p></main></body></html>"
    )


@pytest.fixture(scope="module")
def big_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSite]:
    root = tmp_path_factory.mktemp("site3000")
    for i in range(PAGES):
        (root / f"p{i}.html").write_text(page_html(i))
    with DevSite(root) as site:
        entries = {f"p{i}": {"priority": f"{(i % 10) / 10:.1f}"} for i in range(PAGES)}
        write_sitemap_site(root, site.url, entries)
        yield site


def instance_body(site: DevSite) -> dict[str, Any]:
    return {"id": "big", "type": "web-crawler", "source": site.url}


def start_worker(settings: Any, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """``scrapy crawl site -a instance=big`` in the repo, as a user would run it."""
    return start_crawl_worker(settings, "big", log, SITESEARCH_API_TOKEN=API_TOKEN, **extra)


def start_api(settings: Any, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    """``sitesearch serve`` on ``port``; returns once ``/health`` answers."""
    cmd = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
    env = service_env(settings, SITESEARCH_API_TOKEN=API_TOKEN, **extra)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sitesearch serve exited ({proc.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"sitesearch serve did not start: {log.read_text()[-3000:]}")


def search(client: Any, query: str, **extra: Any) -> list[dict[str, Any]]:
    r = client.post(f"{ACCOUNT}/instances/big/search", json={"query": query, **extra}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["result"]["data"]


def page_of(hit: dict[str, Any]) -> str:
    return hit["filename"].rsplit("/", 1)[-1]


QUERIES = [
    f"Who {activity} at the {subject}?" for subject in SUBJECTS for activity in ACTIVITIES[:3]
] + [f"The {SUBJECTS[i % 10]} of {unique_word(i)}" for i in range(0, PAGES, 97)]


@pytest.fixture(scope="module")
def single_run(big_site: DevSite, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: one standalone crawler on SQLite + the embedded Chroma."""
    settings = make_settings(tmp_path_factory.mktemp("single"), model_dir, concurrent_requests_per_host=4)
    with TestClient(create_app(settings)) as client:
        assert client.post(f"{ACCOUNT}/instances", json=instance_body(big_site), headers=AUTH).status_code == 200
    log = tmp_path_factory.mktemp("single-logs") / "worker.log"
    wait_exit([start_worker(settings, log)], [log], timeout=900)
    with TestClient(create_app(settings)) as client:
        return {q: search(client, q) for q in QUERIES}


@pytest.fixture(scope="module")
def cluster(
    big_site: DevSite,
    model_dir: Path,
    redis_url: str,
    postgres_url: str,
    chroma_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Two API processes and two crawl workers sharing Redis, PostgreSQL and a Chroma server."""
    shared = {
        "database_url": create_database(postgres_url, "scaleout"),
        "chroma_url": chroma_url,
        "concurrent_requests_per_host": 4,
    }
    logs = tmp_path_factory.mktemp("cluster-logs")
    redis_env = {"SITESEARCH_REDIS_URL": redis_url}
    apis, clients = [], []
    try:
        for n in (1, 2):
            settings = make_settings(tmp_path_factory.mktemp(f"api{n}"), model_dir, **shared)
            port = free_port()
            apis.append(start_api(settings, port, logs / f"api{n}.log", **redis_env))
            clients.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
        r = clients[0].post(f"{ACCOUNT}/instances", json=instance_body(big_site), headers=AUTH)
        assert r.status_code == 200, r.text
        big_site.clear()
        worker_logs = [logs / "worker1.log", logs / "worker2.log"]
        workers = [
            start_worker(make_settings(tmp_path_factory.mktemp(f"worker{n}"), model_dir, **shared), log, **redis_env)
            for n, log in enumerate(worker_logs, 1)
        ]
        wait_exit(workers, worker_logs, timeout=900)
        jobs = clients[1].get(f"{ACCOUNT}/instances/big/jobs", headers=AUTH).json()["result"]
        yield {"clients": clients, "jobs": jobs, "requests": list(big_site.requests), "logs": worker_logs}
    finally:
        for c in clients:
            c.close()
        for p in apis:
            p.terminate()
        for p in apis:
            p.wait(timeout=30)


def test_every_url_fetched_exactly_once(cluster: dict[str, Any]) -> None:
    gets = Counter(r.path for r in cluster["requests"] if r.method == "GET")
    pages = {f"/p{i}.html" for i in range(PAGES)}
    assert pages <= set(gets), f"never fetched: {sorted(pages - set(gets))[:10]}"
    repeated = {path: n for path, n in gets.items() if n > 1}
    assert not repeated, f"fetched more than once: {dict(list(repeated.items())[:10])}"


def test_both_workers_fetched_and_the_job_completed(cluster: dict[str, Any]) -> None:
    assert len(cluster["jobs"]) == 1, cluster["jobs"]
    job = cluster["jobs"][0]
    assert job["status"] == "completed", job
    assert job["counters"]["fetched"] == PAGES
    assert job["counters"]["indexed"] == PAGES
    fetched_per_worker = [_worker_pages(log) for log in cluster["logs"]]
    assert all(n > 0 for n in fetched_per_worker), fetched_per_worker


def _worker_pages(log: Path) -> int:
    """Pages a worker downloaded, from Scrapy's closing stats (``downloader/response_count``)."""
    for line in log.read_text().splitlines():
        if "'downloader/response_count':" in line:
            return int(line.split(":")[-1].strip().rstrip(",}"))
    return 0


def test_every_page_searchable_through_either_api(cluster: dict[str, Any]) -> None:
    clients = cluster["clients"]
    missing = []
    for i in range(PAGES):
        options = {"retrieval": {"retrieval_type": "keyword", "max_num_results": 3}}
        hits = search(clients[i % 2], unique_word(i), ai_search_options=options)
        if not hits or page_of(hits[0]) != f"p{i}.html":
            missing.append((i, [page_of(h) for h in hits]))
    assert not missing, f"{len(missing)} pages not found first by their unique word: {missing[:5]}"


def test_results_identical_to_a_single_process_run(cluster: dict[str, Any], single_run: dict[str, Any]) -> None:
    a, b = cluster["clients"]
    for query, expected in single_run.items():
        for client in (a, b):
            got = search(client, query)
            assert [page_of(h) for h in got] == [page_of(h) for h in expected], query
            for g, e in zip(got, expected):
                assert g["score"] == pytest.approx(e["score"], abs=1e-4), query
                assert g["content"] == e["content"]
