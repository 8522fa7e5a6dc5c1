"""NLWeb's ``/ask``: natural-language questions over one instance, as a list, a summary or an answer.

Follows the NLWeb REST protocol (github.com/nlweb-ai/NLWeb, ``docs/RestAPI.md``):

* parameters ``query`` (required), ``site``, ``prev``, ``decontextualized_query``,
  ``query_id``, ``mode`` (``list`` | ``summarize`` | ``generate``) and ``streaming``
  (default true: Server-Sent Events, one JSON message per ``data:`` line);
* each result has ``url``, ``name``, ``site``, ``score``, ``description`` and ``schema_object``;
* streamed messages carry a ``message_type``: ``begin-nlweb-response``,
  ``decontextualized_query``, ``result_batch``, ``summary`` (summarize), ``nlws``
  (generate: ``answer`` + ``items``), ``error`` and, last, ``complete``; the
  non-streaming JSON folds them the way NLWeb does (``results`` list plus one key per
  other message type).

``site`` names an instance (its id, or the host of its source); without one the
configured ``nlweb_default_instance`` answers, or the only instance if there is one.
Tokens need ``AI Search:Run``; folder-restricted tokens only see their folder.
Retrieval and answers are those of ``/search`` and ``/ai-search`` (one place for each):
the instance's retrieval, reranking and query-rewrite settings apply, and
``summarize``/``generate`` use the configured generation model, or the extractive
answer when there is none.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.answer import AnswerError, embedding_similarity, extractive_answer
from indexer.config import Settings
from indexer.instance import InstanceConfig
from indexer.search import SearchHit
from indexer.state import StateStore
from server.auth import Principal, RunDep
from server.deps import ServiceDep, SettingsDep, StateDep, load_instance
from server.errors import APIError, validation_message
from server.routes.search import execute, generator_for, plan_search
from server.schemas import SearchRequest, iso

logger = logging.getLogger(__name__)

router = APIRouter(tags=["nlweb"])

Mode = Literal["list", "summarize", "generate"]
MAX_QUERY_CHARS = 10_000  # as /search's query
SNIPPET_CHARS = 300  # characters of the best chunk shown as a result's description
CHUNKS_PER_RESULT = 3  # chunks retrieved per wanted page, before grouping chunks by page
_WORD = re.compile(r"\w+")
# Words that make a follow-up question lean on the previous one ("how long is it?").
_ANAPHORA = frozenset(
    "it its it's this that these those they them their there he she his her him such same one ones".split()
)


class AskParams(BaseModel):
    """The parameters of ``/ask`` (query string for GET, JSON body for POST)."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(max_length=MAX_QUERY_CHARS, description="The question, in natural language.")
    site: str | None = Field(
        default=None, max_length=300,
        description="Instance id (or the host of its source); default: the configured default instance.",
    )
    prev: str | list[str] | None = Field(
        default=None, description="Earlier questions of the conversation: a list, a JSON list or comma-separated."
    )
    decontextualized_query: str | None = Field(
        default=None, max_length=MAX_QUERY_CHARS, description="The question already made self-contained by the caller."
    )
    query_id: str | None = Field(default=None, max_length=200, description="Echoed back; generated if absent.")
    mode: Mode = Field(default="list", description="list: ranked results; summarize: plus a summary; generate: an answer.")
    generate_mode: Mode | None = Field(default=None, description="Alias of mode used by some NLWeb clients.")
    streaming: bool = Field(default=True, description="true: Server-Sent Events; false: one JSON object.")
    max_results: int | None = Field(default=None, ge=1, le=50, description="Results wanted; default: the instance's max_num_results.")

    @property
    def effective_mode(self) -> Mode:
        return self.generate_mode if self.generate_mode and self.mode == "list" else self.mode

    def previous(self) -> list[str]:
        """``prev`` as a list of earlier questions, oldest first."""
        if self.prev is None:
            return []
        if isinstance(self.prev, list):
            return [p.strip() for p in self.prev if p and p.strip()]
        text = self.prev.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, list):
                return [str(p).strip() for p in value if str(p).strip()]
        return [p.strip() for p in text.split(",") if p.strip()]


class AskQuery(AskParams):
    """``/ask`` parameters in a query string: ``prev`` is one string (JSON list or comma-separated)."""

    prev: str | None = Field(
        default=None, max_length=100_000, description="Earlier questions: a JSON list or comma-separated."
    )


class NLWebResult(BaseModel):
    url: str
    name: str
    site: str
    score: float
    description: str
    schema_object: dict[str, Any]


class AskResponse(BaseModel):
    """The non-streaming answer (``streaming=false``)."""

    query_id: str
    query: str
    decontextualized_query: str
    site: str
    mode: Mode
    results: list[NLWebResult]
    summary: dict[str, Any] | None = Field(default=None, description="mode=summarize: {message}")
    nlws: dict[str, Any] | None = Field(default=None, description="mode=generate: {answer, items}")


@dataclass
class AskPlan:
    """A validated request: which instance, which retrieval query, how many results."""

    instance_id: str
    config: InstanceConfig
    principal: Principal
    query: str
    search_query: str
    mode: Mode
    max_results: int
    query_id: str
    request: SearchRequest  # the /search request this ask runs
    hits: list[SearchHit] = field(default_factory=list)


# --- planning ------------------------------------------------------------------------------
def resolve_site(state: StateStore, settings: Settings, site: str | None) -> str:
    """The instance id ``site`` names (id or source host), or the default instance.

    Raises:
        APIError: 400 when no site is named and there is no default; 404 for an unknown site.
    """
    name = (site or "").strip()
    if not name or name.lower() == "all":
        if settings.nlweb_default_instance:
            return settings.nlweb_default_instance
        rows = state.list_instances()
        if len(rows) == 1:
            return rows[0]["id"]
        raise APIError(400, "site: name an instance (no default instance is configured: set SITESEARCH_NLWEB_DEFAULT_INSTANCE)")
    if state.get_instance(name) is not None:
        return name
    host = _host(name)
    if host:
        for row in state.list_instances():
            if _host(row.get("source") or "") == host:
                return row["id"]
    raise APIError(404, f"site: no instance named {name!r}")


def _host(text: str) -> str:
    """The host of a URL or bare domain, lowercased, without ``www.`` ('' if there is none)."""
    try:
        host = urlsplit(text if "//" in text else f"//{text}").hostname or ""
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        return ""
    return host.lower().removeprefix("www.")


def decontextualize(query: str, previous: list[str]) -> str:
    """Make a follow-up question self-contained without a language model.

    A short question (under four words) or one leaning on a pronoun ("how long is
    it?") is searched together with the last earlier question; others stand alone.
    """
    if not previous:
        return query
    words = [w.lower() for w in _WORD.findall(query)]
    if len(words) < 4 or any(w in _ANAPHORA for w in words):
        room = max(0, MAX_QUERY_CHARS - len(query) - 1)
        return f"{previous[-1][:room]} {query}".strip()
    return query


def plan_ask(state: StateStore, settings: Settings, principal: Principal, params: AskParams) -> AskPlan:
    """Validate ``params`` against the instance; raises APIError (4xx) on bad input."""
    instance_id = resolve_site(state, settings, params.site)
    _row, config = load_instance(state, instance_id)
    query = params.query.strip()
    if not query:
        raise APIError(400, "query: must not be blank")
    search_query = (params.decontextualized_query or "").strip() or decontextualize(query, params.previous())
    max_results = params.max_results or config.max_num_results
    try:  # a few chunks per wanted page, since nlweb_results keeps one per page
        request = SearchRequest(query=search_query, max_num_results=min(50, max_results * CHUNKS_PER_RESULT))
    except ValidationError as exc:
        raise APIError(400, validation_message(list(exc.errors()))) from None
    return AskPlan(
        instance_id=instance_id,
        config=config,
        principal=principal,
        query=query,
        search_query=search_query,
        mode=params.effective_mode,
        max_results=max_results,
        query_id=params.query_id or uuid.uuid4().hex,
        request=request,
    )


def retrieve(service: Any, plan: AskPlan) -> list[SearchHit]:
    """Search as ``/search`` does (instance settings, token folder); chunks best first, also on ``plan.hits``."""
    _searched, plan.hits = execute(service, plan.principal, plan.instance_id, plan_search(plan.config, plan.request))
    return plan.hits


# --- shaping -------------------------------------------------------------------------------
def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The first ``limit`` characters of a chunk, cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def nlweb_results(hits: list[SearchHit], site: str, limit: int) -> list[dict[str, Any]]:
    """One NLWeb result per page (its best chunk), best first, at most ``limit``."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for hit in hits:
        if hit.filename in seen:
            continue
        seen.add(hit.filename)
        name = hit.title or hit.filename
        description = snippet(hit.text)
        schema: dict[str, Any] = {"@type": "WebPage", "url": hit.filename, "name": name, "description": description}
        if hit.timestamp:  # epoch milliseconds, as Cloudflare's modified_date
            schema["dateModified"] = iso(hit.timestamp / 1000 if hit.timestamp > 10**11 else hit.timestamp)
        out.append(
            {"url": hit.filename, "name": name, "site": site, "score": hit.score, "description": description,
             "schema_object": schema}
        )
        if len(out) >= limit:
            break
    return out


def answer_text(service: Any, plan: AskPlan, hits: list[SearchHit]) -> str:
    """The answer of ``summarize``/``generate``, as ``/ai-search`` gives it (model, else extractive).

    Raises:
        APIError: 502 when the configured generation model fails.
    """
    gen = generator_for(service, plan.config) if hits else None
    if gen is None:
        return extractive_answer(plan.search_query, hits, similarity=embedding_similarity(service.embedder, plan.search_query))
    try:
        return gen.answer(plan.search_query, hits, system_prompt=plan.config.system_prompt_ai_search)
    except AnswerError as exc:
        raise APIError(502, f"model: {exc}") from None
    finally:
        gen.close()


def ask_messages(service: Any, plan: AskPlan) -> Iterator[dict[str, Any]]:
    """The NLWeb messages of one ask, in order (search runs when the first result is wanted)."""
    yield {"message_type": "begin-nlweb-response", "query": plan.query, "site": plan.instance_id}
    if plan.search_query != plan.query:
        yield {"message_type": "decontextualized_query", "decontextualized_query": plan.search_query}
    hits = retrieve(service, plan)
    results = nlweb_results(hits, plan.instance_id, plan.max_results)
    yield {"message_type": "result_batch", "results": results}
    if plan.mode == "summarize":
        yield {"message_type": "summary", "message": answer_text(service, plan, hits)}
    elif plan.mode == "generate":
        yield {"message_type": "nlws", "answer": answer_text(service, plan, hits), "items": results}


def collect(service: Any, plan: AskPlan) -> dict[str, Any]:
    """The non-streaming response: NLWeb's fold of the messages into one object."""
    body: dict[str, Any] = {
        "query_id": plan.query_id,
        "query": plan.query,
        "decontextualized_query": plan.search_query,
        "site": plan.instance_id,
        "mode": plan.mode,
        "results": [],
    }
    for message in ask_messages(service, plan):
        kind = message["message_type"]
        if kind == "result_batch":
            body["results"].extend(message["results"])
        elif kind in ("summary", "nlws"):
            body[kind] = {k: v for k, v in message.items() if k != "message_type"}
    return body


def sse_stream(service: Any, plan: AskPlan) -> Iterator[bytes]:
    """Server-Sent Events: one ``data:`` line per message, ``complete`` last, errors as ``error``."""

    def event(message: dict[str, Any]) -> bytes:
        return f"data: {json.dumps({**message, 'query_id': plan.query_id}, ensure_ascii=False)}\n\n".encode()

    try:
        for message in ask_messages(service, plan):
            yield event(message)
    except APIError as exc:
        yield event({"message_type": "error", "message": exc.message})
    except Exception:  # noqa: BLE001 - the stream has started: report, never a traceback
        logger.exception("NLWeb /ask failed for %s", plan.instance_id)
        yield event({"message_type": "error", "message": "internal error; see the server log"})
    yield event({"message_type": "complete"})


def respond(service: Any, state: StateStore, settings: Settings, principal: Principal, params: AskParams) -> Any:
    plan = plan_ask(state, settings, principal, params)
    if params.streaming:
        return StreamingResponse(
            sse_stream(service, plan),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return JSONResponse(collect(service, plan))


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": AskResponse,
        "description": "JSON when streaming=false; otherwise Server-Sent Events of NLWeb messages.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/ask", responses=_RESPONSES, response_model=None)
def ask_get(
    principal: RunDep, state: StateDep, settings: SettingsDep, service: ServiceDep, params: Annotated[AskQuery, Query()]
) -> Any:
    """Ask a question (NLWeb protocol); parameters in the query string."""
    return respond(service, state, settings, principal, params)


@router.post("/ask", responses=_RESPONSES, response_model=None)
def ask_post(principal: RunDep, state: StateDep, settings: SettingsDep, service: ServiceDep, params: AskParams) -> Any:
    """Ask a question (NLWeb protocol); parameters as a JSON body."""
    return respond(service, state, settings, principal, params)
