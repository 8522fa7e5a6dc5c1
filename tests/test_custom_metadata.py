"""Custom metadata: values read from crawled pages' ``<meta>`` tags and uploads' ``x-amz-meta-*``
headers, cast to the schema's types, stored on every chunk, filterable, and shown in results.

The parsing rules are checked on the functions the pipeline calls; the end-to-end tests crawl a
real site on 127.0.0.1 (and upload through the real API), embed with the real model and query
the real Chroma and FTS5 indexes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.custom_metadata import coerce, from_headers, from_html, meta_tags, page_values, schema_of
from server.app import create_app
from server.devsite import DevSite, write_sitemap_site
from tests.conftest import API_TOKEN, make_settings, wait_for_job, wait_until
from tests.test_items import upload, wait_indexed

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SCHEMA = [
    {"field_name": "category", "data_type": "text"},
    {"field_name": "version", "data_type": "number"},
    {"field_name": "is_public", "data_type": "boolean"},
    {"field_name": "published", "data_type": "datetime"},
    {"field_name": "description", "data_type": "text"},
]


# --- parsing rules ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "data_type", "expected"),
    [
        ("documentation", "text", "documentation"),
        ("  padded  ", "text", "padded"),
        ("x" * 600, "text", "x" * 500),
        ("", "text", None),
        ("   ", "text", None),
        (None, "text", None),
        ("2.5", "number", 2.5),
        ("-3.14", "number", -3.14),
        ("100", "number", 100.0),
        ("1e3", "number", 1000.0),
        ("2.5 px", "number", None),
        ("nan", "number", None),
        ("inf", "number", None),
        ("", "number", None),
        ("true", "boolean", True),
        ("TRUE", "boolean", True),
        ("1", "boolean", True),
        ("yes", "boolean", True),
        ("false", "boolean", False),
        ("0", "boolean", False),
        ("No", "boolean", False),
        ("maybe", "boolean", None),
        ("2026-01-15T00:00:00Z", "datetime", 1_768_435_200_000),
        ("2026-01-15", "datetime", 1_768_435_200_000),
        ("2026-01-15T01:00:00+01:00", "datetime", 1_768_435_200_000),
        ("2026-01-15T00:00:00.999Z", "datetime", 1_768_435_200_000),  # rounded down to seconds
        ("15/01/2026", "datetime", None),
        ("soon", "unknown-type", None),
    ],
)
def test_values_are_cast_to_their_type_or_left_out(value: str | None, data_type: str, expected: Any) -> None:
    got = coerce(value, data_type)
    assert got == expected and type(got) is type(expected)


PAGE = b"""<!DOCTYPE html><html><head>
<title>Getting started</title>
<meta charset="utf-8">
<meta name="Category" content="documentation">
<meta name="category" content="ignored: the first tag naming a field is read">
<meta property="version" content="2.5">
<meta name="is_public" content="true">
<meta property="og:title" content="OG title">
<meta property="og:description" content="OG description">
<meta name="description" content="Standard description">
<meta property="og:image" content="https://example.com/og.png">
<meta name="author" content="Zo\xc3\xab">
</head><body><meta name="published" content="2026-01-15">
<p>Body text.</p></body></html>"""


def test_meta_tags_read_the_head_only_first_wins_names_lowercased() -> None:
    tags = meta_tags(PAGE, "text/html")
    assert tags["category"] == "documentation"
    assert tags["version"] == "2.5" and tags["og:title"] == "OG title"
    assert tags["author"] == "Zoë"  # decoded as UTF-8
    assert "published" not in tags  # a <meta> in the body is not read


def test_recognised_fields_fall_back_to_open_graph_and_the_standard_tag_wins() -> None:
    schema = [("title", "text"), ("description", "text"), ("image", "text"), ("Version", "number"),
              ("is_public", "boolean"), ("published", "datetime"), ("missing", "text")]
    assert from_html(PAGE, schema) == {
        "title": "OG title",  # no <meta name="title">: og:title
        "description": "Standard description",  # both present: the standard one
        "image": "https://example.com/og.png",
        "Version": 2.5,  # stored under the name as the schema spells it
        "is_public": True,
    }
    assert from_html(PAGE, []) == {}


def test_upload_headers_are_read_case_insensitively_and_as_utf8() -> None:
    headers = {"X-Amz-Meta-Category": "guides", "x-amz-meta-version": "not a number",
               "x-amz-meta-author": "Zoë".encode().decode("latin-1"), "content-type": "text/plain"}
    schema = [("category", "text"), ("version", "number"), ("Author", "text")]
    assert from_headers(headers, schema) == {"category": "guides", "Author": "Zoë"}


def test_page_values_use_the_source_of_each_kind() -> None:
    schema = schema_of(SCHEMA)
    headers = {"x-amz-meta-category": "from-header"}
    assert page_values(PAGE, "text/html", headers, schema, upload=True) == {"category": "from-header"}
    assert page_values(PAGE, "text/html", headers, schema, upload=False)["category"] == "documentation"
    assert page_values(b"%PDF-1.4 <meta name='category' content='x'>", "application/pdf", {}, schema, upload=False) == {}
    assert page_values(PAGE, "text/html", headers, [], upload=False) == {}


# --- end to end: a crawled site ---------------------------------------------------------------
PAGES = {
    "install": ("Installing the tool", "Run the installer and accept the licence to install the harbour tool.",
                {"category": "documentation", "version": "2.5", "is_public": "true", "published": "2026-01-15T00:00:00Z",
                 "audience": "admins"}),
    "upgrade": ("Upgrading the tool", "To upgrade the harbour tool, download the new installer and run it again.",
                {"category": "documentation", "version": "3", "is_public": "false", "published": "2026-03-01"}),
    "news": ("Release news", "The harbour tool release adds a lighthouse view for installing plugins.",
             {"category": "blog", "version": "two", "og:description": "News about releases"}),
}


def page_html(title: str, text: str, meta: dict[str, str]) -> str:
    tags = "".join(
        f'<meta {"property" if k.startswith("og:") else "name"}="{k}" content="{v}">' for k, v in meta.items()
    )
    body = "".join(f"<p>{text} ({i})</p>" for i in range(3))
    return f"<!doctype html><html><head><title>{title}</title>{tags}</head><body><main><h1>{title}</h1>{body}</main></body></html>"


@pytest.fixture(scope="module")
def crawled(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("meta-site")
    for name, (title, text, meta) in PAGES.items():
        (root / f"{name}.html").write_text(page_html(title, text, meta))
    with DevSite(root) as site:
        write_sitemap_site(root, site.url, {name: {} for name in PAGES})
        settings = make_settings(tmp_path_factory.mktemp("data"), model_dir)
        with TestClient(create_app(settings)) as client:
            body = {"id": "meta", "type": "web-crawler", "source": site.url, "custom_metadata": SCHEMA}
            r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
            r = client.post(f"{ACCOUNT}/instances/meta/jobs", headers=AUTH)
            assert r.status_code == 200, r.text
            job = wait_for_job(client, "meta", r.json()["result"]["id"])
            assert job["status"] == "completed" and job["counters"]["indexed"] == len(PAGES), job
            yield {"client": client, "site": site, "root": root}


def search(client: TestClient, query: str, filters: dict[str, Any] | None = None, **retrieval: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"query": query, "max_num_results": 20}
    if filters is not None:
        body["filters"] = filters
    if retrieval:
        body["ai_search_options"] = {"retrieval": retrieval}
    r = client.post(f"{ACCOUNT}/instances/meta/search", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["result"]["data"]


def pages(data: list[dict[str, Any]], site: DevSite) -> set[str]:
    return {d["filename"].removeprefix(site.url + "/").removesuffix(".html") for d in data}


@pytest.mark.slow
@pytest.mark.parametrize("retrieval_type", ["vector", "keyword", "hybrid"])
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"type": "eq", "key": "category", "value": "documentation"}, {"install", "upgrade"}),
        ({"type": "eq", "key": "category", "value": "blog"}, {"news"}),
        ({"type": "gte", "key": "version", "value": 2.6}, {"upgrade"}),  # numbers compare as numbers
        ({"type": "lt", "key": "version", "value": 10}, {"install", "upgrade"}),  # "two" was left out
        ({"type": "eq", "key": "is_public", "value": True}, {"install"}),
        ({"type": "eq", "key": "is_public", "value": False}, {"upgrade"}),
        ({"type": "gt", "key": "published", "value": 1_768_435_200_000}, {"upgrade"}),
        ({"type": "and", "filters": [{"type": "eq", "key": "category", "value": "documentation"},
                                     {"type": "lte", "key": "published", "value": 1_768_435_200_000}]}, {"install"}),
    ],
)
def test_crawled_meta_tags_filter_results(crawled: dict[str, Any], filters: dict[str, Any], expected: set[str],
                                          retrieval_type: str) -> None:
    data = search(crawled["client"], "how do I install the harbour tool", filters, retrieval_type=retrieval_type)
    assert pages(data, crawled["site"]) == expected


@pytest.mark.slow
def test_values_are_shown_with_each_result(crawled: dict[str, Any]) -> None:
    by_page = {}
    for d in search(crawled["client"], "harbour tool installer"):
        by_page.setdefault(d["filename"].rsplit("/", 1)[-1], d["attributes"]["file"])
    install = by_page["install.html"]
    assert install["category"] == "documentation" and install["version"] == 2.5 and install["is_public"] is True
    assert install["published"] == 1_768_435_200_000
    assert install["title"] == "Installing the tool" and install["url"].endswith("/install.html")
    news = by_page["news.html"]
    assert news["category"] == "blog" and "version" not in news  # "two" is not a number
    assert news["description"] == "News about releases"  # og:description, the recognised fallback


@pytest.mark.slow
def test_a_changed_meta_tag_is_picked_up_on_the_next_fetch(crawled: dict[str, Any]) -> None:
    """Only a <meta> changes (the text is the same): the page is re-indexed with the new value."""
    client, site, root = crawled["client"], crawled["site"], crawled["root"]
    title, text, meta = PAGES["news"]
    (root / "news.html").write_text(page_html(title, text, {**meta, "category": "announcements"}))
    r = client.post(f"{ACCOUNT}/instances/meta/jobs/sync-item", json={"url": f"{site.url}/news.html"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert wait_for_job(client, "meta", r.json()["result"]["id"])["status"] == "completed"
    wait_until(lambda: pages(search(client, "release news", {"type": "eq", "key": "category", "value": "announcements"}), site) == {"news"})
    assert pages(search(client, "release news", {"type": "eq", "key": "category", "value": "blog"}), site) == set()


@pytest.mark.slow
def test_a_schema_change_reindexes_stored_pages(crawled: dict[str, Any]) -> None:
    """A field added to the schema is read from the stored pages without a new crawl."""
    client, site = crawled["client"], crawled["site"]
    requests_before = len(site.requests)
    r = client.post(f"{ACCOUNT}/instances/meta/search", headers=AUTH,
                    json={"query": "install", "filters": {"type": "eq", "key": "audience", "value": "admins"}})
    assert r.status_code == 400  # not a field yet
    schema = [*SCHEMA, {"field_name": "audience", "data_type": "text"}]
    r = client.patch(f"{ACCOUNT}/instances/meta", json={"custom_metadata": schema}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["messages"] == [{"code": 0, "message": f"indexing options changed: {len(PAGES)} indexed items are "
                                                            "being indexed again from their stored pages"}]
    r = client.patch(f"{ACCOUNT}/instances/meta", json={"max_num_results": 12}, headers=AUTH)
    assert r.status_code == 200 and r.json()["messages"] == []  # a retrieval option re-indexes nothing
    admins = {"type": "eq", "key": "audience", "value": "admins"}
    wait_until(lambda: pages(search(client, "install the harbour tool", admins), site) == {"install"})
    items = client.get(f"{ACCOUNT}/instances/meta/items?per_page=100", headers=AUTH).json()["result"]
    wait_until(lambda: all(i["status"] == "indexed" for i in
                           client.get(f"{ACCOUNT}/instances/meta/items?per_page=100", headers=AUTH).json()["result"]))
    assert len(items) == len(PAGES)
    assert len(site.requests) == requests_before  # from the stored pages: nothing fetched
    assert pages(search(client, "harbour tool", {"type": "eq", "key": "category", "value": "documentation"}), site) == {"install", "upgrade"}


# --- end to end: uploads (R2-style object metadata) -------------------------------------------
@pytest.fixture(scope="module")
def api(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("upload-meta"), model_dir)
    with TestClient(create_app(settings)) as client:
        r = client.post(f"{ACCOUNT}/instances", json={"id": "files", "type": "r2", "custom_metadata": SCHEMA}, headers=AUTH)
        assert r.status_code == 200, r.text
        yield client


def test_upload_headers_become_filterable_values(api: TestClient) -> None:
    meta = {"x-amz-meta-category": "manuals", "X-Amz-Meta-Version": "4", "x-amz-meta-is_public": "yes",
            "x-amz-meta-unknown": "not in the schema"}
    r = upload(api, "files", "manuals/pump.txt", b"The bilge pump must be primed with a cup of sea water.", headers=meta)
    assert r.status_code == 200, r.text
    item_id = r.json()["result"]["id"]
    assert wait_indexed(api, "files", item_id)["status"] == "indexed"
    r = upload(api, "files", "manuals/anchor.txt", b"Lower the anchor slowly before the pump is started.",
               headers={"x-amz-meta-category": "notes"})
    assert wait_indexed(api, "files", r.json()["result"]["id"])["status"] == "indexed"

    def hits(filters: dict[str, Any]) -> list[dict[str, Any]]:
        body = {"query": "how to prime the bilge pump", "filters": filters}
        r = api.post(f"{ACCOUNT}/instances/files/search", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()["result"]["data"]

    found = hits({"type": "eq", "key": "category", "value": "manuals"})
    assert {h["filename"] for h in found} == {"manuals/pump.txt"}
    file = found[0]["attributes"]["file"]
    assert file["category"] == "manuals" and file["version"] == 4.0 and file["is_public"] is True
    assert "unknown" not in file and "x-amz-meta-unknown" not in file
    assert {h["filename"] for h in hits({"type": "gte", "key": "version", "value": 4})} == {"manuals/pump.txt"}
    assert {h["filename"] for h in hits({"type": "eq", "key": "category", "value": "notes"})} == {"manuals/anchor.txt"}

    # re-indexing from the stored original keeps the upload's metadata
    r = api.post(f"{ACCOUNT}/instances/files/items/{item_id}/sync", headers=AUTH)
    assert r.status_code == 200, r.text
    assert wait_indexed(api, "files", item_id)["status"] == "indexed"
    assert {h["filename"] for h in hits({"type": "eq", "key": "category", "value": "manuals"})} == {"manuals/pump.txt"}


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"type": "gt", "key": "category", "value": "m"},
         "filters.type: text field 'category' supports eq and ne (or an 'or' of eq), not 'gt'"),
        ({"type": "lt", "key": "is_public", "value": True},
         "filters.type: boolean field 'is_public' supports eq and ne (or an 'or' of eq), not 'lt'"),
        ({"type": "eq", "key": "category", "value": 3}, "filters.value: must be a string for text field 'category'"),
        ({"type": "gte", "key": "version", "value": "high"}, "filters.value: number field 'version' needs a number, got 'high'"),
        ({"type": "gte", "key": "version", "value": True}, "filters.value: number field 'version' needs a number, got True"),
        ({"type": "eq", "key": "is_public", "value": "perhaps"},
         "filters.value: boolean field 'is_public' needs true or false, got 'perhaps'"),
        ({"type": "gt", "key": "published", "value": "last week"},
         "filters.value: datetime field 'published' needs epoch milliseconds or an ISO 8601 date-time, got 'last week'"),
        ({"type": "eq", "key": "colour", "value": "red"},
         "filters.key: must be one of folder, filename, context, timestamp, category, version, is_public, published, description, got 'colour'"),
        ({"type": "or", "filters": [{"type": "eq", "key": "category", "value": "a"}, {"type": "eq", "key": "version", "value": 1}]},
         "filters.filters: all 'or' conditions must use the same key"),
    ],
)
def test_bad_custom_filters_are_400_naming_the_field(api: TestClient, filters: dict[str, Any], message: str) -> None:
    r = api.post(f"{ACCOUNT}/instances/files/search", json={"query": "pump", "filters": filters}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["message"] == message


def test_custom_filter_values_and_names_are_read_like_stored_values(api: TestClient) -> None:
    """Names are case-insensitive; strings cast as the indexer casts them; an 'or' of eq on one field."""
    r = upload(api, "files", "typed/valve.txt", b"Close the sea valve before leaving the boat in the marina.",
               headers={"x-amz-meta-category": "checklists", "x-amz-meta-version": "7", "x-amz-meta-is_public": "0",
                        "x-amz-meta-published": "2026-05-01T00:00:00Z"})
    assert wait_indexed(api, "files", r.json()["result"]["id"])["status"] == "indexed"

    def found(filters: dict[str, Any]) -> set[str]:
        body = {"query": "close the sea valve", "filters": filters}
        r = api.post(f"{ACCOUNT}/instances/files/search", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return {h["filename"] for h in r.json()["result"]["data"]}

    valve = {"typed/valve.txt"}
    assert found({"type": "eq", "key": "CATEGORY", "value": "checklists"}) == valve
    assert found({"type": "eq", "key": "version", "value": "7"}) == valve
    assert found({"type": "eq", "key": "version", "value": 7}) == valve
    assert found({"type": "eq", "key": "is_public", "value": "no"}) == valve
    assert found({"type": "gte", "key": "published", "value": "2026-05-01"}) == valve
    assert found({"type": "gte", "key": "published", "value": 1_777_593_600_999}) == valve  # rounded down to seconds
    assert not found({"type": "gt", "key": "published", "value": "2026-05-01T00:00:00Z"}) & valve
    assert valve <= found({"type": "or", "filters": [{"type": "eq", "key": "category", "value": "checklists"},
                                                     {"type": "eq", "key": "Category", "value": "manuals"}]})
    assert not found({"type": "ne", "key": "category", "value": "checklists"}) & valve
