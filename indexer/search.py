"""Retrieval: vector, keyword (BM25) or hybrid, optionally reranked, then the threshold.

Follows the seeds' "Retrieval configuration": ``top_k = max_num_results``, then
results under ``match_threshold`` (``ranking_options.score_threshold``) are dropped.

* ``vector``: the query embedding against Chroma (cosine).
* ``keyword``: SQLite FTS5 BM25 (:mod:`indexer.keyword`).
* ``hybrid``: both, fused by reciprocal rank fusion (``rrf``, k = 60) or by the
  ``max`` of each list's scores normalised by its best score.

The ``score`` of a result is always the chunk's cosine similarity to the query
(clipped to [0, 1]), whichever list found it, so a threshold means the same thing
in every mode; with reranking it is the reranker's score in [0, 1] instead.  Both
indexes receive the same compiled filter (:func:`indexer.metafilter.compile_filters`).

Relevance boosting (``boost_by``, :mod:`indexer.boost`) reorders the candidates without
changing ``score``: at least 50 candidates are retrieved, each gets
``retrieval score + boost`` (:func:`boost_order`), and results follow that order (with
reranking, ``reranker score + boost``); ``score`` and the threshold stay the cosine (or
reranker) score.  Without ``boost_by`` none of this runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from indexer.boost import Boost, boost_scores
from indexer.custom_metadata import BUILTIN_KEYS
from indexer.metafilter import compile_filters
from indexer.service import IndexService

logger = logging.getLogger(__name__)

RETRIEVAL_TYPES = ("vector", "keyword", "hybrid")
FUSION_METHODS = ("rrf", "max")
RRF_K = 60  # Cormack et al. 2009
MIN_CANDIDATES = 50  # per list, before fusion / reranking


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One retrieved chunk with its item's attributes."""

    item_id: str
    chunk_id: str
    filename: str
    folder: str
    timestamp: int
    title: str
    text: str
    score: float
    context: str | None = None
    custom: dict[str, Any] = field(default_factory=dict)  # the instance's custom_metadata values
    # context_expansion: neighbouring chunks of the same item, (chunk id, text) in page order
    before: tuple[tuple[str, str], ...] = ()
    after: tuple[tuple[str, str], ...] = ()

    @property
    def full_text(self) -> str:
        """The chunk with its neighbours (``context_expansion``), in page order."""
        return "\n\n".join([*(t for _c, t in self.before), self.text, *(t for _c, t in self.after)])


@dataclass(slots=True)
class Candidate:
    """A chunk on its way through retrieval: its text, metadata and per-stage scores."""

    chunk_id: str
    text: str
    metadata: dict[str, Any]
    cosine: float | None = None  # similarity to the query, [0, 1]
    bm25: float | None = None  # positive, higher is better; None when the keyword list did not hold it
    vector_rank: int | None = None
    keyword_rank: int | None = None
    fused: float = 0.0
    features: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RetrievalOptions:
    """How to retrieve (instance defaults merged with the request)."""

    retrieval_type: str = "vector"
    fusion_method: str = "rrf"
    keyword_match_mode: str = "or"
    candidates: int = MIN_CANDIDATES
    boost_by: tuple[Boost, ...] = ()  # resolved entries (indexer.boost.resolve_boosts); () = no boosting


def search(
    service: IndexService,
    instance_id: str,
    query: str,
    *,
    max_num_results: int = 10,
    score_threshold: float = 0.0,
    filters: Mapping[str, Any] | None = None,
    folder_prefix: str | None = None,
    options: RetrievalOptions | None = None,
    reranker: Any | None = None,
    rerank_threshold: float | None = None,
    custom_fields: Mapping[str, str] | None = None,
) -> list[SearchHit]:
    """Return up to ``max_num_results`` chunks scoring at least ``score_threshold``, best first.

    Args:
        service: the index service (state, embedder, vectors + keyword index).
        instance_id: the instance to search.
        query: the user's query.
        max_num_results: how many results to return.
        score_threshold: minimum cosine similarity (or reranker score when reranking).
        filters: Cloudflare metadata filters.
        folder_prefix: tenant folder restriction.
        options: retrieval type, fusion method, keyword match mode and ``boost_by`` (which widens the
            candidates to ``options.candidates`` and reorders them, :func:`boost_order`).
        reranker: an object with ``rerank(query, candidates) -> list[Candidate]`` setting ``fused`` to a
            [0, 1] score, or None.
        rerank_threshold: minimum reranker score (defaults to ``score_threshold``).
        custom_fields: the instance's ``custom_metadata`` (field name → data type), usable in ``filters``.

    Returns:
        Hits, best first.

    Raises:
        indexer.metafilter.FilterError: the filter is malformed.
        ValueError: an unknown retrieval type or fusion method.
    """
    opts = options or RetrievalOptions()
    if opts.retrieval_type not in RETRIEVAL_TYPES:
        raise ValueError(f"retrieval_type: must be one of {', '.join(RETRIEVAL_TYPES)}")
    if opts.fusion_method not in FUSION_METHODS:
        raise ValueError(f"fusion_method: must be one of {', '.join(FUSION_METHODS)}")
    where = compile_filters(
        filters,
        lambda key: service.state.distinct_values(instance_id, key),
        folder_prefix=folder_prefix,
        custom=custom_fields,
    )
    vector = service.embedder.embed_query(query)
    wide = reranker is not None or opts.retrieval_type == "hybrid" or bool(opts.boost_by)
    pool = max(max_num_results, opts.candidates) if wide else max_num_results
    candidates = retrieve(service, instance_id, query, vector, where=where, n=pool, options=opts)
    boosts = None
    if opts.boost_by:
        boosts = dict(zip((c.chunk_id for c in candidates), boost_scores([c.metadata for c in candidates], opts.boost_by),
                          strict=True))
        candidates = boost_order(candidates, boosts, opts.retrieval_type)
    if reranker is not None:
        candidates = reranker.rerank(query, candidates)
        if boosts is not None:  # the reranker re-sorts by its own score: keep the boost in the order
            candidates.sort(key=lambda c: c.fused + boosts[c.chunk_id], reverse=True)
        threshold = score_threshold if rerank_threshold is None else rerank_threshold
        scored = [(c, c.fused) for c in candidates]
    else:
        threshold = score_threshold
        scored = [(c, c.cosine or 0.0) for c in candidates]
    out = []
    for cand, score in scored:
        if score < threshold:
            continue
        out.append(to_hit(cand, score))
        if len(out) >= max_num_results:
            break
    return out


def retrieve(
    service: IndexService,
    instance_id: str,
    query: str,
    vector: np.ndarray,
    *,
    where: Mapping[str, Any] | None,
    n: int,
    options: RetrievalOptions,
) -> list[Candidate]:
    """Candidates in retrieval order, each with its cosine similarity filled in.

    Args:
        service: the index service.
        instance_id: the instance.
        query: query text (for the keyword list).
        vector: the query embedding (normalised).
        where: the compiled filter, applied to both indexes.
        n: how many candidates each list returns.
        options: retrieval type, fusion and match mode.

    Returns:
        Up to ``n`` candidates, best first.
    """
    by_id: dict[str, Candidate] = {}
    if options.retrieval_type in ("vector", "hybrid"):
        for rank, hit in enumerate(service.vectors.query(instance_id, vector, n=n, where=where)):
            by_id[hit.chunk_id] = Candidate(hit.chunk_id, hit.text, hit.metadata, cosine=hit.score, vector_rank=rank)
    if options.retrieval_type in ("keyword", "hybrid"):
        kw = service.vectors.keywords.query(instance_id, query, n=n, where=where, match_mode=options.keyword_match_mode)
        for rank, khit in enumerate(kw):
            cand = by_id.get(khit.chunk_id)
            if cand is None:
                cand = by_id[khit.chunk_id] = Candidate(khit.chunk_id, khit.text, khit.metadata)
            cand.bm25 = khit.bm25
            cand.keyword_rank = rank
        _fill_cosine(service, instance_id, vector, by_id)
    cands = list(by_id.values())
    if options.retrieval_type == "vector":
        for c in cands:
            c.fused = c.cosine or 0.0
    elif options.retrieval_type == "keyword":
        for c in cands:
            c.fused = c.bm25 or 0.0
    else:
        fuse(cands, options.fusion_method)
    # ties (equal RRF, e.g. ranks 0+1 vs 1+0) go to the larger sum of best-normalised scores
    top_bm25 = max((c.bm25 or 0.0 for c in cands), default=0.0) or 1.0
    cands.sort(key=lambda c: (round(c.fused, 12), (c.cosine or 0.0) + (c.bm25 or 0.0) / top_bm25), reverse=True)
    return cands[:n]


def boost_order(cands: list[Candidate], boosts: Mapping[str, float], retrieval_type: str) -> list[Candidate]:
    """The candidates sorted by retrieval score + boost (stable: ties keep the retrieval order).

    The retrieval score is brought to [0, 1] so the boost means the same in every mode: vector,
    the cosine similarity; keyword and hybrid, the candidate's ``fused`` score (BM25, RRF or max)
    divided by the best candidate's.

    Args:
        cands: candidates in retrieval order.
        boosts: chunk id → additive boost (:func:`indexer.boost.boost_scores`).
        retrieval_type: ``vector``, ``keyword`` or ``hybrid``.

    Returns:
        A new list, boosted order.
    """
    if retrieval_type == "vector":
        def base(c: Candidate) -> float:
            return c.cosine or 0.0
    else:
        top = max((c.fused for c in cands), default=0.0) or 1.0

        def base(c: Candidate) -> float:
            return c.fused / top
    return sorted(cands, key=lambda c: base(c) + boosts.get(c.chunk_id, 0.0), reverse=True)


def fuse(cands: list[Candidate], method: str) -> None:
    """Set ``fused`` on each candidate: reciprocal rank fusion, or max of best-normalised scores."""
    if method == "rrf":
        for c in cands:
            c.fused = sum(1.0 / (RRF_K + r + 1) for r in (c.vector_rank, c.keyword_rank) if r is not None)
        return
    top_cos = max((c.cosine or 0.0 for c in cands if c.vector_rank is not None), default=0.0) or 1.0
    top_bm25 = max((c.bm25 or 0.0 for c in cands), default=0.0) or 1.0
    for c in cands:
        dense = (c.cosine or 0.0) / top_cos if c.vector_rank is not None else 0.0
        sparse = (c.bm25 or 0.0) / top_bm25
        c.fused = max(dense, sparse)


def _fill_cosine(service: IndexService, instance_id: str, vector: np.ndarray, by_id: dict[str, Candidate]) -> None:
    missing = [cid for cid, c in by_id.items() if c.cosine is None]
    if not missing:
        return
    q = np.asarray(vector, dtype=np.float32)
    for cid, emb in service.vectors.embeddings(instance_id, missing).items():
        denom = float(np.linalg.norm(emb) * np.linalg.norm(q)) or 1.0
        by_id[cid].cosine = float(min(1.0, max(0.0, float(emb @ q) / denom)))


MAX_CONTEXT_EXPANSION = 3  # neighbouring chunks on each side of a hit


def expand_context(service: IndexService, instance_id: str, hits: list[SearchHit], n: int) -> list[SearchHit]:
    """Each hit with up to ``n`` neighbouring chunks of its page on each side (``context_expansion``).

    Chunk ``i`` of an item has id ``<item id>:<i>``; neighbours past either end of the page do not
    exist and are left out.  Scores and order are unchanged.
    """
    if n <= 0 or not hits:
        return hits
    wanted: list[tuple[list[str], list[str]]] = []
    for hit in hits:
        item, _sep, index = hit.chunk_id.rpartition(":")
        i = int(index) if item and index.isdigit() else None
        wanted.append(([], []) if i is None else (
            [f"{item}:{j}" for j in range(max(0, i - n), i)], [f"{item}:{j}" for j in range(i + 1, i + n + 1)]))
    texts = service.vectors.texts(instance_id, sorted({cid for b, a in wanted for cid in (*b, *a)}))
    return [
        replace(hit, before=tuple((c, texts[c]) for c in before if c in texts),
                after=tuple((c, texts[c]) for c in after if c in texts))
        for hit, (before, after) in zip(hits, wanted, strict=True)
    ]


def to_hit(cand: Candidate, score: float) -> SearchHit:
    """A candidate as a public hit with ``score`` rounded to 6 places."""
    m = cand.metadata
    return SearchHit(
        item_id=str(m.get("item_id", "")),
        chunk_id=cand.chunk_id,
        filename=str(m.get("filename", "")),
        folder=str(m.get("folder", "")),
        timestamp=int(m.get("timestamp") or 0),
        title=str(m.get("title") or ""),
        text=cand.text,
        score=round(float(min(1.0, max(0.0, score))), 6),
        context=m.get("context"),
        custom={k: v for k, v in m.items() if k not in BUILTIN_KEYS},
    )

