"""The keyword index in PostgreSQL (:mod:`indexer.keyword_pg`), against a real server.

The backend-independent tests of ``tests/test_keyword.py`` are collected here a second
time (imported below) with this module's ``store`` fixture, so they run against
PostgreSQL: identifiers and match modes, query-syntax injection, replace/delete
following the vector store, backfill, and every filter selecting exactly the chunks
Chroma selects (with and without a tenant's folder prefix).  Ranking and the trigram
tokenizer differ by design (``ts_rank_cd`` is not BM25; trigram is word-prefix
matching on PostgreSQL) and have their own tests here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from indexer import migrations
from indexer.keyword import KeywordIndex, KeywordQueryError, open_keyword_index
from indexer.keyword_pg import PgKeywordIndex, tsquery_text
from indexer.state import make_engine
from indexer.vectorstore import VectorStore
from tests.conftest import make_settings
from tests.services import create_database
from tests.test_keyword import (  # noqa: F401 - collected again here, with this module's `store` fixture
    DOCS,
    _meta,
    test_backfill_from_vector_store,
    test_filters_select_the_same_chunks_as_chroma,
    test_identifiers_and_match_modes,
    test_replace_and_delete_follow_the_vector_store,
    test_user_text_cannot_inject_fts_syntax,
)


@pytest.fixture(scope="module")
def pg_db(postgres_url: str) -> str:
    """An empty database for this module, migrated to the newest revision."""
    url = create_database(postgres_url, "keyword_pg")
    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture()
def pg_engine(pg_db: str) -> Iterator[Engine]:
    engine = make_engine(pg_db)
    with engine.begin() as conn:  # each test starts empty
        conn.exec_driver_sql("TRUNCATE keyword_chunks, keyword_instances")
    yield engine
    engine.dispose()


@pytest.fixture()
def store(tmp_path: Path, pg_engine: Engine) -> VectorStore:
    """A real Chroma store (random unit vectors) mirroring into the PostgreSQL keyword index."""
    vs = VectorStore(make_settings(tmp_path, tmp_path / "unused-model"), keywords=PgKeywordIndex(pg_engine))
    rng = np.random.default_rng(0)
    for item, (_f, _ts, text, _c) in DOCS.items():
        vec = rng.normal(size=(1, 8)).astype(np.float32)
        vs.replace_item("t", item, [text], vec / np.linalg.norm(vec), [_meta(item)])
    return vs


def test_backend_is_chosen_by_the_database_url(tmp_path: Path, pg_db: str) -> None:
    sqlite_settings = make_settings(tmp_path, tmp_path / "m")
    assert isinstance(open_keyword_index(sqlite_settings), KeywordIndex)
    pg = open_keyword_index(make_settings(tmp_path, tmp_path / "m", database_url=pg_db))
    assert isinstance(pg, PgKeywordIndex)
    pg.engine.dispose()


def test_scores_are_normalised_and_title_counts_double(store: VectorStore) -> None:
    hits = store.keywords.query("t", "battery charge", n=10)
    assert {h.chunk_id for h in hits} == {"a:0", "b:0"}
    assert all(0.0 < h.bm25 < 1.0 for h in hits)
    assert hits[0].bm25 >= hits[1].bm25
    assert hits[0].metadata["folder"] == "docs.example.com/guide/"
    # both terms beat one term
    both_vs_one = store.keywords.query("t", "hiking common", n=10)
    assert both_vs_one[0].chunk_id == "d:0"
    kw = store.keywords
    kw.replace_item("t2", "x", ["x:0"], ["walrus facts and more text"], [{"item_id": "x", "title": "Other"}])
    kw.replace_item("t2", "y", ["y:0"], ["more text about seals"], [{"item_id": "y", "title": "Walrus"}])
    scores = kw.score_ids("t2", "walrus", ["x:0", "y:0", "missing"])
    assert set(scores) == {"x:0", "y:0"}
    raw = {cid: s / (1 - s) for cid, s in scores.items()}  # undo rank / (rank + 1)
    assert raw["y:0"] == pytest.approx(2 * raw["x:0"], rel=0.01)  # title weight 1.0 vs text 0.5


def test_stemming_and_and_mode(store: VectorStore) -> None:
    assert [h.chunk_id for h in store.keywords.query("t", "charging", n=10, match_mode="or")][:2] != []
    assert {h.chunk_id for h in store.keywords.query("t", "batteries charged", n=10, match_mode="and")} == {"a:0", "b:0"}
    assert store.keywords.query("t", "battery zebra", n=10, match_mode="and") == []
    with pytest.raises(KeywordQueryError):
        store.keywords.query("t", "   ", n=5, match_mode="xor")


def test_tsquery_text_quotes_every_term() -> None:
    assert tsquery_text(["it's", "a\\b"], "or", "porter") == "'it''s' | 'a\\\\b'"
    assert tsquery_text(["web", "serv"], "and", "trigram") == "'web':* & 'serv':*"


def test_trigram_tokenizer_is_prefix_matching_and_rebuilds(pg_engine: Engine) -> None:
    kw = PgKeywordIndex(pg_engine)
    kw.replace_item("t", "x", ["x:0"], ["configuration of the webserver"], [{"item_id": "x"}], tokenizer="trigram")
    assert kw.tokenizer("t") == "trigram"
    assert [h.chunk_id for h in kw.query("t", "conf", n=5)] == ["x:0"]  # prefix of a word
    assert kw.query("t", "ebserve", n=5) == []  # not an inner substring (FTS5 trigram would match)
    kw.replace_item("t", "y", ["y:0"], ["another page"], [{"item_id": "y"}], tokenizer="porter")  # rebuilds
    assert kw.tokenizer("t") == "porter"
    assert kw.query("t", "conf", n=5) == []  # no prefixes with porter
    assert [h.chunk_id for h in kw.query("t", "webserver", n=5)] == ["x:0"]
    assert [h.chunk_id for h in kw.query("t", "configurations", n=5)] == ["x:0"]  # stemmed again


def test_instances_are_isolated_and_nul_bytes_are_dropped(pg_engine: Engine) -> None:
    kw = PgKeywordIndex(pg_engine)
    kw.replace_item("one", "i", ["i:0"], ["shared\x00word"], [{"item_id": "i", "title": "T\x00"}])
    kw.replace_item("two", "i", ["i:0"], ["shared word"], [{"item_id": "i"}])
    assert [h.text for h in kw.query("one", "sharedword", n=5)] == ["sharedword"]
    kw.drop_instance("one")
    assert kw.count("one") == 0 and kw.count("two") == 1


def test_filter_values_of_another_type_never_match(pg_engine: Engine) -> None:
    """Chroma's rule (and no cast error): a string never equals or compares with a number."""
    kw = PgKeywordIndex(pg_engine)
    metas: list[dict[str, Any]] = [{"item_id": "n", "v": 5}, {"item_id": "s", "v": "5"}, {"item_id": "z"}]
    for m in metas:
        kw.replace_item("t", m["item_id"], [f"{m['item_id']}:0"], ["common"], [m])

    def ids(where: dict[str, Any]) -> set[str]:
        return {h.chunk_id for h in kw.query("t", "common", n=10, where=where)}

    assert ids({"v": {"$eq": 5}}) == {"n:0"}
    assert ids({"v": {"$eq": "5"}}) == {"s:0"}
    assert ids({"v": {"$gt": 1}}) == {"n:0"}
    assert ids({"v": {"$ne": 5}}) == {"s:0", "z:0"}
    assert ids({"v": {"$in": ["5", 7]}}) == {"s:0"}
    assert ids({"v": {"$nin": [5]}}) == {"s:0", "z:0"}


def test_or_queries_over_many_rows_rank_only_rows_with_a_rare_term(pg_engine: Engine) -> None:
    """Past RANK_ALL_ROWS matches, a term in most rows is left out and rows holding a rarer one are ranked.

    Term shares come from the column's statistics, so the table is ANALYZEd first (autovacuum does it
    in production). Below the threshold, or with a rare term only, the query is the exact ``or``.
    """
    kw = PgKeywordIndex(pg_engine)
    n = 3000
    texts = [
        "weather notes" + (" zebra" if i % 100 == 0 else "") + (" quokka" if i % 7 == 0 else "") for i in range(n)
    ]
    ids = [f"r:{i}" for i in range(n)]
    kw.replace_item("big", "r", ids, texts, [{"item_id": "r"} for _ in ids])
    with pg_engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE keyword_chunks")
    kw = PgKeywordIndex(pg_engine)  # no cached statistics
    zebra = {f"r:{i}" for i in range(0, n, 100)}
    # "weather" is in every row: left out; only the 30 zebra rows are ranked, those with quokka too first
    hits = kw.query("big", "weather zebra quokka", n=50)
    assert {h.chunk_id for h in hits} == zebra  # not quokka-only rows: quokka (14 %) is past the candidates' 10 %
    assert {h.chunk_id for h in hits[:5]} == {f"r:{i}" for i in range(0, n, 700)}  # zebra and quokka
    assert kw.query("big", "weather", n=5) and len(kw.query("big", "weather zebra", n=50)) == 30
    # few matches: the exact `or` (every matching row ranked)
    assert {h.chunk_id for h in kw.query("big", "zebra nothinglikeit", n=50)} == zebra
