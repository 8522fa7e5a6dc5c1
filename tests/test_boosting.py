"""Relevance boosting (``boost_by``) through the API: directions, bounds, candidates, overrides, 400s.

Real model, real Chroma, real FTS5. Chunks are embedded by the service's embedder and stored
the way the pipeline stores them (``VectorStore.replace_item``), with the metadata (timestamp,
custom fields) each test needs: uploads stamp every file with the same second, so the timestamps
are written here (reading custom values from pages and uploads: tests/test_custom_metadata.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.boost import BOOST_WEIGHT, Boost, boost_scores, resolve_boosts
from server.app import create_app
from tests.conftest import API_TOKEN, make_settings

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
SCHEMA = [
    {"field_name": "author", "data_type": "text"},
    {"field_name": "priority", "data_type": "number"},
    {"field_name": "draft", "data_type": "boolean"},
    {"field_name": "published", "data_type": "datetime"},
]
# Two near-identical chunks (cosine, BM25 and rank fusion all within a hair of each other):
# "old" is the oldest and has an author, "new" the newest (after the recipe) and has none.
DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "old": ("To reset the router password, hold the reset button for ten seconds.",
            {"timestamp": 1_600_000_000_000, "author": "Ann", "priority": 1, "published": "2020-01-01T00:00:00Z"}),
    "new": ("To reset the router password, hold the reset button for 10 seconds.",
            {"timestamp": 1_900_000_000_000, "priority": 7, "draft": False, "published": "2024-06-01T12:00:00+00:00"}),
    "battery": ("Charge the battery fully before first use and store it at half charge.",
                {"timestamp": 1_650_000_000_000, "author": "Bo"}),
    "hiking": ("We walked along the ridge and watched the sunset over the valley.",
               {"timestamp": 1_700_000_000_000}),
    # irrelevant to every router query, and favoured by every boost below except not_exists
    "recipe": ("Whisk the eggs with sugar, fold in the flour and bake the sponge cake for forty minutes.",
               {"timestamp": 1_800_000_000_000, "author": "Zed", "priority": 9, "published": "2025-01-01"}),
}
ROUTER = "how do I reset the router password"


def seed(client: TestClient, instance: str, docs: dict[str, tuple[str, dict[str, Any]]], **body: Any) -> None:
    r = client.post(f"{ACCOUNT}/instances", json={"id": instance, "type": "r2", "custom_metadata": SCHEMA, **body},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    service = client.app.state.service
    for item, (text, extra) in docs.items():
        vectors = service.embedder.embed([text])
        meta = {"item_id": item, "filename": f"{item}.md", "folder": "", "title": "", "chunk": 0, **extra}
        service.vectors.replace_item(instance, item, [text], vectors, [meta])


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("boosting"), model_dir)
    with TestClient(create_app(settings)) as c:
        seed(c, "docs", DOCS)
        yield c


def search(client: TestClient, query: str, instance: str = "docs", path: str = "search", **retrieval: Any) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"query": query}
    reranking = retrieval.pop("reranking", None)
    if retrieval or reranking is not None:
        body["ai_search_options"] = {"retrieval": retrieval}
        if reranking is not None:
            body["ai_search_options"]["reranking"] = {"enabled": reranking}
    r = client.post(f"{ACCOUNT}/instances/{instance}/{path}", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["result"]["data"]


def ids(data: list[dict[str, Any]]) -> list[str]:
    return [d["file_id"] for d in data]


def order(data: list[dict[str, Any]], *items: str) -> list[str]:
    """The given items in the order they appear in the results (all must appear)."""
    got = [i for i in ids(data) if i in items]
    assert sorted(got) == sorted(items), ids(data)
    return got


def error(r: Any) -> str:
    assert r.status_code == 400, r.text
    return r.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "retrieval",
    [{"retrieval_type": "vector"}, {"retrieval_type": "keyword"}, {"retrieval_type": "hybrid"},
     {"retrieval_type": "hybrid", "fusion_method": "max"}, {"retrieval_type": "vector", "reranking": True}],
    ids=["vector", "keyword", "hybrid-rrf", "hybrid-max", "vector-rerank"],
)
def test_timestamp_desc_and_asc_reverse_near_equal_candidates(client: TestClient, retrieval: dict[str, Any]) -> None:
    desc = search(client, ROUTER, boost_by=[{"field": "timestamp", "direction": "desc"}], **retrieval)
    asc = search(client, ROUTER, boost_by=[{"field": "timestamp", "direction": "asc"}], **retrieval)
    assert order(desc, "old", "new") == ["new", "old"]
    assert order(asc, "old", "new") == ["old", "new"]
    # Cloudflare's default direction for timestamp (and number/datetime fields) is asc
    assert ids(search(client, ROUTER, boost_by=[{"field": "timestamp"}], **retrieval)) == ids(asc)


def test_exists_and_not_exists_on_a_custom_field(client: TestClient) -> None:
    exists = search(client, ROUTER, boost_by=[{"field": "author", "direction": "exists"}])
    not_exists = search(client, ROUTER, boost_by=[{"field": "author", "direction": "not_exists"}])
    assert order(exists, "old", "new") == ["old", "new"]
    assert order(not_exists, "old", "new") == ["new", "old"]
    # text fields default to exists; field names are case-insensitive
    assert ids(search(client, ROUTER, boost_by=[{"field": "Author"}])) == ids(exists)
    # a boolean false is a value: "new" has draft, so not_exists on draft favours "old"
    assert order(search(client, ROUTER, boost_by=[{"field": "draft", "direction": "not_exists"}]), "old", "new") == ["old", "new"]


def test_number_and_datetime_custom_fields(client: TestClient) -> None:
    assert order(search(client, ROUTER, boost_by=[{"field": "priority", "direction": "desc"}]), "old", "new") == ["new", "old"]
    assert order(search(client, ROUTER, boost_by=[{"field": "priority", "direction": "asc"}]), "old", "new") == ["old", "new"]
    # ISO 8601 strings in a datetime field
    assert order(search(client, ROUTER, boost_by=[{"field": "published", "direction": "desc"}]), "old", "new") == ["new", "old"]
    assert order(search(client, ROUTER, boost_by=[{"field": "published", "direction": "asc"}]), "old", "new") == ["old", "new"]


def test_boost_is_bounded_and_score_stays_the_similarity(client: TestClient) -> None:
    plain = search(client, ROUTER)
    # every entry at its maximum for the irrelevant recipe: +0.3 at most
    boosted = search(client, ROUTER, boost_by=[{"field": "timestamp", "direction": "desc"},
                                               {"field": "author", "direction": "exists"},
                                               {"field": "priority", "direction": "desc"}])
    scores = {d["file_id"]: d["score"] for d in plain}
    assert scores["old"] - scores["recipe"] > 3 * BOOST_WEIGHT  # much more relevant
    assert ids(boosted).index("recipe") > ids(boosted).index("old")
    assert ids(boosted).index("recipe") > ids(boosted).index("new")
    # it did move up past the less relevant chunks it beats on every field
    assert ids(boosted).index("recipe") < ids(plain).index("recipe")
    # score is still the cosine similarity, whatever the order
    assert {d["file_id"]: d["score"] for d in boosted} == scores
    # and match_threshold still means minimum similarity: boosting cannot lift a chunk over it
    floor = sorted(scores.values())[-2] - 0.01
    r = client.post(f"{ACCOUNT}/instances/docs/search", headers=AUTH, json={
        "query": ROUTER, "ai_search_options": {"retrieval": {
            "match_threshold": floor, "boost_by": [{"field": "timestamp", "direction": "desc"}]}}})
    assert sorted(ids(r.json()["result"]["data"])) == ["new", "old"]


def test_boosting_never_adds_a_chunk_outside_the_candidates(client: TestClient) -> None:
    docs = {f"fw{i:02d}": (f"Router firmware update {i}: install version {i}.{i % 7} from the admin page, then reboot.",
                           {"timestamp": 1_600_000_000_000 + (i * 7919 % 60) * 86_400_000}) for i in range(60)}
    docs["cake"] = ("Whisk the eggs with sugar and bake the sponge cake for forty minutes.",
                    {"timestamp": 1_999_000_000_000, "author": "Zed"})
    seed(client, "many", docs)
    plain = search(client, "router firmware update", "many", max_num_results=50)
    boost = [{"field": "timestamp", "direction": "desc"}, {"field": "author", "direction": "exists"}]
    boosted = search(client, "router firmware update", "many", max_num_results=50, boost_by=boost)
    assert "cake" not in ids(plain) and "cake" not in ids(boosted)  # newest and only author, but not retrieved
    assert set(ids(boosted)) == set(ids(plain))  # the same 50 candidates ...
    assert ids(boosted) != ids(plain)  # ... reordered
    # keyword retrieval: only chunks matching the terms are candidates
    kw = search(client, "firmware reboot", "many", retrieval_type="keyword", keyword_match_mode="and", boost_by=boost)
    assert kw and "cake" not in ids(kw)
    # with a smaller max_num_results the boost still chooses among the 50 candidates
    top5 = search(client, "router firmware update", "many", max_num_results=5, boost_by=boost)
    assert set(ids(top5)) <= set(ids(plain)) and ids(top5) != ids(plain)[:5]


def test_request_boost_by_overrides_the_instance(client: TestClient) -> None:
    seed(client, "ovr", DOCS, retrieval_options={"boost_by": [{"field": "timestamp", "direction": "desc"}]})
    assert order(search(client, ROUTER, "ovr"), "old", "new") == ["new", "old"]  # the instance's boost
    asc = search(client, ROUTER, "ovr", boost_by=[{"field": "timestamp", "direction": "asc"}])
    assert order(asc, "old", "new") == ["old", "new"]
    # [] turns boosting off for the request: the plain order of the unboosted instance
    assert ids(search(client, ROUTER, "ovr", boost_by=[])) == ids(search(client, ROUTER))
    # /ai-search plans the same way
    assert order(search(client, ROUTER, "ovr", path="ai-search", boost_by=[{"field": "author", "direction": "exists"}]),
                 "old", "new") == ["old", "new"]
    # PATCH changes the instance's default; [] removes it
    r = client.patch(f"{ACCOUNT}/instances/ovr", json={"retrieval_options": {"boost_by": [{"field": "author"}]}}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert order(search(client, ROUTER, "ovr"), "old", "new") == ["old", "new"]
    r = client.patch(f"{ACCOUNT}/instances/ovr", json={"retrieval_options": {"boost_by": []}}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert ids(search(client, ROUTER, "ovr")) == ids(search(client, ROUTER))


@pytest.mark.parametrize(
    ("boost_by", "expected"),
    [
        ([{"field": "priorty", "direction": "desc"}], "boost_by[0].field: 'priorty' is not 'timestamp' or a custom_metadata field"),
        ([{"field": "folder"}], "boost_by[0].field: 'folder'"),
        ([{"field": "author", "direction": "desc"}], "boost_by[0].direction: 'desc' needs a number or datetime field"),
        ([{"field": "timestamp"}, {"field": "draft", "direction": "asc"}], "boost_by[1].direction: 'asc'"),
        ([{"field": "timestamp"}, {"field": "Timestamp"}], "boost_by[1].field: 'timestamp' is boosted twice"),
        ([{"field": "timestamp", "direction": "newest"}], "boost_by"),
        ([{"field": "timestamp"}, {"field": "author"}, {"field": "priority"}, {"field": "draft"}], "boost_by"),
    ],
    ids=["unknown", "builtin-not-boostable", "desc-on-text", "asc-on-boolean", "duplicate", "bad-direction", "four"],
)
def test_invalid_boost_by_is_400_naming_the_field(client: TestClient, boost_by: list[dict[str, Any]], expected: str) -> None:
    for path in ("search", "ai-search"):
        r = client.post(f"{ACCOUNT}/instances/docs/{path}", headers=AUTH,
                        json={"query": ROUTER, "ai_search_options": {"retrieval": {"boost_by": boost_by}}})
        msg = error(r)
        assert expected in msg and "ai_search_options.retrieval.boost_by" in msg, msg
    body = {"id": "bad", "type": "r2", "custom_metadata": SCHEMA, "retrieval_options": {"boost_by": boost_by}}
    msg = error(client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH))
    assert expected in msg and "retrieval_options" in msg, msg
    assert client.get(f"{ACCOUNT}/instances/bad", headers=AUTH).status_code == 404
    msg = error(client.patch(f"{ACCOUNT}/instances/docs", json={"retrieval_options": {"boost_by": boost_by}}, headers=AUTH))
    assert expected in msg, msg


def test_patch_cannot_drop_a_boosted_custom_field(client: TestClient) -> None:
    seed(client, "drop", {}, retrieval_options={"boost_by": [{"field": "priority", "direction": "desc"}]})
    msg = error(client.patch(f"{ACCOUNT}/instances/drop", json={"custom_metadata": SCHEMA[:1]}, headers=AUTH))
    assert "boost_by[0].field: 'priority'" in msg
    # a field without a schema is unknown at create time too
    msg = error(client.post(f"{ACCOUNT}/instances", json={"id": "noschema", "retrieval_options": {"boost_by": [{"field": "author"}]}},
                            headers=AUTH))
    assert "'author' is not 'timestamp' or a custom_metadata field" in msg


def test_boost_scores_rules() -> None:
    """Normalisation, missing values and summing, on plain metadata (no index needed)."""
    metas = [{"timestamp": 100, "priority": "3"}, {"timestamp": 300}, {"timestamp": 200, "priority": 5}, {}]
    desc = boost_scores(metas, [Boost("timestamp", "datetime", "desc")])
    assert desc == pytest.approx([0.0, BOOST_WEIGHT, BOOST_WEIGHT / 2, 0.0])  # missing = worst
    asc = boost_scores(metas, [Boost("priority", "number", "asc")])
    assert asc == pytest.approx([BOOST_WEIGHT, 0.0, 0.0, 0.0])
    both = boost_scores(metas, [Boost("timestamp", "datetime", "desc"), Boost("priority", "number", "exists")])
    assert both == pytest.approx([BOOST_WEIGHT, BOOST_WEIGHT, 1.5 * BOOST_WEIGHT, 0.0])
    same = boost_scores([{"p": 1}, {"p": 1}, {}], [Boost("p", "number", "desc")])
    assert same == pytest.approx([BOOST_WEIGHT, BOOST_WEIGHT, 0.0])
    assert resolve_boosts([{"field": "TimeStamp"}], []) == (Boost("timestamp", "datetime", "asc"),)
    assert resolve_boosts([{"field": "flag"}], [("Flag", "boolean")]) == (Boost("Flag", "boolean", "exists"),)


def test_a_config_stored_under_the_older_looser_rules_still_loads_and_searches(client: TestClient) -> None:
    """Before boosting was applied, any field and up to 5 entries were accepted and stored: such an
    instance must keep answering (boosting skipped), and a PATCH says what to fix."""
    seed(client, "legacy", {"old": DOCS["old"], "new": DOCS["new"]})
    state = client.app.state.service.state
    row = state.get_instance("legacy")
    stale = [{"field": f"gone{i}", "direction": "desc"} for i in range(5)]
    state.update_instance_config("legacy", {**row["config"], "retrieval_options": {"boost_by": stale}})
    client.app.state.instance_cache.forget("legacy")  # written behind the API's back
    r = client.get(f"{ACCOUNT}/instances/legacy", headers=AUTH)
    assert r.status_code == 200 and len(r.json()["result"]["retrieval_options"]["boost_by"]) == 5
    assert sorted(ids(search(client, ROUTER, instance="legacy"))) == ["new", "old"]
    r = client.patch(f"{ACCOUNT}/instances/legacy", json={"max_num_results": 5}, headers=AUTH)
    assert "retrieval_options.boost_by" in error(r)
    r = client.patch(f"{ACCOUNT}/instances/legacy", json={"retrieval_options": {"boost_by": []}}, headers=AUTH)
    assert r.status_code == 200, r.text
