"""Extraction options of website instances, end to end: ``content_selector`` (only the chosen
fragment of matching pages is indexed), ``include_images`` (image alt text is indexed), a PATCH of
either re-indexing stored pages, and ``context_expansion`` (neighbouring chunks around each result).

A real site on 127.0.0.1 is crawled by the real spider; the real model embeds into the real Chroma.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.devsite import DevSite, write_sitemap_site
from tests.conftest import API_TOKEN, make_settings, wait_for_job, wait_until
from tests.test_items import upload, wait_indexed

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

NAV = "Visit the zeppelin hangar gift shop for souvenirs and postcards."  # boilerplate on every page
PAGES = {
    # name → (article text, image alt, has <article class="doc">)
    "docs-pump": ("Prime the bilge pump with a cup of sea water before you start the engine.",
                  "Cutaway drawing of the impeller inside the bilge pump housing", True),
    "docs-sail": ("Reef the mainsail early when the wind rises above twenty knots.", "", False),
    "blog-trip": ("Our crew sailed around the lighthouse at dawn and saw a pod of dolphins.", "", True),
}
SELECTOR = [{"path": "**/docs-*", "selector": "article.doc"}]


def page_html(title: str, text: str, alt: str, article: bool) -> str:
    image = f'<img src="/img/{title}.png" alt="{alt}">' if alt else ""
    body = "".join(f"<p>{text} ({i})</p>" for i in range(3)) + image
    main = f'<article class="doc"><h1>{title}</h1>{body}</article>' if article else f"<div><h1>{title}</h1>{body}</div>"
    promo = '<div class="promo">' + "".join(f"<p>{NAV} ({i})</p>" for i in range(3)) + "</div>"  # trafilatura keeps it
    return f"<!doctype html><html><head><title>{title}</title></head><body>{main}{promo}</body></html>"


@pytest.fixture(scope="module")
def crawled(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("options-site")
    for name, (text, alt, article) in PAGES.items():
        (root / f"{name}.html").write_text(page_html(name, text, alt, article))
    with DevSite(root) as site:
        write_sitemap_site(root, site.url, {name: {} for name in PAGES})
        settings = make_settings(tmp_path_factory.mktemp("data"), model_dir)
        with TestClient(create_app(settings)) as client:
            options = {"content_selector": SELECTOR, "include_images": True}
            body = {"id": "boat", "type": "web-crawler", "source": site.url,
                    "source_params": {"web_crawler": {"parse_options": options}}}
            r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            r = client.post(f"{ACCOUNT}/instances/boat/jobs", headers=AUTH)
            job = wait_for_job(client, "boat", r.json()["result"]["id"])
            assert job["status"] == "completed" and job["counters"]["indexed"] == len(PAGES), job
            yield {"client": client, "site": site, "job": job}


def page_texts(client: TestClient, site: DevSite) -> dict[str, str]:
    """Every indexed chunk's text, joined per page (a query that matches everything, 50 results)."""
    r = client.post(f"{ACCOUNT}/instances/boat/search", headers=AUTH,
                    json={"query": "sailing boat pump lighthouse shop", "max_num_results": 50})
    assert r.status_code == 200, r.text
    out: dict[str, str] = {}
    for d in r.json()["result"]["data"]:
        name = d["filename"].removeprefix(site.url + "/").removesuffix(".html")
        out[name] = out.get(name, "") + " ".join(c["text"] for c in d["content"])
    return out


@pytest.mark.slow
def test_content_selector_indexes_only_the_chosen_fragment(crawled: dict[str, Any]) -> None:
    texts = page_texts(crawled["client"], crawled["site"])
    assert set(texts) == set(PAGES)
    assert PAGES["docs-pump"][0] in texts["docs-pump"] and "zeppelin" not in texts["docs-pump"]
    # no rule for the blog: the whole page, boilerplate included, as before
    assert PAGES["blog-trip"][0] in texts["blog-trip"] and "zeppelin" in texts["blog-trip"]
    # the rule's selector matches nothing on docs-sail: indexed whole, and the job log says so
    assert PAGES["docs-sail"][0] in texts["docs-sail"] and "zeppelin" in texts["docs-sail"]
    client, job = crawled["client"], crawled["job"]
    logs = client.get(f"{ACCOUNT}/instances/boat/jobs/{job['id']}/logs?per_page=1000", headers=AUTH).json()["result"]
    missed = [line for line in logs if "matched nothing" in line["message"]]
    assert [line["url"] for line in missed] == [f"{crawled['site'].url}/docs-sail.html"]
    assert missed[0]["level"] == "warning"
    assert "content_selector 'article.doc' matched nothing: the whole page was indexed" == missed[0]["message"]


@pytest.mark.slow
def test_a_script_built_page_gets_a_rendering_hint(crawled: dict[str, Any], model_dir: Path, tmp_path: Path) -> None:
    """tests/site_js/index.html is an app shell ('Loading...' + a script): the static crawl's log says
    to turn rendering on; the ordinary pages of the other site get no such hint."""
    client, job = crawled["client"], crawled["job"]
    logs = client.get(f"{ACCOUNT}/instances/boat/jobs/{job['id']}/logs?per_page=1000", headers=AUTH).json()["result"]
    assert not [line for line in logs if "use_browser_rendering" in line["message"]]
    with DevSite(Path(__file__).resolve().parent / "site_js") as site, \
            TestClient(create_app(make_settings(tmp_path / "data", model_dir))) as js_client:
        r = js_client.post(f"{ACCOUNT}/instances", json={"id": "spa", "type": "web-crawler", "source": site.url},
                           headers=AUTH)
        assert r.status_code == 200, r.text
        r = js_client.post(f"{ACCOUNT}/instances/spa/jobs", headers=AUTH)
        job = wait_for_job(js_client, "spa", r.json()["result"]["id"])
        assert job["status"] == "completed", job
        logs = js_client.get(f"{ACCOUNT}/instances/spa/jobs/{job['id']}/logs?per_page=1000", headers=AUTH).json()["result"]
    hints = [line for line in logs if "use_browser_rendering" in line["message"]]
    assert [(h["url"], h["level"]) for h in hints] == [(f"{site.url}/", "warning")], logs
    assert hints[0]["message"].startswith("only 10 characters of text in the page's HTML, which loads 1 script(s)")


@pytest.mark.slow
def test_include_images_indexes_alt_text(crawled: dict[str, Any]) -> None:
    r = crawled["client"].post(f"{ACCOUNT}/instances/boat/search", headers=AUTH,
                               json={"query": "drawing of the impeller housing", "max_num_results": 1})
    top = r.json()["result"]["data"][0]
    assert top["filename"].endswith("/docs-pump.html")
    assert "Cutaway drawing of the impeller" in top["content"][0]["text"]


@pytest.mark.slow
def test_patching_the_options_reindexes_stored_pages(crawled: dict[str, Any]) -> None:
    client, site = crawled["client"], crawled["site"]
    fetched = len(site.requests)
    body = {"source_params": {"web_crawler": {"parse_options": {"content_selector": [], "include_images": False}}}}
    r = client.patch(f"{ACCOUNT}/instances/boat", json=body, headers=AUTH)
    assert r.status_code == 200, r.text

    def reindexed() -> dict[str, str] | None:
        texts = page_texts(client, site)
        return texts if "zeppelin" in texts.get("docs-pump", "") and "Cutaway" not in texts["docs-pump"] else None

    texts = wait_until(reindexed)
    assert PAGES["docs-pump"][0] in texts["docs-pump"]
    assert len(site.requests) == fetched  # from the stored pages: nothing fetched again


# --- context_expansion ------------------------------------------------------------------------
SECTIONS = [
    ("Anchors", "Drop the anchor in sand rather than weed, and let out five times the depth in chain."),
    ("Knots", "The bowline makes a fixed loop at the end of a line and never slips or jams."),
    ("Tides", "Spring tides follow the full and new moon and have the largest range of the month."),
    ("Radio", "Channel sixteen is kept for distress calls and the first contact with the coastguard."),
    ("Flags", "A yellow flag hoisted on arrival asks the port authority for free pratique."),
]


@pytest.fixture(scope="module")
def handbook(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    settings = make_settings(tmp_path_factory.mktemp("expansion"), model_dir)
    with TestClient(create_app(settings)) as client:
        r = client.post(f"{ACCOUNT}/instances", json={"id": "hb", "type": "r2", "chunk_size": 64, "chunk_overlap": 0},
                        headers=AUTH)
        assert r.status_code == 200, r.text
        # each section is long enough (~70 tokens) to be a chunk of its own at chunk_size 64
        doc = "\n\n".join(f"# {title}\n\n" + " ".join([text] * 3) for title, text in SECTIONS)
        r = upload(client, "hb", "handbook.md", doc.encode())
        item_id = r.json()["result"]["id"]
        assert wait_indexed(client, "hb", item_id)["status"] == "indexed"
        yield client, item_id


def expanded(client: TestClient, query: str, n: Any, **extra: Any) -> Any:
    body = {"query": query, "max_num_results": 1, "ai_search_options": {"retrieval": {"context_expansion": n}}, **extra}
    return client.post(f"{ACCOUNT}/instances/hb/search", json=body, headers=AUTH)


def test_context_expansion_adds_neighbouring_chunks_in_page_order(handbook: tuple[TestClient, str]) -> None:
    client, item_id = handbook
    plain = expanded(client, "which radio channel is for distress calls", 0).json()["result"]["data"][0]
    assert len(plain["content"]) == 1 and "Channel sixteen" in plain["content"][0]["text"]
    hit_id = plain["content"][0]["id"]
    i = int(hit_id.rsplit(":", 1)[1])
    assert 0 < i  # not the first chunk, so there is a neighbour before it

    data = expanded(client, "which radio channel is for distress calls", 1).json()["result"]["data"]
    assert len(data) == 1 and data[0]["file_id"] == item_id and data[0]["score"] == plain["score"]
    content = data[0]["content"]
    ids = [c["id"] for c in content]
    assert hit_id in ids
    assert ids == [f"{item_id}:{j}" for j in range(i - 1, i - 1 + len(ids))]  # contiguous, page order
    assert content[ids.index(hit_id)]["text"] == plain["content"][0]["text"]
    joined = " ".join(c["text"] for c in content)
    assert "Spring tides" in joined or "yellow flag" in joined  # a neighbouring section came along

    first = expanded(client, "how much anchor chain should I let out", 2).json()["result"]["data"][0]
    assert first["content"][0]["id"] == f"{item_id}:0"  # nothing exists before the first chunk


@pytest.mark.parametrize("n", [4, -1, "two"])
def test_context_expansion_out_of_range_is_400(handbook: tuple[TestClient, str], n: Any) -> None:
    r = expanded(handbook[0], "radio", n)
    assert r.status_code == 400, r.text
    assert "context_expansion" in r.json()["errors"][0]["message"]
