"""Chroma vector store: one collection per instance, embeddings always supplied by us.

The client comes from settings: an embedded ``PersistentClient`` under the data
directory by default, or a ``chroma run`` server when ``SITESEARCH_CHROMA_URL`` is set.

Embedded Chroma keeps its HNSW index in the memory of the process that opened it:
a second process's writes are not seen by the first one's queries.  So exactly
one process at a time owns an embedded store, marked by an exclusive lock file
(:func:`try_own_embedded_store`); a crawler that cannot get it leaves pages
``fetched`` and the owner (the API server) indexes them.

With a Chroma server there is no owner: every API process and crawler worker
writes, each page claimed first (:meth:`indexer.state.StateStore.claim_pending`).
A server that is down raises :class:`StoreUnavailableError` (the API answers 503).
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np

from indexer.config import Settings
from indexer.errors import IndexerError
from indexer.keyword import KeywordIndex, open_keyword_index
from indexer.keyword_pg import PgKeywordIndex

logger = logging.getLogger(__name__)


_F = TypeVar("_F", bound=Callable[..., Any])

#: New collections: cosine space and a denser, wider-searched HNSW graph than Chroma's
#: defaults (M 16, ef 100).  Measured on 3,000 near-duplicate pages and 1,083 queries
#: inserted in 3 random orders: defaults returned a top 10 different from exact search
#: for 3 queries, these for none (tests/test_scaleout.py compares a 2-writer Chroma server
#: with a single-process store and needs exact agreement).  Existing collections keep
#: the parameters they were created with.
HNSW_METADATA = {"hnsw:space": "cosine", "hnsw:construction_ef": 200, "hnsw:search_ef": 200, "hnsw:M": 32}


class StoreUnavailableError(IndexerError):
    """The Chroma server cannot be reached (the API answers 503)."""


def _server_errors(method: _F) -> _F:
    """Errors of a shared Chroma server, for methods taking ``instance_id`` first.

    * Unreachable server → :class:`StoreUnavailableError`.
    * A cached collection handle another process deleted (the instance was deleted and
      perhaps created again) → the handle is dropped and the call retried once.
    """
    from chromadb.errors import NotFoundError

    @functools.wraps(method)
    def wrapper(self: VectorStore, instance_id: str, *args: Any, **kwargs: Any) -> Any:
        try:
            try:
                return method(self, instance_id, *args, **kwargs)
            except NotFoundError:
                if self._collections.pop(instance_id, None) is None:
                    raise
                logger.info("collection of %s was replaced by another process; reopening it", instance_id)
                return method(self, instance_id, *args, **kwargs)
        except httpx.TransportError as exc:
            logger.error("Chroma server %s unreachable: %s", self.url, exc)
            raise StoreUnavailableError(f"the vector store at {self.url} is unreachable") from exc

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ChunkHit:
    """One chunk returned by a vector query."""

    chunk_id: str
    text: str
    metadata: dict[str, Any]
    score: float  # cosine similarity clipped to [0, 1]


def collection_name(instance_id: str) -> str:
    """Chroma collection name for an instance (3-512 chars of [A-Za-z0-9._-])."""
    return f"ss-{instance_id}-v1"


class StoreLock:
    """An exclusive, process-lifetime lock on the embedded store directory."""

    def __init__(self, fh: TextIO) -> None:
        self._fh = fh

    def release(self) -> None:
        try:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
        finally:
            self._fh.close()


def try_own_embedded_store(settings: Settings) -> StoreLock | None:
    """Take the embedded store's writer lock without blocking; None if another process has it."""
    settings.chroma_dir.mkdir(parents=True, exist_ok=True)
    fh = open(settings.chroma_dir / ".owner.lock", "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return StoreLock(fh)


class VectorStore:
    """Chunks and their embeddings, per instance.

    Args:
        settings: where the store lives (embedded path or server URL).
        keywords: the keyword index to mirror writes into (default: :func:`indexer.keyword.open_keyword_index`).
    """

    def __init__(self, settings: Settings, *, keywords: KeywordIndex | PgKeywordIndex | None = None) -> None:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        self.url = settings.chroma_url or str(settings.chroma_dir)
        if settings.chroma_url:
            parts = urlsplit(settings.chroma_url)
            self.client = chromadb.HttpClient(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or (443 if parts.scheme == "https" else 8000),
                ssl=parts.scheme == "https",
                settings=chroma_settings,
            )
        else:
            settings.chroma_dir.mkdir(parents=True, exist_ok=True)
            self.client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
        self._collections: dict[str, Any] = {}
        #: the keyword (BM25) index; every write here is mirrored there, so both hold the same chunks
        self.keywords = keywords if keywords is not None else open_keyword_index(settings)

    def _collection(self, instance_id: str) -> Any:
        col = self._collections.get(instance_id)
        if col is None:
            name = collection_name(instance_id)
            try:
                col = self.client.get_or_create_collection(name, embedding_function=None, metadata=HNSW_METADATA)
            except httpx.TransportError:
                raise
            except Exception as exc:  # noqa: BLE001 - two processes creating it at once: the loser finds it created
                logger.info("collection %s: %s; reading the one another process created", name, exc)
                col = self.client.get_collection(name, embedding_function=None)
            self._collections[instance_id] = col
        return col

    @_server_errors
    def replace_item(
        self,
        instance_id: str,
        item_id: str,
        texts: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[Mapping[str, Any]],
        *,
        keyword_tokenizer: str | None = None,
    ) -> None:
        """Replace all chunks of one item with new ones (no stale chunks left behind), in both indexes."""
        col = self._collection(instance_id)
        col.delete(where={"item_id": item_id})
        ids = [f"{item_id}:{i}" for i in range(len(texts))]
        if texts:
            col.add(
                ids=ids,
                embeddings=np.asarray(embeddings, dtype=np.float32),
                documents=list(texts),
                metadatas=[dict(m) for m in metadatas],
            )
        self.keywords.replace_item(instance_id, item_id, ids, texts, metadatas, tokenizer=keyword_tokenizer)

    @_server_errors
    def delete_item(self, instance_id: str, item_id: str) -> None:
        """Remove every chunk of an item (vectors and keyword rows)."""
        self._collection(instance_id).delete(where={"item_id": item_id})
        self.keywords.delete_item(instance_id, item_id)

    def drop_instance(self, instance_id: str) -> None:
        """Delete an instance's collection."""
        self._collections.pop(instance_id, None)
        self.keywords.drop_instance(instance_id)
        try:
            self.client.delete_collection(collection_name(instance_id))
        except Exception:  # missing collection: nothing to drop
            logger.debug("no collection for %s", instance_id)

    @_server_errors
    def count(self, instance_id: str) -> int:
        return int(self._collection(instance_id).count())

    @_server_errors
    def query(
        self, instance_id: str, vector: np.ndarray, *, n: int, where: Mapping[str, Any] | None = None
    ) -> list[ChunkHit]:
        """Nearest chunks to ``vector``, best first."""
        col = self._collection(instance_id)
        # chromadb 1.5 returns what it has when n_results exceeds the count (no count() round trip)
        res = col.query(
            query_embeddings=np.asarray([vector], dtype=np.float32),
            n_results=n,
            where=dict(where) if where else None,
            include=["documents", "metadatas", "distances"],
        )
        hits = []
        for cid, doc, meta, dist in zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], res["distances"][0], strict=True
        ):
            hits.append(ChunkHit(cid, doc or "", dict(meta or {}), float(min(1.0, max(0.0, 1.0 - dist)))))
        return hits


    @_server_errors
    def backfill_keywords(self, instance_id: str, *, batch: int = 1000) -> int:
        """Fill an empty keyword index from the vector store's chunks (for data indexed before it existed).

        Returns:
            How many chunks were copied (0 when the keyword index already had rows).
        """
        if self.keywords.count(instance_id) > 0:
            return 0
        col = self._collection(instance_id)
        by_item: dict[str, tuple[list[str], list[str], list[dict[str, Any]]]] = {}
        offset = 0
        while True:
            got = col.get(include=["documents", "metadatas"], limit=batch, offset=offset)
            if not got["ids"]:
                break
            for cid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
                meta = dict(meta or {})
                ids, docs, metas = by_item.setdefault(str(meta.get("item_id", cid.rsplit(":", 1)[0])), ([], [], []))
                ids.append(cid)
                docs.append(doc or "")
                metas.append(meta)
            offset += len(got["ids"])
        for item_id, (ids, docs, metas) in by_item.items():
            self.keywords.replace_item(instance_id, item_id, ids, docs, metas)
        if offset:
            logger.info("keyword index %s: backfilled %d chunks from the vector store", instance_id, offset)
        return offset

    @_server_errors
    def embeddings(self, instance_id: str, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored embeddings of the given chunks (missing ids are left out)."""
        if not chunk_ids:
            return {}
        res = self._collection(instance_id).get(ids=list(chunk_ids), include=["embeddings"])
        return {cid: np.asarray(emb, dtype=np.float32) for cid, emb in zip(res["ids"], res["embeddings"], strict=True)}


    @_server_errors
    def texts(self, instance_id: str, chunk_ids: Sequence[str]) -> dict[str, str]:
        """Stored texts of the given chunks (missing ids are left out)."""
        if not chunk_ids:
            return {}
        res = self._collection(instance_id).get(ids=list(chunk_ids), include=["documents"])
        return {cid: doc or "" for cid, doc in zip(res["ids"], res["documents"], strict=True)}


def folder_for_url(url: str) -> str:
    """The ``folder`` metadata of a crawled page: host plus the URL path's directory, e.g. ``example.com/blog/``."""
    parts = urlsplit(url)
    path = parts.path or "/"
    directory = path[: path.rfind("/") + 1]
    return f"{parts.netloc}{directory}"

