"""RawStore: round trips, safe names only, atomic writes, deletes."""

from __future__ import annotations

from pathlib import Path

import pytest

from indexer.rawstore import RawPage, RawStore
from indexer.state import item_id_for


@pytest.fixture()
def store(tmp_path: Path) -> RawStore:
    return RawStore(tmp_path / "pages")


def page(body: bytes = b"<html><body>hi</body></html>") -> RawPage:
    return RawPage(
        url="http://example.test/a.html",
        status=200,
        headers={"Content-Type": "text/html; charset=utf-8", "ETag": '"abc"'},
        body=body,
        fetched_at=1_700_000_000.5,
        content_type="text/html; charset=utf-8",
    )


def test_round_trip(store: RawStore) -> None:
    item = item_id_for("site", "http://example.test/a.html")
    body = bytes(range(256)) * 10  # binary-safe
    path = store.put("site", item, page(body))
    assert path.is_file() and path.is_relative_to(store.root / "site")
    assert store.get("site", item) == page(body)


def test_missing_page_is_none(store: RawStore) -> None:
    assert store.get("site", item_id_for("site", "http://example.test/nope")) is None


def test_overwrite_replaces_and_leaves_no_temp_files(store: RawStore) -> None:
    item = item_id_for("site", "k")
    store.put("site", item, page(b"old"))
    store.put("site", item, page(b"new"))
    assert store.get("site", item).body == b"new"
    leftovers = [p.name for p in (store.root / "site").rglob("*") if p.is_file()]
    assert sorted(leftovers) == sorted([f"{item}.body", f"{item}.json"])


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 65, "a b", "..", "/abs"])
def test_unsafe_names_are_refused(store: RawStore, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        store.put(name, "item1", page())
    with pytest.raises(ValueError, match="unsafe"):
        store.get("site", name)
    assert not store.root.exists() or not any(store.root.parent.glob("escape*"))


def test_delete_and_drop_instance(store: RawStore) -> None:
    a, b = item_id_for("site", "a"), item_id_for("site", "b")
    store.put("site", a, page())
    store.put("site", b, page())
    store.put("other", a, page())
    store.delete("site", a)
    store.delete("site", a)  # idempotent
    assert store.get("site", a) is None and store.get("site", b) is not None
    store.drop_instance("site")
    assert store.get("site", b) is None and not (store.root / "site").exists()
    assert store.get("other", a) is not None
    with pytest.raises(ValueError):
        store.drop_instance("../other")
