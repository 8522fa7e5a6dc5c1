"""End to end: pages whose encoding only the HTTP header (or nothing) declares are indexed as
correctly decoded text, and a sitemap entry on another port of the same host is not fetched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.devsite import DevSite
from tests.conftest import API_TOKEN, make_settings, wait_for_job

pytestmark = pytest.mark.slow

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

LANTERN = "Die Größe der Laterne beträgt dreißig Zentimeter, und sie leuchtet über dem Fluss."
BRIDGE = "Die Brücke über die Förde ist zweihundert Meter lang und für Fußgänger geöffnet."
BAKER = "Der Bäcker backt süße Brötchen für 2 € – jeden Morgen um fünf Uhr."
FERRY = "Der Fährmann zählt jeden Abend die Möwen am Ufer der Förde."
# path → (bytes encoding, Content-Type header, title, text); none of the pages has a <meta charset>
PAGES = {
    "/de/header.html": ("utf-8", "text/html; charset=utf-8", "Übersicht über Größe und Maße", LANTERN),
    "/de/nocharset.html": ("utf-8", "text/html", "Brücken über die Förde", BRIDGE),
    "/de/cp1252.html": ("cp1252", "text/html; charset=windows-1252", "Bäckerei Süßwaren", BAKER),
    "/de/faehre.txt": ("cp1252", "text/plain; charset=iso-8859-1", "", FERRY),
}


def page_html(title: str, text: str) -> str:
    paragraphs = "".join(f"<p>{text} {i}</p>" for i in range(3))
    return f"<!doctype html><html><head><title>{title}</title></head><body><main><h1>{title}</h1>{paragraphs}</main></body></html>"


@pytest.fixture(scope="module")
def crawled(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One sync of a German site; its sitemap and robots.txt also name URLs on another port."""
    other_root = tmp_path_factory.mktemp("other")
    (other_root / "docs").mkdir()
    (other_root / "docs" / "battery.html").write_text(page_html("Battery", "The battery lasts nine hours."))
    root = tmp_path_factory.mktemp("german")
    (root / "de").mkdir()
    for path, (encoding, _ctype, title, text) in PAGES.items():
        body = page_html(title, text) if path.endswith(".html") else text
        (root / path.lstrip("/")).write_bytes(body.encode(encoding))
    content_types = {path: ctype for path, (_e, ctype, _t, _x) in PAGES.items()}
    with DevSite(other_root) as other, DevSite(root, content_types=content_types) as site:
        (other_root / "sitemap.xml").write_text(urlset([f"{other.url}/docs/battery.html"]))
        locs = [site.url + p for p in PAGES] + [f"{other.url}/docs/battery.html"]
        (root / "sitemap.xml").write_text(urlset(locs))
        (root / "robots.txt").write_text(f"User-agent: *\nAllow: /\nSitemap: {site.url}/sitemap.xml\nSitemap: {other.url}/sitemap.xml\n")
        settings = make_settings(tmp_path_factory.mktemp("data"), model_dir)
        with TestClient(create_app(settings)) as client:
            body = {"id": "german", "type": "web-crawler", "source": site.url}
            r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            r = client.post(f"{ACCOUNT}/instances/german/jobs", headers=AUTH)
            assert r.status_code == 200, r.text
            job = wait_for_job(client, "german", r.json()["result"]["id"])
            yield {"client": client, "job": job, "site": site, "other": other, "other_requests": list(other.requests)}


def urlset(locs: list[str]) -> str:
    rows = "".join(f"<url><loc>{loc}</loc></url>" for loc in locs)
    return f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{rows}</urlset>'


def search(client: TestClient, query: str) -> list[dict[str, Any]]:
    r = client.post(f"{ACCOUNT}/instances/german/search", json={"query": query}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["result"]["data"]


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("Wie groß ist die Laterne?", "/de/header.html"),  # (a) charset in the header only
        ("Wie lang ist die Brücke über die Förde?", "/de/nocharset.html"),  # (b) no charset anywhere, UTF-8
        ("Was kosten die süßen Brötchen beim Bäcker?", "/de/cp1252.html"),  # (c) windows-1252 by header
        ("Wer zählt die Möwen?", "/de/faehre.txt"),  # text/plain; charset=iso-8859-1
    ],
)
def test_german_text_is_decoded(crawled: dict[str, Any], query: str, path: str) -> None:
    assert crawled["job"]["status"] == "completed", crawled["job"]
    data = search(crawled["client"], query)
    assert data and data[0]["filename"] == crawled["site"].url + path, (query, [d["filename"] for d in data])
    _encoding, _ctype, title, text = PAGES[path]
    hit = data[0]
    content = " ".join(c["text"] for c in hit["content"])
    assert text in content, content
    assert "Ã" not in content and "\ufffd" not in content
    if title:
        assert hit["attributes"]["file"]["title"] == title


def test_sitemap_url_on_another_port_is_not_fetched(crawled: dict[str, Any]) -> None:
    job = crawled["job"]
    assert job["status"] == "completed", job
    assert job["counters"]["fetched"] == len(PAGES) and job["counters"]["errors"] == 0
    assert crawled["other_requests"] == []  # neither its sitemap nor its page
    items = crawled["client"].get(f"{ACCOUNT}/instances/german/items?per_page=100", headers=AUTH).json()["result"]
    assert {item["key"] for item in items} == {crawled["site"].url + path for path in PAGES}
    titles = {item["key"].removeprefix(crawled["site"].url): item["title"] for item in items}
    assert titles["/de/header.html"] == "Übersicht über Größe und Maße"  # the decoded <title>


def test_sync_item_refuses_another_port(crawled: dict[str, Any]) -> None:
    url = f"{crawled['other'].url}/docs/battery.html"
    r = crawled["client"].post(f"{ACCOUNT}/instances/german/jobs/sync-item", json={"url": url}, headers=AUTH)
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith("url:"), r.text
    assert crawled["other"].requests == []
