"""The indexing pipeline: stored raw page → Markdown → chunks → embeddings → Chroma.

:class:`Indexer` processes one item at a time from the raw store and records the
outcome on the item and on the job that fetched it.  A page whose extracted
content hash has not changed re-embeds nothing.  Pages that answered 404/410
have their chunks removed and are marked ``deleted``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from indexer.chunker import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, chunk_sections
from indexer.config import Settings
from indexer.convert import UnsupportedFileType, convert
from indexer.custom_metadata import INTERNAL_KEYS, fingerprint_part, page_values, schema_of
from indexer.embedder import Embedder
from indexer.extract import (
    HTML_TYPES,
    Extracted,
    decode_text,
    embedding_input,
    extract_html,
    extract_text_document,
    mime_type,
    rendering_hint,
    selector_for,
)
from indexer.rawstore import RawStore
from indexer.robots_meta import NOINDEX, page_directives
from indexer.state import CLAIM_LEASE_SECONDS, StateStore
from indexer.vectorstore import VectorStore, folder_for_url

logger = logging.getLogger(__name__)

GONE_STATUSES = (404, 410)
TEXT_TYPES = ("text/plain", "text/markdown", "text/x-markdown")
EMBEDDING_TEXT_VERSION = 3  # bump when what the model sees changes: pages are then re-embedded
TITLE_HEADER = "x-sitesearch-title"  # set on stored uploads by server/routes/items.py
FAST_EXTRACT_BYTES = 1024 * 1024  # above this, trafilatura runs without its slow fallbacks
RELEASE_CLAIM = {"claimed_by": None, "claimed_at": None}


@dataclass(frozen=True, slots=True)
class IndexOutcome:
    """What happened to one item."""

    status: str  # indexed | unchanged | deleted | skipped | error
    chunks: int = 0
    message: str | None = None


class Indexer:
    """Indexes fetched items into the vector store.

    Args:
        settings: service settings (size limits).
        state: the state store (items, jobs).
        vectors: the vector store (must be owned by this process when embedded).
        embedder: the embedding model.
        raw: the raw page store.
    """

    def __init__(
        self, settings: Settings, state: StateStore, vectors: VectorStore, embedder: Embedder, raw: RawStore
    ) -> None:
        self.settings = settings
        self.state = state
        self.vectors = vectors
        self.embedder = embedder
        self.raw = raw
        #: who claims items (API processes and crawler workers may share one Chroma server and database)
        self.claimer = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def process_pending(self, *, limit: int = 16) -> int:
        """Claim and index up to ``limit`` items waiting in status ``fetched``; returns how many were processed.

        0 means nothing is left to claim (items other indexers hold are not counted).
        """
        batch = self.state.claim_pending(limit=limit, claimer=self.claimer, accept=self._can_index)
        for item in batch:
            self.index_item(item)
        return len(batch)

    def _can_index(self, item: Mapping[str, Any]) -> bool:
        """Whether this process should claim a candidate: its stored page is here (or not needed).

        Crawler workers on other machines keep their raw pages in their own data directory and
        index them inline; this process leaves those alone.  A page missing everywhere for longer
        than the claim lease (its crawler died) is claimed anyway and recorded as an error, so the
        job can end.
        """
        if item.get("delete_reason") or item.get("http_status") in GONE_STATUSES:
            return True  # removal needs no stored page
        if self.raw.exists(item["instance_id"], item["id"]):
            return True
        return time.time() - float(item.get("fetched_at") or 0) > CLAIM_LEASE_SECONDS

    def claim(self, item_id: str) -> dict[str, Any] | None:
        """Claim one fetched item for this indexer; None if it is not ``fetched`` or another indexer holds it."""
        return self.state.claim_item(item_id, self.claimer)

    def index_item(self, item: dict[str, Any]) -> IndexOutcome:
        """Index one fetched item (claimed by :meth:`claim` or :meth:`process_pending`) and record the
        outcome, releasing the claim (never raises on bad content)."""
        job_id = item.get("pending_job")
        try:
            outcome = self._index(item)
        except Exception as exc:  # an unexpected failure must not stop the queue
            logger.exception("indexing %s failed", item["key"])
            outcome = IndexOutcome("error", message=f"indexing failed: {exc.__class__.__name__}: {exc}")
        self._record(item, outcome, job_id)
        return outcome

    def remove_item(self, item: dict[str, Any]) -> None:
        """Delete an item's chunks and stored page and mark it ``deleted``."""
        self.vectors.delete_item(item["instance_id"], item["id"])
        self.raw.delete(item["instance_id"], item["id"])
        self.state.update_item(item["id"], status="deleted", chunks=0, content_hash=None, pending_job=None)

    # --- internals ---------------------------------------------------------------
    def _index(self, item: dict[str, Any]) -> IndexOutcome:
        instance_id = item["instance_id"]
        if item.get("delete_reason") or item.get("http_status") in GONE_STATUSES:
            self.vectors.delete_item(instance_id, item["id"])
            self.raw.delete(instance_id, item["id"])
            reason = item.get("delete_reason") or f"HTTP {item['http_status']}: removed from the index"
            return IndexOutcome("deleted", message=reason)
        page = self.raw.get(instance_id, item["id"])
        if page is None and item.get("pending_job") is None and item.get("chunks", 0) > 0:
            # handed back for re-indexing (an options PATCH) but its stored page is on another
            # machine (scale-out): its chunks stay as they are until the page is fetched again
            return IndexOutcome("unchanged", chunks=item["chunks"])
        if page is None:
            return IndexOutcome("error", message="stored page is missing")
        if len(page.body) > self.settings.max_page_bytes:
            return IndexOutcome(
                "skipped",
                message=f"Skipped: {len(page.body)} bytes is over the {self.settings.max_page_bytes} byte page limit",
            )
        config = self._instance_config(instance_id)
        parse_options = ((config.get("source_params") or {}).get("web_crawler") or {}).get("parse_options") or {}
        if item.get("origin") != "upload" and parse_options.get("respect_robots_meta", True) and (
            NOINDEX in page_directives(page.body, page.content_type, page.headers)
        ):
            return IndexOutcome("skipped", message="Skipped: the page says noindex (robots meta tag or X-Robots-Tag)")
        selector = selector_for(parse_options.get("content_selector") or (), page.url)
        doc = self._extract(page.body, page.content_type, page.url, selector=selector,
                            include_images=bool(parse_options.get("include_images")))
        if doc is None:
            return IndexOutcome("skipped", message=f"Skipped: unsupported content type {page.content_type!r}")
        if not doc.title and page.headers.get(TITLE_HEADER):  # uploads: the converter's title
            doc = Extracted(title=page.headers[TITLE_HEADER], markdown=doc.markdown, canonical=doc.canonical)
        notes = [f"content_selector {selector!r} matched nothing: the whole page was indexed"] if doc.selector_missed else []
        if not parse_options.get("use_browser_rendering") and mime_type(page.content_type) in ("", *HTML_TYPES):
            hint = rendering_hint(page.body, doc.markdown)
            notes += [hint] if hint else []
        note = "; ".join(notes) or None
        # the model's max input counts [CLS] and [SEP]; count_tokens does not
        chunk_size = min(int(config.get("chunk_size") or DEFAULT_CHUNK_SIZE), self.embedder.max_tokens - 2)
        overlap = int(config.get("chunk_overlap", DEFAULT_CHUNK_OVERLAP))
        schema = schema_of(config.get("custom_metadata"))  # empty: no custom metadata work at all
        custom = page_values(page.body, page.content_type, page.headers, schema, upload=item.get("origin") == "upload")
        # The stored hash covers the text and how it was chunked and embedded, so changing
        # chunk_size, chunk_overlap or the model re-indexes a page even if its text is the same;
        # with a custom_metadata schema also the schema and the page's values.
        custom_part = f"|{fingerprint_part(schema, custom)}" if schema else ""
        fingerprint = hashlib.sha256(
            f"{doc.content_hash}|{chunk_size}|{overlap}|{self.embedder.name}|{EMBEDDING_TEXT_VERSION}{custom_part}".encode()
        ).hexdigest()
        if fingerprint == item.get("content_hash") and item.get("status") in ("fetched", "indexed"):
            if item.get("chunks", 0) > 0 or not doc.markdown:
                return IndexOutcome("unchanged", chunks=item.get("chunks", 0))
        duplicate = self.state.find_indexed_duplicate(instance_id, fingerprint, exclude_id=item["id"])
        if duplicate is not None:  # exact-duplicate content is indexed once, under the first URL
            return IndexOutcome("skipped", message=f"Skipped: same content as {duplicate['key']} (indexed once)")
        sections = chunk_sections(
            doc.markdown,
            chunk_size=chunk_size,
            overlap_pct=overlap,
            count_tokens=self.embedder.count_tokens,
            token_offsets=self.embedder.tokenize_offsets,
        )
        chunks = [c.text for c in sections]
        vectors = self.embedder.embed([embedding_input(doc.title, c.headings, c.text) for c in sections])
        timestamp_ms = int(item.get("fetched_at") or time.time()) * 1000  # ms, rounded down to seconds
        meta = {
            "item_id": item["id"],
            "filename": item["key"],
            "folder": item.get("folder") or folder_for_url(item["key"]),
            "timestamp": timestamp_ms,
            "title": doc.title,
        }
        if item.get("context"):
            meta["context"] = item["context"]
        meta.update({k: v for k, v in custom.items() if k not in INTERNAL_KEYS})  # a declared title wins
        metadatas = [{**meta, "chunk": i} for i in range(len(chunks))]
        tokenizer = (config.get("indexing_options") or {}).get("keyword_tokenizer")
        self.vectors.replace_item(instance_id, item["id"], chunks, vectors, metadatas, keyword_tokenizer=tokenizer)
        current = self.state.get_item_by_id(item["id"])
        if current is None or current["status"] == "deleted":  # deleted while we were embedding it
            self.vectors.delete_item(instance_id, item["id"])
            return IndexOutcome("deleted", message="deleted while it was being indexed")
        self.state.update_item(item["id"], content_hash=fingerprint, title=doc.title, folder=meta["folder"])
        return IndexOutcome("indexed", chunks=len(chunks), message=note)

    def _extract(
        self, body: bytes, content_type: str, url: str, *, selector: str | None = None, include_images: bool = False
    ) -> Extracted | None:
        ctype = mime_type(content_type)
        if not ctype or ctype in HTML_TYPES:
            return extract_html(body, url, fast=len(body) > FAST_EXTRACT_BYTES, content_type=content_type,
                                selector=selector, include_images=include_images)
        if ctype in TEXT_TYPES:
            return extract_text_document(decode_text(body, content_type))
        # PDFs, Office and other documents a site links from its sitemap: the upload converters.
        # A corrupt file raises ConversionError, which index_item records as an error.
        try:
            converted = convert(body, urlsplit(url).path or "/", ctype)
        except UnsupportedFileType:
            return None
        return Extracted(title=converted.title, markdown=converted.markdown)

    def _instance_config(self, instance_id: str) -> dict[str, Any]:
        inst = self.state.get_instance(instance_id)
        return dict(inst["config"]) if inst else {}

    def _record(self, item: dict[str, Any], outcome: IndexOutcome, job_id: str | None) -> None:
        now = time.time()
        counter = outcome.status if outcome.status in ("indexed", "unchanged", "deleted", "skipped") else "errors"
        values: dict[str, Any] = {"pending_job": None, **RELEASE_CLAIM}
        if outcome.status == "indexed":
            values.update(status="indexed", chunks=outcome.chunks, indexed_at=now, error=None)
        elif outcome.status == "unchanged":
            values.update(status="indexed", error=None)
        elif outcome.status == "deleted":
            values.update(status="deleted", chunks=0, content_hash=None, delete_reason=None)
        elif outcome.status == "skipped":
            self.vectors.delete_item(item["instance_id"], item["id"])
            values.update(status="skipped", chunks=0, error=outcome.message)
        else:
            values.update(status="error", error=outcome.message)
        # Only if the page was not fetched again while we indexed the copy we read: else the newer
        # copy stays `fetched` (claim released) and is indexed next, instead of being marked done.
        if not self.state.update_item_if_fetched_at(item["id"], item.get("fetched_at"), **values):
            self.state.update_item(item["id"], **RELEASE_CLAIM)
            logger.info("%s was fetched again while being indexed; indexing the newer copy next", item["key"])
            return
        self.state.incr_job(job_id, **{counter: 1})
        if outcome.message:
            level = {"error": "error", "indexed": "warning"}.get(outcome.status, "info")  # indexed: with a caveat
            self.state.log(job_id, outcome.message, url=item["key"], level=level)
