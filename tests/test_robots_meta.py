"""Page-level robots directives: ``<meta name="robots">`` and ``X-Robots-Tag`` (noindex, nofollow).

The parsing rules are checked on the functions the crawler and indexer call; the end-to-end test
crawls a real site on 127.0.0.1 by its links (no sitemap) and searches the real index.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.robots_meta import header_directives, meta_directives, page_directives
from server.app import create_app
from server.devsite import DevSite
from tests.conftest import API_TOKEN, make_settings, wait_for_job

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noindex"], {"noindex"}),
        (["NoIndex, NoFollow"], {"noindex", "nofollow"}),
        (["none"], {"noindex", "nofollow"}),
        (["all"], set()),
        (["noarchive, nosnippet"], set()),
        (["googlebot: noindex"], set()),  # another crawler's rule
        (["googlebot: noindex, nofollow"], set()),  # the agent's rules run to the end of the value
        (["sitesearch: noindex"], {"noindex"}),
        (["Cloudflare-AI-Search: nofollow"], {"nofollow"}),
        (["googlebot: noindex, sitesearch: nofollow"], {"nofollow"}),
        (["max-snippet: 20, noindex"], {"noindex"}),  # a directive with a value is not an agent
        (["unavailable_after: 2025-06-25T15:00:00+00:00"], set()),
        (["googlebot: noindex", "nofollow"], {"nofollow"}),  # two headers
    ],
)
def test_x_robots_tag(values: list[str], expected: set[str]) -> None:
    assert header_directives(values) == expected


def test_meta_tags_for_every_crawler_and_for_ours_only() -> None:
    assert meta_directives([("robots", "noindex, follow")]) == {"noindex"}
    assert meta_directives([("googlebot", "noindex"), ("bingbot", "none")]) == set()
    assert meta_directives([("sitesearch", "nofollow"), ("cloudflare-autorag", "noindex")]) == {"noindex", "nofollow"}
    html = (b'<html><head><meta name="ROBOTS" content="noindex"></head>'
            b'<body><meta name="robots" content="nofollow"></body></html>')  # a body <meta> is not read
    assert page_directives(html, "text/html", {}) == {"noindex"}
    assert page_directives(b"%PDF-1.4", "application/pdf", {"X-Robots-Tag": "noindex"}) == {"noindex"}
    assert page_directives(b"%PDF-1.4 <meta name=robots content=noindex>", "application/pdf", {}) == set()


def page(title: str, text: str, *, meta: str = "", links: tuple[str, ...] = ()) -> str:
    anchors = "".join(f'<p><a href="{href}">{href}</a></p>' for href in links)
    body = "".join(f"<p>{text} ({i})</p>" for i in range(3))
    return f"<!doctype html><html><head><title>{title}</title>{meta}</head><body><main><h1>{title}</h1>{body}{anchors}</main></body></html>"


FACTS = {
    "/index.html": "The harbour office opens at seven and sells fishing permits.",
    "/hidden.html": "The secret cove is reached by a rope ladder behind the boathouse.",
    "/deep.html": "The lighthouse keeper winds the clock every Sunday at noon.",
    "/nofollow.html": "Visitors may borrow binoculars from the museum desk.",
    "/orphan.html": "The old ferry timetable lists a crossing at half past five.",
    "/header.html": "The sail loft repairs torn spinnakers within two days.",
    "/ours.html": "Our crew meets on the pier every Friday for a barbecue.",
    "/google.html": "Guided kayak tours leave the slipway at high tide.",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSite]:
    root = tmp_path_factory.mktemp("robots-meta-site")
    pages = {
        "index.html": page("Harbour", FACTS["/index.html"], links=(
            "/hidden.html", "/nofollow.html", "/header.html", "/ours.html", "/google.html")),
        "hidden.html": page("Cove", FACTS["/hidden.html"], meta='<meta name="robots" content="noindex, follow">',
                            links=("/deep.html",)),
        "deep.html": page("Lighthouse", FACTS["/deep.html"]),
        "nofollow.html": page("Museum", FACTS["/nofollow.html"], meta='<meta name="robots" content="nofollow">',
                              links=("/orphan.html",)),
        "orphan.html": page("Ferry", FACTS["/orphan.html"]),
        "header.html": page("Sail loft", FACTS["/header.html"]),
        "ours.html": page("Crew", FACTS["/ours.html"], meta='<meta name="sitesearch" content="noindex">'),
        "google.html": page("Kayaks", FACTS["/google.html"], meta='<meta name="googlebot" content="noindex">'),
    }
    for name, html in pages.items():
        (root / name).write_text(html)
    (root / "robots.txt").write_text("User-agent: *\nAllow: /\n")  # no sitemap: the crawl follows links
    with DevSite(root, extra_headers={"/header.html": {"X-Robots-Tag": "noindex"}}) as s:
        yield s


def crawl(site: DevSite, model_dir: Path, data: Path, **parse_options: Any) -> tuple[TestClient, dict[str, Any]]:
    client = TestClient(create_app(make_settings(data, model_dir)))
    client.__enter__()
    body = {"id": "harbour", "type": "web-crawler", "source": f"{site.url}/index.html",
            "source_params": {"web_crawler": {"parse_options": parse_options}}}
    r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    r = client.post(f"{ACCOUNT}/instances/harbour/jobs", headers=AUTH)
    job = wait_for_job(client, "harbour", r.json()["result"]["id"])
    assert job["status"] == "completed", job
    items = client.get(f"{ACCOUNT}/instances/harbour/items?per_page=100", headers=AUTH).json()["result"]
    return client, {i["key"].removeprefix(site.url): i for i in items}


@pytest.mark.slow
def test_noindex_and_nofollow_are_obeyed(site: DevSite, model_dir: Path, tmp_path: Path) -> None:
    client, items = crawl(site, model_dir, tmp_path / "data")
    try:
        indexed = {k for k, i in items.items() if i["status"] == "indexed"}
        assert indexed == {"/index.html", "/deep.html", "/nofollow.html", "/google.html"}
        for key in ("/hidden.html", "/header.html", "/ours.html"):
            assert items[key]["status"] == "skipped", items[key]
            assert items[key]["error"] == "Skipped: the page says noindex (robots meta tag or X-Robots-Tag)"
        assert "/orphan.html" not in items and "/orphan.html" not in site.paths()  # behind a nofollow page
        assert "/deep.html" in indexed  # reached through a noindex page that allows following
        for key, fact in FACTS.items():
            r = client.post(f"{ACCOUNT}/instances/harbour/search", json={"query": fact, "max_num_results": 1},
                            headers=AUTH)
            top = r.json()["result"]["data"]
            found = bool(top) and top[0]["filename"].endswith(key) and fact in top[0]["content"][0]["text"]
            assert found == (key in indexed), (key, top[:1])
    finally:
        client.__exit__(None, None, None)


@pytest.mark.slow
def test_respect_robots_meta_false_indexes_and_follows_everything(site: DevSite, model_dir: Path, tmp_path: Path) -> None:
    client, items = crawl(site, model_dir, tmp_path / "data", respect_robots_meta=False)
    try:
        assert {k for k, i in items.items() if i["status"] == "indexed"} == set(FACTS)
    finally:
        client.__exit__(None, None, None)
