"""``/search`` and ``/ai-search`` on instances, plus the legacy ``/autorag/rags/{name}`` aliases.

Options resolve request over instance over server: ``ai_search_options`` (nested) over the
seeds' flat fields over the instance's configuration (``index_method`` → retrieval type,
``fusion_method``, ``retrieval_options.keyword_match_mode`` and ``.boost_by`` (a request's
``boost_by`` replaces the instance's; ``[]`` turns it off), ``reranking``/``reranking_model``,
``ai_search_model``, ``system_prompt_ai_search``) over :class:`~indexer.config.Settings`.

``stream: true`` on ``/ai-search`` answers with Server-Sent Events: one
``data: {"search_query", "data"}`` event with the results, then ``data: {"response": piece}``
events (tokens from a generator, sentences of the extractive answer), then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from indexer.answer import (
    AnswerError,
    GenerationConfig,
    Generator,
    embedding_similarity,
    extractive_answer,
    extractive_parts,
    sources_block,
)
from indexer.boost import BoostError, resolve_boosts
from indexer.instance import InstanceConfig
from indexer.keyword import KeywordQueryError
from indexer.metafilter import FilterError
from indexer.rerank import RerankError, get_reranker
from indexer.search import RetrievalOptions, SearchHit, expand_context, search
from indexer.simcache import SimilarityCache, threshold_name
from server.auth import (
    RUN,
    EditDep,
    Principal,
    RunDep,
    bearer_principal,
    check_permission,
    stored_principal,
)
from server.deps import (
    AccountDep,
    RunnerDep,
    ServiceDep,
    StateDep,
    load_instance,
    run_search_pool,
)
from server.errors import APIError, envelope, validation_message
from server.routes.jobs import start_sync
from server.schemas import RerankingOptions, SearchRequest, hit_public, job_public

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/client/v4/accounts/{account_id}", tags=["search"])

__all__ = ["extractive_answer", "router", "run_search", "search_result"]


@dataclass
class Plan:
    """A search request resolved against its instance."""

    config: InstanceConfig
    query: str
    max_n: int
    threshold: float
    filters: dict[str, Any] | None
    retrieval: RetrievalOptions
    rerank: bool
    rerank_model: str | None
    rerank_threshold: float | None
    rewrite: bool
    rewrite_requested: bool  # by the request (400 without a generator) rather than the instance
    rewrite_model: str | None
    rewrite_prompt: str | None
    context_expansion: int = 0  # neighbouring chunks added around each hit, per side


def plan_search(config: InstanceConfig, body: SearchRequest) -> Plan:
    """Resolve the request's options against the instance's defaults."""
    max_n, threshold, filters = body.resolved(default_max=config.max_num_results, default_threshold=config.match_threshold)
    im = config.index_method
    rtype = "hybrid" if (im.vector and im.keyword) else ("keyword" if im.keyword else "vector")
    fusion = config.fusion_method
    mode = config.retrieval_options.keyword_match_mode
    boost_by: list[Any] = config.retrieval_options.boost_by
    where = "retrieval_options.boost_by"
    rr = body.reranking
    flat_rr = RerankingOptions(enabled=rr) if isinstance(rr, bool) else rr
    rerank, rerank_model, rerank_threshold = config.reranking, config.reranking_model, None
    rewrite, rewrite_model, rewrite_prompt = body.rewrite_query or config.rewrite_query, config.rewrite_model, None
    requested = body.rewrite_query
    for opt in (flat_rr, body.ai_search_options.reranking if body.ai_search_options else None):
        if opt is not None:
            rerank = opt.enabled if opt.enabled is not None else rerank
            rerank_model = opt.model or rerank_model
            rerank_threshold = opt.match_threshold if opt.match_threshold is not None else rerank_threshold
    if body.ai_search_options:
        r = body.ai_search_options.retrieval
        rtype = r.retrieval_type or rtype
        fusion = r.fusion_method or fusion
        mode = r.keyword_match_mode or mode
        if r.boost_by is not None:  # replaces the instance's entirely ([] turns boosting off)
            boost_by, where = r.boost_by, "ai_search_options.retrieval.boost_by"
        qr = body.ai_search_options.query_rewrite
        if qr is not None:
            rewrite = requested = qr.enabled
            rewrite_model = qr.model or rewrite_model
            rewrite_prompt = qr.rewrite_prompt
    boosts: tuple[Any, ...] = ()
    if boost_by:
        try:
            boosts = resolve_boosts(boost_by, [(f.field_name, f.data_type) for f in config.custom_metadata], where=where)
        except BoostError as exc:
            if where != "retrieval_options.boost_by":
                raise APIError(400, str(exc)) from None
            # stored under older, looser rules: search without boosting rather than fail every query
            logger.warning("instance %s: boosting skipped: %s", config.id, exc)
    return Plan(
        config=config,
        query=body.effective_query,
        max_n=max_n,
        threshold=threshold,
        filters=filters,
        retrieval=RetrievalOptions(retrieval_type=rtype, fusion_method=fusion, keyword_match_mode=mode, boost_by=boosts),
        rerank=rerank,
        rerank_model=rerank_model,
        rerank_threshold=rerank_threshold,
        rewrite=rewrite,
        rewrite_requested=requested,
        rewrite_model=rewrite_model,
        rewrite_prompt=rewrite_prompt or config.system_prompt_rewrite_query,
        context_expansion=(body.ai_search_options.retrieval.context_expansion or 0) if body.ai_search_options else 0,
    )


def generator_for(service: Any, config: InstanceConfig, *, model: str | None = None) -> Generator | None:
    """The instance's generation client, or None when no endpoint is configured."""
    settings = service.settings
    base_url = config.ai_search_base_url or settings.generation_base_url
    if not base_url:
        return None
    # Cloudflare-hosted model names (@cf/...) cannot run here: use the configured model instead
    names = [m for m in (model, config.ai_search_model, settings.generation_model) if m and not m.startswith("@cf/")]
    return Generator(
        GenerationConfig(
            base_url=base_url,
            model=names[0] if names else "default",
            api_key=settings.generation_api_key(config.ai_search_api_key_env),
            timeout=settings.generation_timeout,
        )
    )


def run_search(state: Any, service: Any, principal: Principal, instance_id: str, body: SearchRequest) -> tuple[str, list[SearchHit]]:
    """Validate options against the instance and retrieve; returns ``(query, hits)``."""
    _row, config = load_instance(state, instance_id)
    plan = plan_search(config, body)
    return execute(service, principal, instance_id, plan)


def execute(service: Any, principal: Principal, instance_id: str, plan: Plan) -> tuple[str, list[SearchHit]]:
    """Rewrite (if asked), retrieve and rerank one planned search."""
    query = plan.query
    if plan.rewrite:
        gen = generator_for(service, plan.config, model=plan.rewrite_model)
        if gen is None and not plan.rewrite_requested:
            logger.warning("instance %s enables rewrite_query but no generation model is configured", instance_id)
        elif gen is None:
            raise APIError(
                400,
                "rewrite_query: query rewriting needs a generation model and none is configured "
                "(set SITESEARCH_GENERATION_BASE_URL or the instance's ai_search_base_url)",
            )
        else:
            try:
                query = gen.rewrite(query, prompt=plan.rewrite_prompt)
            except AnswerError as exc:
                raise APIError(502, f"rewrite_query: {exc}") from None
            finally:
                gen.close()
    reranker = None
    if plan.rerank:
        try:
            reranker = get_reranker(
                plan.rerank_model,
                bm25=lambda q, ids: service.vectors.keywords.score_ids(instance_id, q, ids),
                model_dir=service.settings.rerank_model_dir,
                cache_dir=service.settings.models_dir,
            )
        except RerankError as exc:
            raise APIError(400, str(exc)) from None
    try:
        hits = search(
            service,
            instance_id,
            query,
            max_num_results=plan.max_n,
            score_threshold=plan.threshold,
            filters=plan.filters,
            folder_prefix=principal.folder_prefix,
            options=plan.retrieval,
            reranker=reranker,
            rerank_threshold=plan.rerank_threshold,
            custom_fields={f.field_name: f.data_type for f in plan.config.custom_metadata},
        )
    except (FilterError, KeywordQueryError) as exc:
        raise APIError(400, str(exc)) from None
    return query, expand_context(service, instance_id, hits, plan.context_expansion)


def search_result(query: str, hits: list[SearchHit]) -> dict[str, Any]:
    return {
        "object": "vector_store.search_results.page",
        "search_query": query,
        "data": [hit_public(h) for h in hits],
        "has_more": False,
        "next_page": None,
    }


#: ``/search`` reads its body itself (see :func:`instance_search`); this documents it in the OpenAPI schema.
SEARCH_OPENAPI = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}}}}}


@router.post("/ai-search/instances/{instance_id}/search", response_model=None, openapi_extra=SEARCH_OPENAPI)
async def instance_search(request: Request, account_id: str, instance_id: str) -> Response:
    """``/search`` when reached through FastAPI's router (the served app answers it first, in :mod:`server.asgi`)."""
    headers = request.headers
    payload = await search_bytes(request.app.state, account_id, instance_id, request.scope["path"],
                                 headers.get("authorization"), headers.get("content-type"), await request.body())
    return Response(payload, media_type="application/json")


async def search_bytes(app_state: Any, account_id: str, instance_id: str, path: str, authorization: str | None,
                       content_type: str | None, raw: bytes) -> bytes:
    """One ``/search`` request, from its parts to the response body; raises :class:`APIError`.

    Outside FastAPI's dependency and body machinery, with the same checks in the same order.
    On the event loop: account (404), bearer header (401; env token 403), body (400 naming the
    field), a fresh cached instance config. Then one hop to the search pool for the rest:
    stored-token lookup (403), instance lookup on a cache miss (404), embed + index queries,
    serialising the response.
    """
    if account_id != app_state.settings.account_id:
        raise APIError(404, f"account {account_id!r} not found")
    principal, token_hash = bearer_principal(app_state.settings, authorization)
    if principal is not None:
        check_permission(principal, RUN, path)
    body = parse_search_body(raw, content_type)
    config = app_state.instance_cache.peek(instance_id)
    # everything blocking is one hop to the search pool
    return await run_search_pool(app_state.search_pool, _search_payload, app_state, principal, token_hash, path,
                                 instance_id, config, body)


def parse_search_body(raw: bytes, content_type: str | None) -> SearchRequest | APIError:
    """Validate a ``/search`` body once, straight from bytes; the 400 (returned, not raised) names the field.

    Returned rather than raised so a stored token's 403 still wins over a bad body, as with FastAPI's
    dependencies (auth) running before body validation.
    """
    if not raw:
        return APIError(400, "body: field required")
    if content_type and not _is_json(content_type):
        try:  # what FastAPI did with a non-JSON body: validate the bytes (and fail naming the body)
            return SearchRequest.model_validate(raw)
        except ValidationError as exc:
            return APIError(400, validation_message(list(exc.errors())))
    try:
        return SearchRequest.model_validate_json(raw)
    except ValidationError as exc:
        return APIError(400, validation_message(list(exc.errors())))


def _is_json(content_type: str) -> bool:
    mime = content_type.partition(";")[0].strip().lower()
    main, _, sub = mime.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def _search_payload(app_state: Any, principal: Principal | None, token_hash: str, path: str, instance_id: str,
                    config: InstanceConfig | None, body: SearchRequest | APIError) -> bytes:
    """The blocking rest of :func:`instance_search` (on the search pool); returns the response body."""
    if principal is None:
        principal = check_permission(stored_principal(app_state.state.token_by_hash(token_hash)), RUN, path)
    if isinstance(body, APIError):
        raise body
    if config is None:
        config = app_state.instance_cache.get(app_state.state, instance_id)
    query, hits = execute(app_state.service, principal, instance_id, plan_search(config, body))
    # Already plain JSON types: serialise once with orjson instead of FastAPI's recursive encoder.
    return orjson.dumps(envelope(search_result(query, hits)))


CACHE_HEADER = "cf-aig-cache-status"


def similarity_cache(service: Any) -> SimilarityCache:
    """The similarity cache (in the state database: shared by every API process)."""
    return SimilarityCache(service.state)


def _cache_settings(config: InstanceConfig, body: SearchRequest) -> tuple[bool, str]:
    enabled, threshold = config.cache, config.cache_threshold
    opt = body.ai_search_options.cache if body.ai_search_options else None
    if opt is not None:
        enabled = opt.enabled if opt.enabled is not None else enabled
        threshold = opt.cache_threshold or threshold
    try:
        return enabled, threshold_name(threshold)
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


@router.post("/ai-search/instances/{instance_id}/ai-search", response_model=None)
def instance_ai_search(
    _: AccountDep, principal: RunDep, state: StateDep, service: ServiceDep, instance_id: str, body: SearchRequest
) -> dict[str, Any] | StreamingResponse | JSONResponse:
    _row, config = load_instance(state, instance_id)
    plan = plan_search(config, body)
    system_prompt = body.system_prompt or config.system_prompt_ai_search
    use_cache, threshold = _cache_settings(config, body)
    use_cache = use_cache and not body.stream
    cache = similarity_cache(service) if use_cache else None
    signature = ""
    if cache is not None:
        signature = SimilarityCache.signature({
            "plan": {k: v for k, v in asdict(plan).items() if k not in ("config", "query")},
            "model": body.model, "system_prompt": system_prompt, "tenant": principal.folder_prefix,
            "generation": [config.ai_search_base_url, config.ai_search_model],
        })
        hit = cache.lookup(instance_id, plan.query, signature=signature, threshold=threshold,
                           current=lambda item_id: _content_hash(state, item_id))
        if hit is not None:
            return JSONResponse(envelope(hit.response), headers={CACHE_HEADER: "HIT"})
    query, hits = execute(service, principal, instance_id, plan)
    result = search_result(query, hits)
    gen = generator_for(service, config, model=body.model) if hits else None
    if body.stream:
        return StreamingResponse(_sse(result, query, hits, gen, system_prompt, service), media_type="text/event-stream",
                                 headers={CACHE_HEADER: "MISS"})
    if gen is None:
        result["response"] = extractive_answer(query, hits, similarity=embedding_similarity(service.embedder, query))
    else:
        try:
            result["response"] = gen.answer(query, hits, system_prompt=system_prompt)
        except AnswerError as exc:
            raise APIError(502, f"model: {exc}") from None
        finally:
            gen.close()
    if cache is not None and hits:
        cited = {h.item_id: _content_hash(state, h.item_id) for h in hits}
        cache.store(instance_id, plan.query, result, signature=signature, items=cited)
    return JSONResponse(envelope(result), headers={CACHE_HEADER: "MISS"})


def _content_hash(state: Any, item_id: str) -> str | None:
    """An item's current content hash (None when it is gone or not indexed)."""
    item = state.get_item_by_id(item_id)
    if item is None or item.get("status") not in ("indexed", "fetched"):
        return None
    return item.get("content_hash") or f"indexed@{item.get('indexed_at')}"


def _sse(result: dict[str, Any], query: str, hits: list[SearchHit], gen: Generator | None,
         system_prompt: str | None, service: Any) -> Iterator[str]:
    """The streamed answer: results first, then answer pieces, then ``[DONE]``."""
    yield _event({"search_query": result["search_query"], "data": result["data"]})
    try:
        if gen is None:
            for piece in extractive_parts(query, hits, similarity=embedding_similarity(service.embedder, query)):
                yield _event({"response": piece})
        else:
            for token in gen.stream(gen.answer_messages(query, hits, system_prompt=system_prompt)):
                yield _event({"response": token})
            yield _event({"response": "\n\n" + sources_block(hits)})
    except AnswerError as exc:
        logger.warning("streamed generation failed: %s", exc)
        yield _event({"error": f"model: {exc}"})
    finally:
        if gen is not None:
            gen.close()
    yield "data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# --- legacy AutoRAG aliases -----------------------------------------------------------------
@router.post("/autorag/rags/{instance_id}/search", tags=["legacy"], response_model=None, openapi_extra=SEARCH_OPENAPI)
async def legacy_search(request: Request, account_id: str, instance_id: str) -> Response:
    return await instance_search(request, account_id, instance_id)


@router.post("/autorag/rags/{instance_id}/ai-search", tags=["legacy"], response_model=None)
def legacy_ai_search(
    _: AccountDep, principal: RunDep, state: StateDep, service: ServiceDep, instance_id: str, body: SearchRequest
) -> dict[str, Any] | StreamingResponse | JSONResponse:
    return instance_ai_search(_, principal, state, service, instance_id, body)


@router.patch("/autorag/rags/{instance_id}/sync", tags=["legacy"])
def legacy_sync(_: AccountDep, __: EditDep, state: StateDep, runner: RunnerDep, instance_id: str) -> dict[str, Any]:
    return envelope(job_public(start_sync(state, runner, instance_id)))
