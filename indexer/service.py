"""One process's handle on the index: state, raw store, embedder, vector store and indexer.

:meth:`IndexService.try_open` returns a service only if this process may write
the vector store (see :mod:`indexer.vectorstore` for why only one process may
own an embedded store).  The API server and a standalone crawler both use it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from indexer.config import Settings
from indexer.embedder import Embedder, load_embedder
from indexer.errors import IndexerError
from indexer.keyword import open_keyword_index
from indexer.pipeline import Indexer, IndexOutcome
from indexer.rawstore import RawStore
from indexer.state import StateStore
from indexer.vectorstore import StoreLock, VectorStore, try_own_embedded_store

logger = logging.getLogger(__name__)


class StoreBusyError(IndexerError):
    """Another process owns the embedded vector store."""


class IndexService:
    """Everything needed to index and search, owned by one process.

    Args:
        settings: service settings.
        state: a state store to share (one is created if omitted).
        lock: the embedded store's lock held by this process (None with a Chroma server).
    """

    def __init__(self, settings: Settings, *, state: StateStore | None = None, lock: StoreLock | None = None) -> None:
        self.settings = settings
        self.state = state or StateStore(settings.resolved_database_url)
        self.lock = lock
        self.raw = RawStore(settings.pages_dir)
        self.embedder: Embedder = load_embedder(
            settings.model_dir,
            settings.models_dir,
            threads=settings.embed_threads,
            batch_size=settings.embed_batch_size,
        )
        self.vectors = VectorStore(settings, keywords=open_keyword_index(settings, self.state.engine))
        self.indexer = Indexer(settings, self.state, self.vectors, self.embedder, self.raw)
        self._backfill_keywords()

    @classmethod
    def try_open(cls, settings: Settings, *, state: StateStore | None = None) -> IndexService | None:
        """Open the service if this process may write the vector store, else None."""
        lock = None
        if not settings.chroma_url:
            lock = try_own_embedded_store(settings)
            if lock is None:
                return None
        try:
            return cls(settings, state=state, lock=lock)
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    @classmethod
    def open(cls, settings: Settings, *, state: StateStore | None = None) -> IndexService:
        """Open the service or raise :class:`StoreBusyError` naming the owner."""
        service = cls.try_open(settings, state=state)
        if service is None:
            owner = _read_owner(settings)
            raise StoreBusyError(
                f"another sitesearch process{f' (pid {owner})' if owner else ''} owns the embedded index at "
                f"{settings.chroma_dir}; stop it, or run a Chroma server and set SITESEARCH_CHROMA_URL"
            )
        return service

    def close(self) -> None:
        """Release the store lock."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _backfill_keywords(self) -> None:
        """Give instances indexed before the keyword index existed their keyword rows."""
        for inst in self.state.list_instances():
            try:
                self.vectors.backfill_keywords(inst["id"])
            except Exception:  # a broken instance must not stop the service
                logger.exception("keyword backfill of %s failed", inst["id"])

    # --- indexing ------------------------------------------------------------------
    def index_item_id(self, item_id: str) -> IndexOutcome | None:
        """Claim and index one item by id (the crawler calls this from its indexing thread)."""
        item = self.indexer.claim(item_id)  # None: not fetched, or another process is indexing it
        if item is None:
            return None
        return self.indexer.index_item(item)

    def drain(self, *, batch: int = 32) -> int:
        """Index every pending item; returns how many were processed."""
        done = 0
        while True:
            n = self.indexer.process_pending(limit=batch)
            if n == 0:
                return done
            done += n

    def complete_finished_jobs(self) -> list[str]:
        """Mark running jobs whose crawl is done and whose pages are all indexed as completed."""
        completed = []
        for job in self.state.jobs_with_status("running"):
            if job["crawl_done"] and self.state.count_pending(job["id"]) == 0:
                if self.state.finish_job(job["id"], "completed"):
                    self.state.log(job["id"], "job completed")
                    completed.append(job["id"])
        return completed


def _read_owner(settings: Settings) -> str | None:
    try:
        return (settings.chroma_dir / ".owner.lock").read_text().strip() or None
    except OSError:
        return None


def describe(service: IndexService) -> dict[str, Any]:
    """A summary for logs and ``/health``."""
    return {
        "model": service.embedder.name,
        "dim": service.embedder.dim,
        "store": service.settings.chroma_url or str(service.settings.chroma_dir),
        "pid": os.getpid(),
    }
