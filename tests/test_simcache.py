"""Similarity cache: the seeds' threshold table, both vocabularies, 30-day expiry, invalidation,
sharing between processes (in the state database: SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.simcache import (
    API_NAMES,
    THRESHOLDS,
    TTL_SECONDS,
    SimilarityCache,
    jaccard,
    minhash,
    shingles,
    threshold_name,
)
from indexer.state import StateStore
from tests.databases import database_url  # noqa: F401 - fixture

BASE = "What’s the weather like today?"
#: seeds' "Similarity cache" table: each threshold's example match for BASE
EXAMPLES = {
    "exact": "What is the weather like today?",
    "strong": "How’s the weather today?",
    "broad": "Tell me today’s weather",
    "loose": "Give me the forecast",
}
ORDER = ["exact", "strong", "broad", "loose"]  # strictest first


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def state(database_url: str) -> StateStore:  # noqa: F811 - the fixture
    return StateStore(database_url)


@pytest.fixture()
def cache(state: StateStore) -> SimilarityCache:
    return SimilarityCache(state, clock=Clock())


def fresh(_item: str) -> str | None:
    return "h1"


@pytest.mark.parametrize("example", ORDER)
@pytest.mark.parametrize("threshold", ORDER)
def test_documented_pairs_match_at_their_threshold_and_looser_only(tmp_path: Path, example: str, threshold: str) -> None:
    cache = SimilarityCache(StateStore(f"sqlite:///{tmp_path / 'c.sqlite'}"))
    cache.store("i", BASE, {"response": "sunny"}, signature="s", items={"doc": "h1"})
    hit = cache.lookup("i", EXAMPLES[example], signature="s", threshold=threshold, current=fresh)
    should_match = ORDER.index(threshold) >= ORDER.index(example)
    assert (hit is not None) == should_match, (example, threshold, jaccard(shingles(BASE), shingles(EXAMPLES[example])))
    if hit:
        assert hit.response == {"response": "sunny"} and hit.prompt == BASE


def test_cloudflare_names_are_accepted() -> None:
    assert {threshold_name(k) for k in API_NAMES} == set(THRESHOLDS)
    assert threshold_name("close_enough") == threshold_name(None) == "strong"
    with pytest.raises(ValueError, match="cache_threshold"):
        threshold_name("sort_of")


def test_unrelated_prompt_misses_even_when_loose(cache: SimilarityCache) -> None:
    cache.store("i", BASE, {"r": 1}, signature="s", items={})
    assert cache.lookup("i", "How do I reset my router password?", signature="s", threshold="anything_goes",
                        current=fresh) is None


def test_entries_are_scoped_by_instance_and_options(cache: SimilarityCache) -> None:
    cache.store("i", BASE, {"r": 1}, signature="s", items={})
    assert cache.lookup("other", BASE, signature="s", current=fresh) is None
    assert cache.lookup("i", BASE, signature="different-filters", current=fresh) is None
    assert cache.lookup("i", BASE, signature="s", current=fresh) is not None


def test_entries_expire_after_30_days(state: StateStore) -> None:
    clock = Clock()
    cache = SimilarityCache(state, clock=clock)
    cache.store("i", BASE, {"r": 1}, signature="s", items={})
    clock.now += TTL_SECONDS - 60
    assert cache.lookup("i", BASE, signature="s", current=fresh) is not None
    clock.now += 120
    assert cache.lookup("i", BASE, signature="s", current=fresh) is None
    assert cache.count() == 0  # dropped, not just skipped


def test_entry_dropped_when_a_cited_chunk_changes_or_is_deleted(cache: SimilarityCache) -> None:
    hashes: dict[str, str | None] = {"a": "h1", "b": "h2"}
    cache.store("i", BASE, {"r": 1}, signature="s", items=dict(hashes))
    assert cache.lookup("i", BASE, signature="s", current=hashes.get) is not None
    hashes["b"] = "h3"  # re-indexed with new content
    assert cache.lookup("i", BASE, signature="s", current=hashes.get) is None
    assert cache.count() == 0
    cache.store("i", BASE, {"r": 2}, signature="s", items=dict(hashes))
    del hashes["a"]  # deleted
    assert cache.lookup("i", BASE, signature="s", current=hashes.get) is None


def test_minhash_estimates_jaccard() -> None:
    a = shingles("the quick brown fox jumps over the lazy dog near the river bank today")
    b = shingles("the quick brown fox jumps over the lazy cat near the river bank today")
    est = float((minhash(a) == minhash(b)).mean())
    assert abs(est - jaccard(a, b)) < 0.12
    assert (minhash(a) == minhash(a)).all()


def test_two_processes_share_entries_through_the_database(state: StateStore) -> None:
    # two stores = two engines, as in two API processes on one database
    first = SimilarityCache(StateStore(state.url), clock=Clock())
    second = SimilarityCache(StateStore(state.url), clock=Clock())
    first.store("i", BASE, {"response": "sunny"}, signature="s", items={"doc": "h1"})
    hit = second.lookup("i", EXAMPLES["strong"], signature="s", current=fresh)
    assert hit is not None and hit.response == {"response": "sunny"} and hit.prompt == BASE
    # invalidation seen by one process removes the entry for the other
    assert second.lookup("i", BASE, signature="s", current=lambda _item: "h2") is None
    assert first.lookup("i", BASE, signature="s", current=fresh) is None and first.count() == 0


def test_drop_instance_and_delete_instance_clear_its_entries(state: StateStore, cache: SimilarityCache) -> None:
    cache.store("i", BASE, {"r": 1}, signature="s", items={})
    cache.store("j", BASE, {"r": 2}, signature="s", items={})
    cache.drop_instance("i")
    assert cache.lookup("i", BASE, signature="s", current=fresh) is None
    assert cache.count() == 1
    state.delete_instance("j")
    assert cache.count() == 0
