"""Retrieval: embed the query, query the instance's vectors with filters, apply the threshold.

Follows the seeds' "Retrieval configuration": ``top_k = max_num_results``, then
results under ``match_threshold`` (``ranking_options.score_threshold``) are dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from indexer.metafilter import compile_filters
from indexer.service import IndexService

logger = logging.getLogger(__name__)


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


def search(
    service: IndexService,
    instance_id: str,
    query: str,
    *,
    max_num_results: int = 10,
    score_threshold: float = 0.0,
    filters: Mapping[str, Any] | None = None,
    folder_prefix: str | None = None,
) -> list[SearchHit]:
    """Return up to ``max_num_results`` chunks scoring at least ``score_threshold``, best first.

    Raises:
        indexer.metafilter.FilterError: the filter is malformed.
    """
    where = compile_filters(
        filters,
        lambda key: service.state.distinct_values(instance_id, key),
        folder_prefix=folder_prefix,
    )
    vector = service.embedder.embed_query(query)
    hits = service.vectors.query(instance_id, vector, n=max_num_results, where=where)
    out = []
    for hit in hits:
        if hit.score < score_threshold:
            continue
        m = hit.metadata
        out.append(
            SearchHit(
                item_id=str(m.get("item_id", "")),
                chunk_id=hit.chunk_id,
                filename=str(m.get("filename", "")),
                folder=str(m.get("folder", "")),
                timestamp=int(m.get("timestamp", 0)),
                title=str(m.get("title", "")),
                text=hit.text,
                score=round(hit.score, 6),
                context=m.get("context"),
            )
        )
    return out
