"""End to end: the real API starts a real crawl of the fixture site, then answers /search.

The API server owns the embedded index; the crawler runs as a child process
(``python -m crawler.run``) and the server's index worker embeds what it fetched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.devsite import DevSite
from tests.conftest import API_TOKEN, FIXTURE_HEADER, make_settings, wait_for_job

pytestmark = pytest.mark.slow

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
INCLUDE = ["**/docs/**", "**/blog/**", "**/members/**", "**/private/**"]
EXCLUDE = ["**/drafts/**"]


@pytest.fixture(scope="module")
def crawled(fixture_site: DevSite, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One API server, one instance, one completed sync of the fixture site."""
    settings = make_settings(tmp_path_factory.mktemp("data"), model_dir)
    fixture_site.clear()
    with TestClient(create_app(settings)) as client:
        body = {
            "id": "fixture",
            "type": "web-crawler",
            "source": fixture_site.url,
            "source_params": {
                "include_items": INCLUDE,
                "exclude_items": EXCLUDE,
                "web_crawler": {"parse_options": {"include_headers": {FIXTURE_HEADER[0]: FIXTURE_HEADER[1]}}},
            },
        }
        r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        r = client.post(f"{ACCOUNT}/instances/fixture/jobs", headers=AUTH)
        assert r.status_code == 200, r.text
        job_id = r.json()["result"]["id"]
        job = wait_for_job(client, "fixture", job_id)
        logs = client.get(f"{ACCOUNT}/instances/fixture/jobs/{job_id}/logs?per_page=1000", headers=AUTH).json()["result"]
        yield {"client": client, "job": job, "logs": logs, "requests": list(fixture_site.requests)}


def search(client: TestClient, query: str, **extra: Any) -> dict[str, Any]:
    r = client.post(f"{ACCOUNT}/instances/fixture/search", json={"query": query, **extra}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def test_job_completes_with_counters(crawled: dict[str, Any]) -> None:
    job = crawled["job"]
    assert job["status"] == "completed", job
    c = job["counters"]
    # telescope, tomatoes, alpha, beta, gamma, vip; private is robots-disallowed; drafts and / are filtered
    assert c["fetched"] == 6
    assert c["indexed"] == 6
    assert c["skipped_by_rule"] == 2
    assert c["errors"] == 0


def test_unique_fact_comes_back_first(crawled: dict[str, Any]) -> None:
    cases = {
        "How fast is the sodium pumped to cool the reactor?": "/docs/alpha.html",
        "How long is the bridge over the fjord?": "/docs/beta.html",
        "What flowers grow under violet lamps?": "/docs/gamma.html",
        "What can you see of Saturn through the telescope mirror?": "/blog/telescope.html",
        "When are cardamom buns served?": "/members/vip.html",
    }
    for query, path in cases.items():
        data = search(crawled["client"], query)["result"]["data"]
        assert data, query
        assert data[0]["filename"].endswith(path), (query, [d["filename"] for d in data])


def test_response_shape(crawled: dict[str, Any]) -> None:
    body = search(crawled["client"], "tomatoes on a balcony", max_num_results=2)
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    result = body["result"]
    assert result["object"] == "vector_store.search_results.page"
    assert result["search_query"] == "tomatoes on a balcony"
    assert result["has_more"] is False and result["next_page"] is None
    assert 1 <= len(result["data"]) <= 2
    hit = result["data"][0]
    assert set(hit) == {"file_id", "filename", "score", "attributes", "content"}
    assert 0.0 <= hit["score"] <= 1.0
    assert hit["attributes"]["folder"].endswith("/blog/")
    assert hit["attributes"]["file"]["url"] == hit["filename"]
    assert isinstance(hit["attributes"]["modified_date"], int)
    assert hit["content"][0]["type"] == "text" and "balcony" in hit["content"][0]["text"]


def test_messages_form_and_threshold(crawled: dict[str, Any]) -> None:
    body = search(crawled["client"], None, messages=[{"role": "user", "content": "saffron harvest"}])
    assert body["result"]["data"][0]["filename"].endswith("/docs/gamma.html")
    strict = search(crawled["client"], "saffron harvest", ranking_options={"score_threshold": 0.99})
    assert strict["result"]["data"] == []


@pytest.mark.parametrize("path", ["search", "ai-search"])
def test_flat_match_threshold_per_request(crawled: dict[str, Any], path: str) -> None:
    """The seeds: "use the parameters match_threshold and max_num_results ... per request"."""
    client = crawled["client"]
    url = f"{ACCOUNT}/instances/fixture/{path}"
    scores = [h["score"] for h in client.post(url, json={"query": "saffron harvest"}, headers=AUTH).json()["result"]["data"]]
    assert len(scores) >= 3
    cut = (scores[0] + scores[1]) / 2  # keeps the best only
    kept = client.post(url, json={"query": "saffron harvest", "match_threshold": cut}, headers=AUTH).json()["result"]["data"]
    assert [h["score"] for h in kept] == scores[:1]
    r = client.post(url, json={"query": "saffron harvest", "match_threshold": 1.5}, headers=AUTH)
    assert r.status_code == 400 and "match_threshold" in r.json()["errors"][0]["message"]


def test_disallowed_and_excluded_pages_absent_with_reasons(crawled: dict[str, Any]) -> None:
    fetched = {r.path for r in crawled["requests"]}
    assert "/private/secret.html" not in fetched
    assert "/drafts/unfinished.html" not in fetched
    assert "/" not in fetched
    messages = {line["url"].split("/", 3)[-1]: line["message"] for line in crawled["logs"] if line["url"]}
    assert messages["private/secret.html"] == "Skipped by robots.txt"
    assert messages["drafts/unfinished.html"] == "Skipped by rule: **/drafts/**"
    assert messages[""] == "Skipped by Include Rules"
    for query in ("private launch code", "zeppelin mooring masts"):
        for hit in search(crawled["client"], query)["result"]["data"]:
            assert "/private/" not in hit["filename"] and "/drafts/" not in hit["filename"]


def test_crawl_order_follows_priority(crawled: dict[str, Any]) -> None:
    pages = [r.path for r in crawled["requests"] if r.path.endswith(".html")]
    assert pages == [
        "/blog/telescope.html",  # 1.0 (in the second sitemap)
        "/docs/beta.html",  # 0.9
        "/members/vip.html",  # 0.7
        "/docs/alpha.html",  # 0.6
        "/docs/gamma.html",  # absent = 0.5
        "/blog/tomatoes.html",  # 0.1
    ]


def test_custom_headers_on_every_request(crawled: dict[str, Any]) -> None:
    name, value = FIXTURE_HEADER
    assert crawled["requests"], "no requests logged"
    for req in crawled["requests"]:
        assert req.headers.get(name) == value, req.path
        assert req.headers.get("User-Agent", "").startswith("sitesearch/")
    assert any(r.path == "/robots.txt" for r in crawled["requests"])
    assert any(r.path == "/sitemap-blog.xml.gz" for r in crawled["requests"])


def test_raw_pages_stored(crawled: dict[str, Any]) -> None:
    client = crawled["client"]
    items = client.get(f"{ACCOUNT}/instances/fixture/items?status=indexed", headers=AUTH).json()
    assert items["result_info"]["total_count"] == 6
    settings = client.app.state.settings
    stored = list((settings.pages_dir / "fixture").rglob("*.body"))
    assert len(stored) == 6
    stats = client.get(f"{ACCOUNT}/instances/fixture/stats", headers=AUTH).json()["result"]
    assert stats["indexed"] == 6 and stats["chunks"] >= 6


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "needle"),
    [
        ("get", "/instances", None, {}, 401, "Authorization"),
        ("get", "/instances", None, {"Authorization": "Bearer wrong"}, 403, "invalid API token"),
        ("get", "/instances/nope", None, AUTH, 404, "nope"),
        ("post", "/instances", {"id": "fixture", "source": "example.com"}, AUTH, 409, "already exists"),
        ("post", "/instances", {"id": "Bad Id!", "source": "example.com"}, AUTH, 400, "id"),
        ("post", "/instances/fixture/search", {"query": "x", "max_num_results": 51}, AUTH, 400, "max_num_results"),
        ("post", "/instances/fixture/search", {"query": "x", "ranking_options": {"score_threshold": 2}}, AUTH, 400, "score_threshold"),
        ("post", "/instances/fixture/search", {}, AUTH, 400, "query"),
        ("post", "/instances/nope/search", {"query": "x"}, AUTH, 404, "nope"),
    ],
)
def test_bad_input_gets_enveloped_4xx(
    crawled: dict[str, Any], method: str, path: str, body: Any, headers: dict[str, str], status: int, needle: str
) -> None:
    client = crawled["client"]
    r = getattr(client, method)(f"{ACCOUNT}{path}", headers=headers, **({"json": body} if body is not None else {}))
    assert r.status_code == status, r.text
    payload = r.json()
    assert payload["success"] is False
    assert needle in payload["errors"][0]["message"]


def test_bad_json_and_unknown_account(crawled: dict[str, Any]) -> None:
    client = crawled["client"]
    r = client.post(f"{ACCOUNT}/instances/fixture/search", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["errors"][0]["message"]
    r = client.get("/client/v4/accounts/other/ai-search/instances", headers=AUTH)
    assert r.status_code == 404
