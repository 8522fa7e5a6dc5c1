"""The keyword index: BM25 ranking, replace/delete, tokenizers, and filters identical to Chroma's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer.keyword import KeywordIndex, KeywordQueryError, match_expression, query_terms, where_to_sql
from indexer.metafilter import compile_filters
from indexer.vectorstore import VectorStore
from tests.conftest import make_settings

DOCS = {
    "a": ("docs.example.com/guide/", 1_700_000_000_000, "Install the battery pack before the first charge.", None),
    "b": ("docs.example.com/guide/", 1_700_000_100_000, "The battery charges in two hours; common question.", "faq"),
    "c": ("docs.example.com/api/", 1_700_000_200_000, "re.findall returns every match as a list. common", None),
    "d": ("blog.example.com/", 1_700_000_300_000, "Our team went hiking. common words only here.", "news"),
    "e": ("customer-a/", 1_700_000_400_000, "Tenant file for customer A, common", None),
    "f": ("customer-a/sub/", 1_700_000_500_000, "Tenant sub-folder file, common", None),
}


# custom_metadata values as the pipeline stores them (number: float, datetime: epoch ms); d, e, f have none
CUSTOM = {"category": "text", "version": "number", "is_public": "boolean", "published": "datetime"}
CUSTOM_VALUES: dict[str, dict[str, Any]] = {
    "a": {"category": "guide", "version": 2.5, "is_public": True, "published": 1_767_225_600_000},
    "b": {"category": "faq", "version": 3.0, "is_public": False},
    "c": {"category": "guide", "version": 10.0, "published": 1_704_067_200_000},
}


def _meta(item: str) -> dict[str, Any]:
    folder, ts, _text, context = DOCS[item]
    m: dict[str, Any] = {"item_id": item, "filename": f"https://{folder}{item}.html", "folder": folder,
                         "timestamp": ts, "title": f"Page {item}", "chunk": 0, **CUSTOM_VALUES.get(item, {})}
    if context:
        m["context"] = context
    return m


@pytest.fixture()
def store(tmp_path: Path) -> VectorStore:
    """A real Chroma store (random unit vectors: these tests are about ids, not similarity) + keyword index."""
    vs = VectorStore(make_settings(tmp_path, tmp_path / "unused-model"))
    rng = np.random.default_rng(0)
    for item, (_f, _ts, text, _c) in DOCS.items():
        vec = rng.normal(size=(1, 8)).astype(np.float32)
        vs.replace_item("t", item, [text], vec / np.linalg.norm(vec), [_meta(item)])
    return vs


def test_bm25_ranks_rare_terms_first(store: VectorStore) -> None:
    hits = store.keywords.query("t", "battery charge", n=10)
    assert [h.chunk_id for h in hits][:2] == ["a:0", "b:0"]  # both terms (porter: charge ~ charges) vs one
    assert all(h.bm25 > 0 for h in hits)
    assert hits[0].metadata["folder"] == "docs.example.com/guide/"


def test_identifiers_and_match_modes(store: VectorStore) -> None:
    assert [h.chunk_id for h in store.keywords.query("t", "re.findall", n=5)] == ["c:0"]
    assert store.keywords.query("t", "battery hiking", n=5, match_mode="and") == []
    assert {h.chunk_id for h in store.keywords.query("t", "battery hiking", n=5, match_mode="or")} == {"a:0", "b:0", "d:0"}
    with pytest.raises(KeywordQueryError):
        store.keywords.query("t", "battery", n=5, match_mode="xor")


def test_user_text_cannot_inject_fts_syntax(store: VectorStore) -> None:
    assert match_expression(query_terms('battery" OR NEAR(x'), "or") == '"battery" OR "near" OR "x"'
    assert query_terms("to be or to be") == ["to", "be", "or"]  # only stop words: keep them
    assert store.keywords.query("t", 'battery" OR *', n=5)  # no sqlite error, still matches
    assert store.keywords.query("t", "   ...   ", n=5) == []


def test_replace_and_delete_follow_the_vector_store(store: VectorStore) -> None:
    vec = np.ones((2, 8), dtype=np.float32) / np.sqrt(8)
    store.replace_item("t", "a", ["zebra crossing", "zebra stripes"], vec, [_meta("a"), {**_meta("a"), "chunk": 1}])
    assert [h.chunk_id for h in store.keywords.query("t", "battery", n=10)] == ["b:0"]
    assert {h.chunk_id for h in store.keywords.query("t", "zebra", n=10)} == {"a:0", "a:1"}
    store.delete_item("t", "a")
    assert store.keywords.query("t", "zebra", n=10) == []
    assert store.keywords.count("t") == store.count("t") == 5
    store.drop_instance("t")
    assert store.keywords.count("t") == 0


def test_trigram_tokenizer_matches_substrings(tmp_path: Path) -> None:
    kw = KeywordIndex(tmp_path)
    kw.replace_item("t", "x", ["x:0"], ["configuration of the webserver"], [{"item_id": "x"}], tokenizer="trigram")
    assert [h.chunk_id for h in kw.query("t", "ebserve", n=5)] == ["x:0"]
    assert kw.tokenizer("t") == "trigram"
    kw.replace_item("t", "y", ["y:0"], ["another page"], [{"item_id": "y"}], tokenizer="porter")  # rebuilds
    assert kw.tokenizer("t") == "porter"
    assert kw.query("t", "ebserve", n=5) == []
    assert [h.chunk_id for h in kw.query("t", "webserver", n=5)] == ["x:0"]


FILTERS = [
    {"type": "eq", "key": "folder", "value": "docs.example.com/guide/"},
    {"type": "ne", "key": "folder", "value": "docs.example.com/guide/"},
    {"type": "ne", "key": "context", "value": "faq"},
    {"type": "eq", "key": "context", "value": "news"},
    {"type": "gte", "key": "timestamp", "value": 1_700_000_200_000},
    {"type": "lt", "key": "timestamp", "value": 1_700_000_100_999},
    {"type": "gt", "key": "folder", "value": "customer-a//"},
    {"type": "and", "filters": [{"type": "gt", "key": "folder", "value": "customer-a//"},
                                {"type": "lte", "key": "folder", "value": "customer-a/z"}]},
    {"type": "or", "filters": [{"type": "eq", "key": "folder", "value": "blog.example.com/"},
                               {"type": "eq", "key": "folder", "value": "customer-a/"}]},
    {"type": "and", "filters": [{"type": "eq", "key": "folder", "value": "docs.example.com/guide/"},
                                {"type": "gt", "key": "timestamp", "value": 1_700_000_050_000}]},
    {"type": "gte", "key": "filename", "value": "https://docs"},
    {"type": "eq", "key": "category", "value": "guide"},
    {"type": "ne", "key": "category", "value": "guide"},
    {"type": "gte", "key": "version", "value": 3},
    {"type": "lt", "key": "Version", "value": 3.5},
    {"type": "eq", "key": "is_public", "value": True},
    {"type": "ne", "key": "is_public", "value": True},
    {"type": "eq", "key": "is_public", "value": "false"},
    {"type": "gt", "key": "published", "value": "2025-06-01"},
    {"type": "lte", "key": "published", "value": 1_704_067_200_999},
    {"type": "or", "filters": [{"type": "eq", "key": "category", "value": "faq"},
                               {"type": "eq", "key": "category", "value": "guide"}]},
    {"type": "and", "filters": [{"type": "eq", "key": "category", "value": "guide"},
                                {"type": "gt", "key": "timestamp", "value": 1_700_000_100_000}]},
]


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: str(f)[:60])
def test_filters_select_the_same_chunks_as_chroma(store: VectorStore, flt: dict[str, Any]) -> None:
    distinct = {k: sorted({str(_meta(i).get(k)) for i in DOCS if _meta(i).get(k)}) for k in ("folder", "filename", "context")}
    for prefix in (None, "customer-a/"):
        where = compile_filters(flt, lambda key: distinct[key], folder_prefix=prefix, custom=CUSTOM)
        chroma_ids = set(store._collection("t").get(where=where)["ids"])
        keyword_ids = {h.chunk_id for h in store.keywords.query("t", "common battery", n=100, where=where)}
        # "common battery" (OR) matches every document, so the filter alone decides
        assert keyword_ids == chroma_ids, (where, chroma_ids, keyword_ids)
        if prefix is None:
            assert chroma_ids, where  # each case selects something without the tenant prefix


def test_where_to_sql_rejects_unknown_operators() -> None:
    assert where_to_sql(None) == ("1", [])
    with pytest.raises(KeywordQueryError):
        where_to_sql({"folder": {"$regex": "x"}})
    with pytest.raises(KeywordQueryError):
        where_to_sql({"bad key;": {"$eq": "x"}})


def test_backfill_from_vector_store(store: VectorStore) -> None:
    store.keywords.drop_instance("t")
    assert store.keywords.count("t") == 0
    assert store.backfill_keywords("t") == 6
    assert [h.chunk_id for h in store.keywords.query("t", "re.findall", n=5)] == ["c:0"]
    assert store.backfill_keywords("t") == 0


@pytest.fixture(scope="module")
def big_index(tmp_path_factory: pytest.TempPathFactory) -> KeywordIndex:
    """2,503 rows: "widget" in all but two (common), "gizmo" in 12 % (neither common nor rare),
    "zebra" in two (rare), stop words everywhere."""
    kw = KeywordIndex(tmp_path_factory.mktemp("kw-big"))
    texts = [f"the widget model {i} of the catalogue" + (" gizmo" if i < 300 else "") for i in range(2500)]
    texts += ["the zebra widget", "zebra crossing gizmo", "to be or not to be"]
    ids = [f"x:{i}" for i in range(len(texts))]
    metas = [{"item_id": "x", "kind": "z" if "zebra" in t else "w"} for t in texts]
    kw.replace_item("t", "x", ids, texts, metas)
    return kw


def test_or_query_ranks_without_terms_most_rows_hold(big_index: KeywordIndex) -> None:
    # "widget" is in 99.9 % of the rows: BM25 gives it almost no weight, and matching it meant
    # scoring every row; the rarer "zebra" remains, so only its rows are ranked.
    hits = big_index.query("t", "widget zebra", n=50)
    assert {h.chunk_id for h in hits} == {"x:2500", "x:2501"}
    assert {h.chunk_id for h in big_index.query("t", "widget zebra", n=50, where={"kind": {"$eq": "z"}})} == {
        "x:2500", "x:2501"}
    # a query of common terms only still matches them (the rarest one)
    assert len(big_index.query("t", "widget", n=50)) == 50
    assert len(big_index.query("t", "widget catalogue", n=50)) == 50


def test_or_query_ranks_rows_holding_a_rare_term_with_every_term(big_index: KeywordIndex) -> None:
    # "widget" is left out; "gizmo" (301 rows) is over the candidate budget: only rows holding
    # "zebra" are ranked, and "gizmo" still counts in their score
    hits = big_index.query("t", "widget zebra gizmo", n=50)
    assert [h.chunk_id for h in hits] == ["x:2501", "x:2500"]
    zebra_only = {h.chunk_id: h.bm25 for h in big_index.query("t", "zebra", n=50)}
    assert hits[0].bm25 > zebra_only["x:2501"] and hits[1].bm25 == pytest.approx(zebra_only["x:2500"])
    assert len(big_index.query("t", "gizmo widget", n=500)) == 301  # no rarer term: gizmo's rows


def test_and_mode_keeps_every_term(big_index: KeywordIndex) -> None:
    assert [h.chunk_id for h in big_index.query("t", "widget zebra", n=50, match_mode="and")] == ["x:2500"]


def test_stop_words_dropped_unless_the_query_is_only_stop_words(big_index: KeywordIndex) -> None:
    # "the" is in nearly every row: dropped in both modes ("zebra crossing" has no "the")
    assert {h.chunk_id for h in big_index.query("t", "the zebra", n=50, match_mode="and")} == {"x:2500", "x:2501"}
    assert {h.chunk_id for h in big_index.query("t", "the zebra", n=50)} == {"x:2500", "x:2501"}
    assert [h.chunk_id for h in big_index.query("t", "to be", n=50)] == ["x:2502"]


def test_small_or_query_matches_every_term(tmp_path: Path) -> None:
    # below RANK_ALL_ROWS matching rows, an OR query is exact: a common term still brings its rows
    kw = KeywordIndex(tmp_path)
    texts = ["widget one", "widget two", "widget three", "zebra widget", "zebra"]
    kw.replace_item("t", "x", [f"x:{i}" for i in range(5)], texts, [{"item_id": "x"}] * 5)
    hits = kw.query("t", "widget zebra", n=10)
    assert {h.chunk_id for h in hits} == {f"x:{i}" for i in range(5)}
