"""``/search`` and ``/ai-search`` on instances, plus the legacy ``/autorag/rags/{name}`` aliases."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter

from indexer.metafilter import FilterError
from indexer.search import SearchHit, search
from server.auth import EditDep, Principal, RunDep
from server.deps import AccountDep, RunnerDep, ServiceDep, StateDep, load_instance
from server.errors import APIError, envelope
from server.routes.jobs import start_sync
from server.schemas import SearchRequest, hit_public, job_public

router = APIRouter(prefix="/client/v4/accounts/{account_id}", tags=["search"])

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"\w+")


def run_search(state: Any, service: Any, principal: Principal, instance_id: str, body: SearchRequest) -> tuple[str, list[SearchHit]]:
    """Validate options against the instance and retrieve; returns ``(query, hits)``."""
    _row, config = load_instance(state, instance_id)
    if body.rewrite_query or (body.ai_search_options and body.ai_search_options.query_rewrite and body.ai_search_options.query_rewrite.enabled):
        raise APIError(400, "rewrite_query: no query-rewrite model is configured on this server")
    max_n, threshold, filters = body.resolved(default_max=config.max_num_results, default_threshold=config.match_threshold)
    query = body.effective_query
    try:
        hits = search(
            service,
            instance_id,
            query,
            max_num_results=max_n,
            score_threshold=threshold,
            filters=filters,
            folder_prefix=principal.folder_prefix,
        )
    except FilterError as exc:
        raise APIError(400, str(exc)) from None
    return query, hits


def search_result(query: str, hits: list[SearchHit]) -> dict[str, Any]:
    return {
        "object": "vector_store.search_results.page",
        "search_query": query,
        "data": [hit_public(h) for h in hits],
        "has_more": False,
        "next_page": None,
    }


def extractive_answer(query: str, hits: list[SearchHit], *, max_sentences: int = 4) -> str:
    """Best sentences of the top chunks, each with a [n] citation (no generation model)."""
    if not hits:
        return "No relevant content was found for this query."
    q_words = {w.lower() for w in _WORD.findall(query) if len(w) > 2}
    scored: list[tuple[float, int, int, str]] = []
    for rank, hit in enumerate(hits[:5]):
        for pos, sentence in enumerate(s.strip() for s in _SENTENCE.split(hit.text)):
            if len(sentence) < 20:
                continue
            words = {w.lower() for w in _WORD.findall(sentence)}
            overlap = len(q_words & words) / (len(q_words) or 1)
            scored.append((overlap + hit.score - 0.05 * rank, rank, pos, sentence))
    best = sorted(scored, reverse=True)[:max_sentences]
    best.sort(key=lambda t: (t[1], t[2]))
    lines = [f"{s} [{rank + 1}]" for _, rank, _, s in best]
    sources = "\n".join(f"[{i + 1}] {h.title or h.filename} — {h.filename}" for i, h in enumerate(hits[:5]))
    return "Extractive answer (no generation model configured):\n\n" + " ".join(lines) + "\n\nSources:\n" + sources


@router.post("/ai-search/instances/{instance_id}/search")
def instance_search(
    _: AccountDep, principal: RunDep, state: StateDep, service: ServiceDep, instance_id: str, body: SearchRequest
) -> dict[str, Any]:
    query, hits = run_search(state, service, principal, instance_id, body)
    return envelope(search_result(query, hits))


@router.post("/ai-search/instances/{instance_id}/ai-search")
def instance_ai_search(
    _: AccountDep, principal: RunDep, state: StateDep, service: ServiceDep, instance_id: str, body: SearchRequest
) -> dict[str, Any]:
    query, hits = run_search(state, service, principal, instance_id, body)
    result = search_result(query, hits)
    result["response"] = extractive_answer(query, hits)
    return envelope(result)


# --- legacy AutoRAG aliases -----------------------------------------------------------------
@router.post("/autorag/rags/{instance_id}/search", tags=["legacy"])
def legacy_search(
    _: AccountDep, principal: RunDep, state: StateDep, service: ServiceDep, instance_id: str, body: SearchRequest
) -> dict[str, Any]:
    return instance_search(_, principal, state, service, instance_id, body)


@router.post("/autorag/rags/{instance_id}/ai-search", tags=["legacy"])
def legacy_ai_search(
    _: AccountDep, principal: RunDep, state: StateDep, service: ServiceDep, instance_id: str, body: SearchRequest
) -> dict[str, Any]:
    return instance_ai_search(_, principal, state, service, instance_id, body)


@router.patch("/autorag/rags/{instance_id}/sync", tags=["legacy"])
def legacy_sync(_: AccountDep, __: EditDep, state: StateDep, runner: RunnerDep, instance_id: str) -> dict[str, Any]:
    return envelope(job_public(start_sync(state, runner, instance_id)))
