"""Indexer pipeline on the real model and a real embedded Chroma in a temp dir.

Index a stored page; unchanged content re-embeds nothing; changed content replaces
every chunk; 404/410 delete; over-size and unsupported pages are skipped with a message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.config import Settings
from indexer.embedder import Embedder
from indexer.pipeline import Indexer
from indexer.rawstore import RawPage, RawStore
from indexer.state import StateStore
from indexer.vectorstore import VectorStore
from tests.conftest import make_settings

INSTANCE = "pipe"
MAX_PAGE_BYTES = 20_000


def html_page(title: str, paragraphs: list[str]) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f"<html><head><title>{title}</title></head><body><main><article><h1>{title}</h1>{body}</article></main></body></html>".encode()


LONG = [
    f"Paragraph {i} of the orchard manual explains how the apple trees in row {i} are pruned, watered, "
    f"mulched and protected from frost during the long northern winter, with notes on grafting."
    for i in range(24)
]
SHORT = ["The orchard was replaced by a small lavender field with a single beehive."]


class Env:
    """One indexer over real stores in a temp dir, plus helpers to play the crawler's part."""

    def __init__(self, settings: Settings, embedder: Embedder) -> None:
        self.state = StateStore(settings.resolved_database_url)
        self.state.create_instance(INSTANCE, "web-crawler", "http://example.test", {"chunk_size": 64, "chunk_overlap": 0})
        self.raw = RawStore(settings.pages_dir)
        self.vectors = VectorStore(settings)
        self.indexer = Indexer(settings, self.state, self.vectors, embedder, self.raw)
        self.job = self.state.create_job(INSTANCE, "manual")["id"]

    def fetched(self, url: str, body: bytes | None, *, status: int = 200, ctype: str = "text/html; charset=utf-8") -> dict[str, Any]:
        """Store a fetch result the way the spider does and return the item row."""
        item = self.state.ensure_item(INSTANCE, url)
        now = time.time()
        if body is not None:
            self.raw.put(INSTANCE, item["id"], RawPage(url=url, status=status, body=body, fetched_at=now, content_type=ctype))
        self.state.update_item(item["id"], status="fetched", http_status=status, pending_job=self.job, fetched_at=now)
        return self.state.get_item_by_key(INSTANCE, url)  # type: ignore[return-value]

    def chunks(self, item_id: str) -> dict[str, str]:
        got = self.vectors._collection(INSTANCE).get(where={"item_id": item_id}, include=["documents"])
        return dict(zip(got["ids"], got["documents"], strict=True))


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> Embedder:
    return Embedder(model_dir)


@pytest.fixture()
def env(tmp_path: Path, model_dir: Path, embedder: Embedder) -> Iterator[Env]:
    e = Env(make_settings(tmp_path, model_dir, max_page_bytes=MAX_PAGE_BYTES), embedder)
    yield e
    e.state.close()


def test_indexes_a_stored_page(env: Env) -> None:
    url = "http://example.test/docs/orchard.html"
    item = env.fetched(url, html_page("Orchard Manual", LONG))
    outcome = env.indexer.index_item(item)
    assert outcome.status == "indexed" and outcome.chunks > 3
    chunks = env.chunks(item["id"])
    assert sorted(chunks) == sorted(f"{item['id']}:{i}" for i in range(outcome.chunks))
    assert any("row 23" in text for text in chunks.values())
    row = env.state.get_item_by_id(item["id"])
    assert (row["status"], row["chunks"], row["title"], row["pending_job"]) == ("indexed", outcome.chunks, "Orchard Manual", None)
    assert row["folder"] == "example.test/docs/" and len(row["content_hash"]) == 64
    assert env.state.get_job(env.job)["indexed"] == 1
    meta = env.vectors._collection(INSTANCE).get(ids=[f"{item['id']}:0"], include=["metadatas"])["metadatas"][0]
    assert meta["filename"] == url and meta["folder"] == "example.test/docs/" and meta["title"] == "Orchard Manual"
    hits = env.vectors.query(INSTANCE, env.indexer.embedder.embed_query("how are apple trees pruned in winter"), n=1)
    assert hits and hits[0].metadata["item_id"] == item["id"]


def test_unchanged_content_is_not_re_embedded(env: Env) -> None:
    url = "http://example.test/docs/orchard.html"
    item = env.fetched(url, html_page("Orchard Manual", LONG))
    first = env.indexer.index_item(item)
    ids_before = sorted(env.chunks(item["id"]))
    # Mark one stored chunk: a re-embed would replace it (delete + add); an unchanged page leaves it.
    col = env.vectors._collection(INSTANCE)
    vec = col.get(ids=[ids_before[0]], include=["embeddings"])["embeddings"]
    col.update(ids=[ids_before[0]], documents=["SENTINEL"], embeddings=vec)
    again = env.fetched(url, html_page("Orchard Manual", LONG))  # fetched again, same bytes
    outcome = env.indexer.index_item(again)
    assert outcome.status == "unchanged" and outcome.chunks == first.chunks
    after = env.chunks(item["id"])
    assert sorted(after) == ids_before and after[ids_before[0]] == "SENTINEL"
    row = env.state.get_item_by_id(item["id"])
    assert (row["status"], row["chunks"], row["pending_job"]) == ("indexed", first.chunks, None)
    job = env.state.get_job(env.job)
    assert (job["indexed"], job["unchanged"]) == (1, 1)


def test_changed_content_replaces_all_chunks(env: Env) -> None:
    url = "http://example.test/docs/orchard.html"
    item = env.fetched(url, html_page("Orchard Manual", LONG))
    assert env.indexer.index_item(item).chunks > 3
    changed = env.fetched(url, html_page("Lavender Field", SHORT))
    outcome = env.indexer.index_item(changed)
    assert outcome.status == "indexed" and outcome.chunks == 1
    chunks = env.chunks(item["id"])
    assert list(chunks) == [f"{item['id']}:0"]
    assert "lavender" in chunks[f"{item['id']}:0"] and env.vectors.count(INSTANCE) == 1
    row = env.state.get_item_by_id(item["id"])
    assert (row["chunks"], row["title"]) == (1, "Lavender Field")


@pytest.mark.parametrize("status", [404, 410])
def test_gone_pages_are_deleted(env: Env, status: int) -> None:
    url = "http://example.test/docs/orchard.html"
    item = env.fetched(url, html_page("Orchard Manual", LONG))
    env.indexer.index_item(item)
    other = env.fetched("http://example.test/docs/other.html", html_page("Other", SHORT))
    env.indexer.index_item(other)
    gone = env.fetched(url, None, status=status)
    outcome = env.indexer.index_item(gone)
    assert outcome.status == "deleted"
    assert env.chunks(item["id"]) == {} and env.vectors.count(INSTANCE) == 1  # the other page stays
    assert env.raw.get(INSTANCE, item["id"]) is None
    row = env.state.get_item_by_id(item["id"])
    assert (row["status"], row["chunks"], row["content_hash"]) == ("deleted", 0, None)
    assert env.state.get_job(env.job)["deleted"] == 1
    logs, _ = env.state.job_logs(env.job)
    assert any(line["url"] == url and f"HTTP {status}" in line["message"] for line in logs)


def test_oversize_page_is_skipped_with_a_message(env: Env) -> None:
    url = "http://example.test/docs/huge.html"
    item = env.fetched(url, html_page("Small first", SHORT))
    assert env.indexer.index_item(item).status == "indexed"
    big = html_page("Huge", LONG * 10)
    assert len(big) > MAX_PAGE_BYTES
    outcome = env.indexer.index_item(env.fetched(url, big))
    assert outcome.status == "skipped"
    assert f"{len(big)} bytes" in outcome.message and str(MAX_PAGE_BYTES) in outcome.message
    assert env.chunks(item["id"]) == {}  # the previous version's chunks are gone too
    row = env.state.get_item_by_id(item["id"])
    assert (row["status"], row["chunks"], row["error"]) == ("skipped", 0, outcome.message)
    assert env.state.get_job(env.job)["skipped"] == 1
    logs, _ = env.state.job_logs(env.job)
    assert [line["message"] for line in logs if line["url"] == url] == [outcome.message]


def test_unsupported_type_skipped_and_missing_body_is_an_error(env: Env) -> None:
    video = env.fetched("http://example.test/a.mp4", b"\0\0\0\x18ftypmp42", ctype="video/mp4")
    outcome = env.indexer.index_item(video)
    assert outcome.status == "skipped" and "video/mp4" in outcome.message
    lost = env.fetched("http://example.test/lost.html", None)
    outcome = env.indexer.index_item(lost)
    assert outcome.status == "error" and "missing" in outcome.message
    assert env.state.get_item_by_id(lost["id"])["status"] == "error"
    job = env.state.get_job(env.job)
    assert (job["skipped"], job["errors"]) == (1, 1)


def test_plain_text_and_process_pending(env: Env) -> None:
    env.fetched("http://example.test/notes.txt", b"Beekeeping notes: the hive swarmed in May.", ctype="text/plain")
    env.fetched("http://example.test/docs/orchard.html", html_page("Orchard Manual", LONG))
    assert env.indexer.process_pending(limit=10) == 2
    assert env.indexer.process_pending(limit=10) == 0
    stats = env.state.item_stats(INSTANCE)
    assert stats["indexed"] == 2 and stats["chunks"] == env.vectors.count(INSTANCE) > 2


def test_new_chunk_settings_re_index_unchanged_text(env: Env) -> None:
    url = "http://example.test/docs/orchard.html"
    item = env.fetched(url, html_page("Orchard Manual", LONG))
    small = env.indexer.index_item(item).chunks
    env.state.update_instance_config(INSTANCE, {"chunk_size": 256, "chunk_overlap": 0})
    outcome = env.indexer.index_item(env.fetched(url, html_page("Orchard Manual", LONG)))
    assert outcome.status == "indexed", "same text, new chunk_size: must be re-chunked"
    assert 0 < outcome.chunks < small
    assert len(env.chunks(item["id"])) == outcome.chunks


def test_crawled_pdf_is_converted_and_indexed(env: Env) -> None:
    from tests.test_items import make_pdf

    url = "http://example.test/files/price-list.pdf"
    item = env.fetched(url, make_pdf(["Quince jam costs 7 crowns per jar.", "Delivery is free on Tuesdays."]), ctype="application/pdf")
    outcome = env.indexer.index_item(item)
    assert outcome.status == "indexed" and outcome.chunks >= 1
    assert any("Quince jam costs 7 crowns" in text for text in env.chunks(item["id"]).values())


def test_crawled_unsupported_binary_is_skipped(env: Env) -> None:
    item = env.fetched("http://example.test/logo.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, ctype="image/png")
    outcome = env.indexer.index_item(item)
    assert outcome.status == "skipped" and "image/png" in (outcome.message or "")


def test_corrupt_crawled_pdf_is_an_error_with_a_message(env: Env) -> None:
    item = env.fetched("http://example.test/broken.pdf", b"%PDF-1.7 truncated", ctype="application/pdf")
    outcome = env.indexer.index_item(item)
    assert outcome.status == "error" and "PDF" in (outcome.message or "")


def test_a_page_fetched_again_while_being_indexed_is_indexed_again(env: Env) -> None:
    """A fetch that lands after the indexer claimed the item keeps it ``fetched``: it is indexed again.

    The run that was under way may have read either copy; marking the item done would leave a
    newer copy unindexed until the next sync.
    """
    url = "http://example.test/docs/orchard.html"
    item = env.fetched(url, html_page("Orchard Manual", LONG))
    claimed = env.indexer.claim(item["id"])
    assert claimed is not None
    time.sleep(0.01)
    env.fetched(url, html_page("Lavender Field", SHORT))  # the crawler stores a newer copy meanwhile
    env.indexer.index_item(claimed)
    row = env.state.get_item_by_id(item["id"])
    assert (row["status"], row["claimed_by"]) == ("fetched", None)  # not marked done; claim released
    assert env.state.get_job(env.job)["indexed"] == 0
    assert env.indexer.process_pending() == 1
    row = env.state.get_item_by_id(item["id"])
    assert (row["status"], row["chunks"], row["title"]) == ("indexed", 1, "Lavender Field")
    assert "lavender" in next(iter(env.chunks(item["id"]).values()))
    assert env.state.get_job(env.job)["indexed"] == 1
