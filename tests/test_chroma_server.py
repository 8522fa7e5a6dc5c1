"""Several processes sharing one index: a Chroma server (``chroma run``) and a PostgreSQL state database.

* Two indexers (two :class:`IndexService` objects, as in two API processes or crawler
  workers) drain the same 40 fetched pages concurrently: each page is claimed and
  embedded exactly once, and the job is completed once.
* An API process crawls the fixture site into the shared Chroma server and PostgreSQL
  (its crawler child indexes inline while its index worker competes for the same pages);
  a second API process — a real ``sitesearch serve`` on another port with its own data
  directory — returns the same results for vector, keyword and hybrid search.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from indexer.config import Settings, settings_env
from indexer.rawstore import RawPage
from indexer.service import IndexService
from indexer.vectorstore import collection_name
from server.app import create_app
from server.devsite import DevSite
from tests.conftest import (
    API_TOKEN,
    FIXTURE_HEADER,
    REPO,
    make_settings,
    wait_for_job,
    wait_until,
)
from tests.services import create_database, free_port

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PAGES = 40
WORDS = ["harbour", "glacier", "orchard", "foundry", "vineyard", "lighthouse", "bakery", "library"]


def _page(i: int) -> bytes:
    paragraphs = "".join(
        f"<p>Paragraph {p} of page {i}: the {WORDS[(i + p) % len(WORDS)]} keeps record number {i * 100 + p} "
        f"in its ledger, written by keeper {i} on day {p} of the season.</p>"
        for p in range(12)
    )
    return f"<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>{paragraphs}</body></html>".encode()


def _settings(data_dir: Path, model_dir: Path, database_url: str, chroma_url: str, **extra: Any) -> Settings:
    return make_settings(data_dir, model_dir, database_url=database_url, chroma_url=chroma_url, **extra)


def test_two_indexers_embed_each_fetched_page_once(
    tmp_path: Path, model_dir: Path, postgres_url: str, chroma_url: str
) -> None:
    db = create_database(postgres_url, "claims")
    settings = _settings(tmp_path, model_dir, db, chroma_url)  # raw pages shared through one data dir
    a = IndexService.open(settings)
    b = IndexService.open(settings)
    instance = f"claims-{uuid.uuid4().hex[:6]}"
    try:
        assert a.lock is None and b.lock is None  # no owner lock with a Chroma server
        a.state.create_instance(instance, "web-crawler", "https://example.test/", {"id": instance})
        job = a.state.create_job(instance, "user", status="running")
        now = time.time()
        for i in range(PAGES):
            url = f"https://example.test/p{i}.html"
            item = a.state.ensure_item(instance, url)
            a.raw.put(instance, item["id"], RawPage(url=url, status=200, body=_page(i), fetched_at=now,
                                                    content_type="text/html"))
            a.state.update_item(item["id"], status="fetched", http_status=200, pending_job=job["id"], fetched_at=now)
        a.state.update_job(job["id"], crawl_done=True)

        embedded: Counter[str] = Counter()
        for service in (a, b):  # count what each indexer writes to Chroma
            original = service.vectors.replace_item

            def counting(instance_id: str, item_id: str, *args: Any, _orig: Any = original, **kw: Any) -> None:
                embedded[item_id] += 1
                _orig(instance_id, item_id, *args, **kw)

            service.vectors.replace_item = counting  # type: ignore[method-assign]

        completed: list[list[str]] = []
        barrier = threading.Barrier(2)

        def run(service: IndexService) -> None:
            barrier.wait()
            service.drain(batch=4)
            completed.append(service.complete_finished_jobs())

        threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)

        assert len(embedded) == PAGES and set(embedded.values()) == {1}, embedded  # each page embedded once
        stats = a.state.item_stats(instance)
        assert stats.get("indexed") == PAGES, stats
        final = a.state.get_job(job["id"])
        assert final["status"] == "completed" and final["indexed"] == PAGES, final
        assert sorted(len(c) for c in completed) == [0, 1]  # finish_job is compare-and-set: completed once
        col = a.vectors.client.get_collection(collection_name(instance))
        ids = col.get(include=[])["ids"]
        assert len(ids) == len(set(ids)) == stats["chunks"] > PAGES  # several chunks a page, no duplicates
        assert a.vectors.keywords.count(instance) == stats["chunks"]  # keyword rows in PostgreSQL too
    finally:
        a.vectors.drop_instance(instance)
        a.close()
        b.close()
        a.state.close()
        b.state.close()


@pytest.fixture(scope="module")
def two_apis(
    fixture_site: DevSite, model_dir: Path, postgres_url: str, chroma_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """API 1 (in process) crawls the fixture site; API 2 is ``sitesearch serve`` with its own data dir."""
    db = create_database(postgres_url, "two_apis")
    s1 = _settings(tmp_path_factory.mktemp("api1"), model_dir, db, chroma_url)
    s2 = _settings(tmp_path_factory.mktemp("api2"), model_dir, db, chroma_url)
    port = free_port()
    env = {**settings_env(s2), "PATH": "/usr/bin:/bin", "SITESEARCH_API_TOKEN": API_TOKEN}
    log = open(s2.data_dir / "serve.log", "wb")  # noqa: SIM115
    fixture_site.clear()
    with TestClient(create_app(s1)) as client:
        body = {
            "id": "shared",
            "type": "web-crawler",
            "source": fixture_site.url,
            "source_params": {
                "include_items": ["**/docs/**", "**/blog/**", "**/members/**"],
                "web_crawler": {"parse_options": {"include_headers": {FIXTURE_HEADER[0]: FIXTURE_HEADER[1]}}},
            },
        }
        assert client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH).status_code == 200
        r = client.post(f"{ACCOUNT}/instances/shared/jobs", headers=AUTH)
        assert r.status_code == 200, r.text
        job = wait_for_job(client, "shared", r.json()["result"]["id"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            other = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

            def up() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"sitesearch serve exited: {(s2.data_dir / 'serve.log').read_text()[-3000:]}")
                try:
                    return other.get("/health").status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(up, timeout=120)
            yield {"api1": client, "api2": other, "job": job}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def _search(client: Any, body: dict[str, Any]) -> list[tuple[str, float]]:
    r = client.post(f"{ACCOUNT}/instances/shared/search", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return [(d["filename"], round(d["score"], 4)) for d in r.json()["result"]["data"]]


@pytest.mark.slow
def test_second_api_process_returns_the_same_results(two_apis: dict[str, Any]) -> None:
    job = two_apis["job"]
    assert job["status"] == "completed", job
    assert job["counters"]["indexed"] == 6 and job["counters"]["errors"] == 0, job["counters"]
    queries = [
        {"query": "How fast is the sodium pumped to cool the reactor?"},
        {"query": "What flowers grow under violet lamps?", "ai_search_options": {"retrieval": {"retrieval_type": "keyword"}}},
        {"query": "telescope mirror Saturn", "ai_search_options": {"retrieval": {"retrieval_type": "hybrid"}}},
        {"query": "cardamom buns", "ai_search_options": {"retrieval": {
            "retrieval_type": "keyword", "filters": {"type": "eq", "key": "folder", "value": "nowhere/"}}}},
    ]
    expected_first = ["/docs/alpha.html", "/docs/gamma.html", "/blog/telescope.html", None]
    for body, first in zip(queries, expected_first, strict=True):
        one = _search(two_apis["api1"], body)
        two = _search(two_apis["api2"], body)
        assert one == two, body
        if first is None:
            assert one == []
        else:
            assert one and one[0][0].endswith(first), (body, one)


def test_concurrent_collection_creation_gives_one_collection(tmp_path: Path, chroma_url: str) -> None:
    from indexer.vectorstore import VectorStore

    settings = make_settings(tmp_path, tmp_path / "unused-model", chroma_url=chroma_url)
    stores = [VectorStore(settings) for _ in range(6)]  # six clients, as in six processes
    instance = f"race-{uuid.uuid4().hex[:6]}"
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def create(store: VectorStore) -> None:
        barrier.wait()
        try:
            store.count(instance)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    ids = {s._collection(instance).id for s in stores}
    assert len(ids) == 1
    assert stores[0]._collection(instance).configuration["hnsw"]["space"] == "cosine"
    assert sum(c.name == collection_name(instance) for c in stores[0].client.list_collections()) == 1
    stores[0].drop_instance(instance)


def test_chroma_server_down_is_a_503_envelope(tmp_path: Path, model_dir: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("chroma")), "run", "--path", str(tmp_path / "chroma"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), timeout=60)
        settings = make_settings(tmp_path / "data", model_dir, chroma_url=f"http://127.0.0.1:{port}")
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            body = {"id": "down", "type": "web-crawler", "source": "https://example.test/"}
            assert client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH).status_code == 200
            assert client.post(f"{ACCOUNT}/instances/down/search", json={"query": "x"}, headers=AUTH).status_code == 200
            proc.terminate()
            proc.wait(timeout=30)
            r = client.post(f"{ACCOUNT}/instances/down/search", json={"query": "hello"}, headers=AUTH)
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
            data = r.json()
            assert data["success"] is False and "unreachable" in data["errors"][0]["message"]
            assert "Traceback" not in r.text
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_folder_restricted_token_sees_only_its_folder_on_the_other_process(
    two_apis: dict[str, Any], fixture_site: DevSite
) -> None:
    folder = fixture_site.url.split("://", 1)[1].rstrip("/") + "/docs/"
    r = two_apis["api1"].post(f"{ACCOUNT}/tokens", headers=AUTH,
                              json={"name": "tenant", "permissions": ["AI Search:Run"], "folder_prefix": folder})
    assert r.status_code == 200, r.text
    tenant = {"Authorization": f"Bearer {r.json()['result']['value']}"}
    query = "sodium reactor fjord bridge violet lamps telescope Saturn cardamom buns tomatoes"
    for retrieval_type in ("keyword", "hybrid", "vector"):
        body = {"query": query, "max_num_results": 50,
                "ai_search_options": {"retrieval": {"retrieval_type": retrieval_type}}}
        admin = two_apis["api2"].post(f"{ACCOUNT}/instances/shared/search", json=body, headers=AUTH).json()
        seen = two_apis["api2"].post(f"{ACCOUNT}/instances/shared/search", json=body, headers=tenant).json()
        assert seen["success"], seen
        admin_files = {d["filename"] for d in admin["result"]["data"]}
        files = {d["filename"] for d in seen["result"]["data"]}
        assert any("/blog/" in f for f in admin_files), (retrieval_type, admin_files)  # others exist...
        assert files and all("/docs/" in f for f in files), (retrieval_type, files)  # ...but the tenant sees its own


def test_indexers_leave_pages_stored_on_another_machine(
    tmp_path: Path, model_dir: Path, postgres_url: str, chroma_url: str
) -> None:
    """Separate data dirs (two machines): only the process holding a raw page indexes it."""
    db = create_database(postgres_url, "elsewhere")
    here = IndexService.open(_settings(tmp_path / "here", model_dir, db, chroma_url))
    away = IndexService.open(_settings(tmp_path / "away", model_dir, db, chroma_url))
    instance = f"away-{uuid.uuid4().hex[:6]}"
    try:
        here.state.create_instance(instance, "web-crawler", "https://example.test/", {"id": instance})
        job = here.state.create_job(instance, "user", status="running")
        now = time.time()
        for i in range(4):
            url = f"https://example.test/p{i}.html"
            item = here.state.ensure_item(instance, url)
            here.raw.put(instance, item["id"], RawPage(url=url, status=200, body=_page(i), fetched_at=now,
                                                       content_type="text/html"))
            here.state.update_item(item["id"], status="fetched", http_status=200, pending_job=job["id"], fetched_at=now)
        lost = here.state.ensure_item(instance, "https://example.test/lost.html")  # its crawler died long ago
        here.state.update_item(lost["id"], status="fetched", http_status=200, pending_job=job["id"], fetched_at=now - 3600)

        assert away.drain() == 1  # only the lost page: recorded as an error so the job can end
        assert away.state.get_item_by_id(lost["id"])["error"] == "stored page is missing"
        assert here.drain() == 4
        stats = here.state.item_stats(instance)
        assert stats.get("indexed") == 4 and stats.get("error") == 1, stats

        # an options PATCH hands the indexed pages back (requeue_indexed); fetched long ago, so the
        # process without their stored pages may take them: it keeps them indexed, not errors
        here.state.shift_item_times(instance, 7200)
        assert here.state.requeue_indexed(instance) == 4
        assert away.drain() == 4
        stats = here.state.item_stats(instance)
        assert stats.get("indexed") == 4 and stats.get("error") == 1, stats
        assert here.vectors.count(instance) == sum(i["chunks"] for i in here.state.list_items(instance, limit=10)[0])
    finally:
        here.vectors.drop_instance(instance)
        for service in (here, away):
            service.close()
            service.state.close()


def test_instance_recreated_by_another_process_is_found_again(tmp_path: Path, chroma_url: str) -> None:
    """Process A caches its collection handle; B deletes the instance and creates it anew: A follows."""
    import numpy as np

    from indexer.vectorstore import VectorStore

    settings = make_settings(tmp_path, tmp_path / "unused-model", chroma_url=chroma_url)
    a, b = VectorStore(settings), VectorStore(settings)
    instance = f"again-{uuid.uuid4().hex[:6]}"
    vec = np.ones((1, 8), dtype=np.float32) / np.sqrt(8)
    a.replace_item(instance, "x", ["first life"], vec, [{"item_id": "x"}])
    assert a.count(instance) == 1
    b.drop_instance(instance)
    b.replace_item(instance, "y", ["second life"], vec, [{"item_id": "y"}])
    assert a.count(instance) == 1
    assert [h.chunk_id for h in a.query(instance, vec[0], n=5)] == ["y:0"]
    a.replace_item(instance, "z", ["third"], vec, [{"item_id": "z"}])
    assert b.count(instance) == 2
    b.drop_instance(instance)
