"""Metadata filters and multitenancy, with every example of the seeds' Metadata and Multitenancy pages.

The folder tree is built by uploading files into an ``r2`` instance; searches
go through the real API, the real model and real Chroma.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.metafilter import FilterError, compile_filters
from server.app import create_app
from tests.conftest import API_TOKEN, make_settings
from tests.test_items import make_pdf, upload, wait_indexed

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
QUERY = "When did I sign my agreement contract?"

TREE = {
    "customer-a/profile.md": b"# Profile A\n\nCustomer A is Acme Anvils, signed its agreement contract in March. Secret: AARDVARK.",
    "customer-a/contracts/contract-1.pdf": make_pdf(["Customer A agreement contract signed on 3 March 2025.", "Code word ALBATROSS."]),
    "customer-a/contracts/2024/old.md": b"Customer A old agreement contract from 2024. Code word ANTELOPE.",
    "customer-b/profile.md": b"# Profile B\n\nCustomer B is Bolt Bakery, signed its agreement contract in June. Secret: BUFFALO.",
    "customer-b/contracts/contract-1.md": b"Customer B agreement contract signed on 9 June 2025. Code word BARRACUDA.",
    "customer-ab/notes.md": b"Customer AB agreement contract notes, a different tenant. Code word CHAMELEON.",
    "llama/logistics/llama-logistics.md": b"Llamas can carry 3 drinks max when they deliver coffee; the agreement contract says so.",
    "readme.md": b"The root readme mentions the agreement contract template.",
}
A_FILES = {"customer-a/profile.md", "customer-a/contracts/contract-1.pdf", "customer-a/contracts/2024/old.md"}
B_WORDS = ("BUFFALO", "BARRACUDA", "Customer B", "Bolt Bakery")


@pytest.fixture(scope="module")
def tree(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = make_settings(tmp_path_factory.mktemp("meta"), model_dir)
    with TestClient(create_app(settings)) as client:
        assert client.post(f"{ACCOUNT}/instances", json={"id": "tenants", "type": "r2"}, headers=AUTH).status_code == 200
        ids = {}
        for key, data in TREE.items():
            r = upload(client, "tenants", key, data)
            assert r.status_code == 200, r.text
            ids[key] = r.json()["result"]["id"]
        for item_id in ids.values():
            assert wait_indexed(client, "tenants", item_id)["status"] == "indexed"
        yield {"client": client, "ids": ids}


def files(
    client: TestClient,
    filters: Any,
    *,
    nested: bool = False,
    headers: dict[str, str] | None = None,
    query: str = QUERY,
    retrieval_type: str = "vector",
) -> set[str]:
    body: dict[str, Any] = {"query": query, "max_num_results": 50}
    if nested or retrieval_type != "vector":
        body["ai_search_options"] = {"retrieval": {"filters": filters, "max_num_results": 50, "retrieval_type": retrieval_type}}
    elif filters is not None:
        body["filters"] = filters
    r = client.post(f"{ACCOUNT}/instances/tenants/search", json=body, headers=headers or AUTH)
    assert r.status_code == 200, r.text
    return {d["filename"] for d in r.json()["result"]["data"]}


STARTS_WITH_A = {
    "type": "and",
    "filters": [
        {"type": "gt", "key": "folder", "value": "customer-a//"},
        {"type": "lte", "key": "folder", "value": "customer-a/z"},
    ],
}


@pytest.mark.parametrize("nested", [False, True])
def test_starts_with_folder_returns_exactly_the_subtree(tree: dict[str, Any], nested: bool) -> None:
    # seeds, Metadata + Multitenancy: "This filter captures both files profile.md and contract-1.pdf"
    assert files(tree["client"], STARTS_WITH_A, nested=nested) == A_FILES


@pytest.mark.parametrize("nested", [False, True])
def test_eq_folder_matches_only_that_folder(tree: dict[str, Any], nested: bool) -> None:
    client = tree["client"]
    assert files(client, {"type": "eq", "key": "folder", "value": "customer-a/"}, nested=nested) == {"customer-a/profile.md"}
    # Multitenancy page example
    got = files(client, {"type": "eq", "key": "folder", "value": "customer-a/contracts/"}, nested=nested)
    assert got == {"customer-a/contracts/contract-1.pdf"}


def test_metadata_page_and_example(tree: dict[str, Any]) -> None:
    # seeds, Metadata: folder eq "llama/logistics/" and timestamp gte "1735689600000" (2025-01-01)
    f = {
        "type": "and",
        "filters": [
            {"type": "eq", "key": "folder", "value": "llama/logistics/"},
            {"type": "gte", "key": "timestamp", "value": "1735689600000"},
        ],
    }
    assert files(tree["client"], f, query="How do I train a llama to deliver coffee?") == {"llama/logistics/llama-logistics.md"}
    f["filters"][1]["value"] = str(int(time.time() + 3600) * 1000)  # type: ignore[index]
    assert files(tree["client"], f) == set()


def test_timestamp_comparisons_round_to_seconds(tree: dict[str, Any]) -> None:
    client = tree["client"]
    r = client.post(f"{ACCOUNT}/instances/tenants/search", json={"query": "llama coffee", "filters": {"type": "eq", "key": "folder", "value": "llama/logistics/"}}, headers=AUTH)
    ts = r.json()["result"]["data"][0]["attributes"]["timestamp"]
    assert ts % 1000 == 0
    llama = {"llama/logistics/llama-logistics.md"}
    within = {"type": "and", "filters": [{"type": "eq", "key": "folder", "value": "llama/logistics/"}]}
    for op, value, expected in [
        ("eq", ts + 999, llama),  # rounded down to ts
        ("eq", ts + 1000, set()),
        ("gte", ts + 999, llama),
        ("gt", ts + 999, set()),
        ("lte", ts, llama),
        ("lt", ts, set()),
        ("ne", ts, set()),
        ("lt", ts + 1000, llama),
    ]:
        f = {**within, "filters": within["filters"] + [{"type": op, "key": "timestamp", "value": value}]}
        assert files(client, f) == expected, (op, value)


def test_ne_and_or_and_filename(tree: dict[str, Any]) -> None:
    client = tree["client"]
    everything = set(TREE)
    assert files(client, None) == everything
    assert files(client, {"type": "ne", "key": "folder", "value": "customer-a/"}) == everything - {"customer-a/profile.md"}
    f = {"type": "or", "filters": [{"type": "eq", "key": "folder", "value": "customer-a/"}, {"type": "eq", "key": "folder", "value": "customer-b/"}]}
    assert files(client, f) == {"customer-a/profile.md", "customer-b/profile.md"}
    assert files(client, {"type": "eq", "key": "filename", "value": "customer-b/profile.md"}) == {"customer-b/profile.md"}
    f = {"type": "and", "filters": [{"type": "gte", "key": "filename", "value": "customer-b/"}, {"type": "lt", "key": "filename", "value": "customer-c"}]}
    assert files(client, f) == {"customer-b/profile.md", "customer-b/contracts/contract-1.md"}
    assert files(client, {"type": "lt", "key": "folder", "value": "customer-a/"}) == {"readme.md"}  # folder ""
    assert files(client, {"type": "eq", "key": "folder", "value": ""}) == {"readme.md"}


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"type": "or", "filters": [{"type": "gt", "key": "folder", "value": "a"}]}, "filters.filters[0].type"),
        ({"type": "or", "filters": [{"type": "eq", "key": "folder", "value": "a/"}, {"type": "eq", "key": "filename", "value": "b"}]}, "filters.filters"),
        ({"type": "and", "filters": [{"type": "or", "filters": []}]}, "filters.filters[0]"),
        ({"type": "and", "filters": []}, "filters.filters"),
        ({"type": "eq", "key": "colour", "value": "red"}, "filters.key"),
        ({"type": "like", "key": "folder", "value": "a"}, "filters.type"),
        ({"type": "gte", "key": "timestamp", "value": "yesterday"}, "filters.value"),
        ({"type": "eq", "key": "folder"}, "filters.value"),
        ({"type": "eq", "key": "folder", "value": 3}, "filters.value"),
    ],
)
def test_bad_filters_are_400_naming_the_field(tree: dict[str, Any], filters: dict[str, Any], field: str) -> None:
    for body in ({"query": QUERY, "filters": filters}, {"query": QUERY, "ai_search_options": {"retrieval": {"filters": filters}}}):
        r = tree["client"].post(f"{ACCOUNT}/instances/tenants/search", json=body, headers=AUTH)
        assert r.status_code == 400, r.text
        assert field in r.json()["errors"][0]["message"], r.json()


def test_compile_starts_with_against_plain_values() -> None:
    folders = ["customer-a/", "customer-a/contracts/", "customer-a/zoo/", "customer-a/~x/", "customer-ab/", "customer-a", "customer-b/", ""]
    where = compile_filters(STARTS_WITH_A, lambda key: folders)
    assert where == {"folder": {"$in": ["customer-a/", "customer-a/contracts/", "customer-a/zoo/", "customer-a/~x/"]}}
    # the same comparisons outside the idiom are plain string comparisons
    where = compile_filters({"type": "lte", "key": "folder", "value": "customer-a/z"}, lambda key: folders)
    assert where == {"folder": {"$in": ["", "customer-a", "customer-a/", "customer-a/contracts/"]}}
    where = compile_filters({"type": "gt", "key": "folder", "value": "customer-a//"}, lambda key: folders)
    assert where == {"folder": {"$in": ["customer-a/", "customer-a/contracts/", "customer-a/zoo/", "customer-a/~x/", "customer-ab/", "customer-b/"]}}
    with pytest.raises(FilterError):
        compile_filters({"type": "eq"}, lambda key: [])


# --- multitenancy through folder-restricted tokens -------------------------------------------------
def _token(client: TestClient, prefix: str | None, perms: list[str] | None = None) -> dict[str, str]:
    body: dict[str, Any] = {"name": f"tenant {prefix}", "permissions": perms or ["AI Search:Run", "AI Search:Read"]}
    if prefix:
        body["folder_prefix"] = prefix
    r = client.post(f"{ACCOUNT}/tokens", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['result']['value']}"}


ATTACKS: list[Any] = [
    None,
    {"type": "eq", "key": "folder", "value": "customer-b/"},
    {"type": "eq", "key": "folder", "value": "customer-b/contracts/"},
    {"type": "or", "filters": [{"type": "eq", "key": "folder", "value": "customer-b/"}, {"type": "eq", "key": "folder", "value": "customer-a/"}]},
    {"type": "and", "filters": [{"type": "gt", "key": "folder", "value": "customer-b//"}, {"type": "lte", "key": "folder", "value": "customer-b/z"}]},
    {"type": "ne", "key": "folder", "value": "customer-a/"},
    {"type": "gte", "key": "folder", "value": ""},
    {"type": "eq", "key": "filename", "value": "customer-b/profile.md"},
    {"type": "gte", "key": "timestamp", "value": 0},
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_tenant_token_never_sees_another_tenant(tree: dict[str, Any], attack: Any) -> None:
    client = tree["client"]
    headers = _token(client, "customer-a/")
    for nested, retrieval_type in ((False, "vector"), (True, "vector"), (True, "keyword"), (True, "hybrid")):
        got = files(
            client, attack, nested=nested, headers=headers, retrieval_type=retrieval_type,
            query="Customer B Bolt Bakery agreement BUFFALO BARRACUDA",
        )
        assert got <= A_FILES, (attack, retrieval_type, got)
    r = client.post(
        f"{ACCOUNT}/instances/tenants/ai-search",
        json={"query": "What is customer B's secret code word?", "filters": attack},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    text = r.text
    assert not any(w in text for w in B_WORDS), text


def test_tenant_token_sees_its_whole_subtree_and_items(tree: dict[str, Any]) -> None:
    client = tree["client"]
    headers = _token(client, "customer-a/")
    assert files(client, None, headers=headers) == A_FILES
    assert files(client, STARTS_WITH_A, headers=headers) == A_FILES
    assert files(client, None, headers=headers, retrieval_type="keyword", query="customer agreement contract") == A_FILES
    listed = client.get(f"{ACCOUNT}/instances/tenants/items?per_page=100", headers=headers).json()["result"]
    assert {i["key"] for i in listed} == A_FILES
    b_id = tree["ids"]["customer-b/profile.md"]
    assert client.get(f"{ACCOUNT}/instances/tenants/items/{b_id}", headers=headers).status_code == 404
    # a prefix without its trailing '/' would also match 'customer-ab/': refused
    r = client.post(f"{ACCOUNT}/tokens", json={"name": "x", "permissions": ["AI Search:Run"], "folder_prefix": "customer-a"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["errors"][0]["message"].startswith("folder_prefix:")
    exact = _token(client, "customer-ab/")
    assert files(client, None, headers=exact) == {"customer-ab/notes.md"}


def test_tenant_upload_outside_prefix_is_403(tree: dict[str, Any]) -> None:
    client = tree["client"]
    headers = {**_token(client, "customer-a/", ["AI Search:Edit", "AI Search:Read"])}
    body_headers = dict(headers)
    r = upload(client, "tenants", "customer-b/planted.md", b"planted by A", headers=body_headers)
    assert r.status_code == 403, r.text
    assert "customer-a/" in r.json()["errors"][0]["message"]
