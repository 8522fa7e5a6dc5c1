"""Request and response models of the HTTP API (Cloudflare AI Search shapes)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexer.boost import MAX_BOOSTS
from indexer.instance import BoostBy
from indexer.search import MAX_CONTEXT_EXPANSION, SearchHit


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class Message(_Body):
    role: str
    content: str


class RankingOptions(_Body):
    score_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class RerankingOptions(_Body):
    enabled: bool | None = None  # None: the instance's setting
    model: str | None = None
    match_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class RetrievalOptions(_Body):
    retrieval_type: Literal["vector", "keyword", "hybrid"] | None = None
    max_num_results: int | None = Field(default=None, ge=1, le=50)
    match_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    filters: dict[str, Any] | None = None
    fusion_method: Literal["rrf", "max"] | None = None
    keyword_match_mode: Literal["and", "or"] | None = None
    boost_by: list[BoostBy] | None = Field(default=None, max_length=MAX_BOOSTS)  # None: the instance's; []: none
    # neighbouring chunks added around each result (per side); true means 1
    context_expansion: int | None = Field(default=None, ge=0, le=MAX_CONTEXT_EXPANSION)


class QueryRewriteOptions(_Body):
    enabled: bool = False
    model: str | None = None
    rewrite_prompt: str | None = None


class CacheOptions(_Body):
    enabled: bool | None = None
    cache_threshold: str | None = None


class AISearchOptions(_Body):
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)
    reranking: RerankingOptions | None = None
    query_rewrite: QueryRewriteOptions | None = None
    cache: CacheOptions | None = None


class SearchRequest(_Body):
    """Body of ``/search`` and ``/ai-search``: the seeds' flat form or the nested ``ai_search_options``."""

    query: str | None = Field(default=None, max_length=10_000)
    messages: list[Message] | None = None
    rewrite_query: bool = False
    max_num_results: int | None = Field(default=None, ge=1, le=50)
    match_threshold: float | None = Field(default=None, ge=0, le=1)  # the seeds' flat per-request name
    ranking_options: RankingOptions | None = None
    reranking: RerankingOptions | bool | None = None
    filters: dict[str, Any] | None = None
    stream: bool = False
    model: str | None = None
    system_prompt: str | None = None
    ai_search_options: AISearchOptions | None = None

    @model_validator(mode="after")
    def _has_query(self) -> SearchRequest:
        if not self.effective_query:
            raise ValueError("query: send a non-empty 'query' or 'messages' with a user message")
        return self

    @property
    def effective_query(self) -> str:
        """``query``, else the content of the last user message."""
        if self.query and self.query.strip():
            return self.query.strip()
        for msg in reversed(self.messages or []):
            if msg.role == "user" and msg.content.strip():
                return msg.content.strip()
        return ""

    def resolved(self, *, default_max: int, default_threshold: float) -> tuple[int, float, dict[str, Any] | None]:
        """``(max_num_results, score_threshold, filters)``, nested options winning over flat ones."""
        max_n = self.max_num_results or default_max
        threshold = default_threshold if self.match_threshold is None else self.match_threshold
        if self.ranking_options and self.ranking_options.score_threshold is not None:
            threshold = self.ranking_options.score_threshold
        filters = self.filters
        if self.ai_search_options:
            r = self.ai_search_options.retrieval
            max_n = r.max_num_results or max_n
            threshold = r.match_threshold if r.match_threshold is not None else threshold
            filters = r.filters if r.filters is not None else filters
        return max_n, threshold, filters


def hit_public(hit: SearchHit) -> dict[str, Any]:
    """One ``data`` entry of a search response."""
    file: dict[str, Any] = {**hit.custom, "url": hit.filename, "title": hit.title}
    if hit.context:
        file["context"] = hit.context
    return {
        "file_id": hit.item_id,
        "filename": hit.filename,
        "score": hit.score,
        "attributes": {
            "modified_date": hit.timestamp,
            "timestamp": hit.timestamp,
            "folder": hit.folder,
            "file": file,
        },
        "content": [  # with context_expansion, the neighbouring chunks around the hit, in page order
            {"id": cid, "type": "text", "text": text}
            for cid, text in (*hit.before, (hit.chunk_id, hit.text), *hit.after)
        ],
    }


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def job_public(job: dict[str, Any]) -> dict[str, Any]:
    from indexer.state import JOB_COUNTERS

    return {
        "id": job["id"],
        "instance_id": job["instance_id"],
        "source": job["source"],
        "status": job["status"],
        "created_at": iso(job["created_at"]),
        "started_at": iso(job.get("started_at")),
        "ended_at": iso(job.get("ended_at")),
        "end_reason": job.get("end_reason"),
        "counters": {k: job.get(k, 0) for k in JOB_COUNTERS},
    }


def item_public(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": item["id"],
        "key": item["key"],
        "status": item["status"],
        "error": item.get("error"),
        "http_status": item.get("http_status"),
        "title": item.get("title"),
        "folder": item.get("folder"),
        "chunks": item.get("chunks", 0),
        "priority": item.get("priority"),
        "lastmod": item.get("lastmod"),
        "changefreq": item.get("changefreq"),
        "fetched_at": iso(item.get("fetched_at")),
        "indexed_at": iso(item.get("indexed_at")),
    }


#: What a caller who may not read secrets sees instead of a crawl header value (docs/api.md).
SECRET_MASK = "********"
#: Where an instance config keeps its secret-valued map: the crawler's custom request headers.
SECRET_HEADERS_PATH = ("source_params", "web_crawler", "parse_options", "include_headers")


def secret_headers(config: Any) -> dict[str, Any] | None:
    """The ``include_headers`` map of an instance config or body (None when it has none)."""
    for key in SECRET_HEADERS_PATH:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config if isinstance(config, dict) else None


def mask_secrets(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every ``include_headers`` value replaced by :data:`SECRET_MASK` (names kept)."""
    headers = secret_headers(config)
    if not headers:
        return config
    return _replace_at(config, SECRET_HEADERS_PATH, {name: SECRET_MASK for name in headers})


def _replace_at(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``path`` (the path exists; nothing is changed in place)."""
    head, *rest = path
    return {**data, head: _replace_at(data[head], tuple(rest), value) if rest else value}


def instance_public(row: dict[str, Any], *, reveal_secrets: bool = False) -> dict[str, Any]:
    """An instance as the API shows it; crawl header values masked unless ``reveal_secrets``.

    Args:
        row: a stored instance row.
        reveal_secrets: the caller may read secrets (:func:`server.auth.may_read_secrets`).
    """
    return {
        **(row["config"] if reveal_secrets else mask_secrets(row["config"])),
        "id": row["id"],
        "type": row["type"],
        "source": row["source"],
        "created_at": iso(row["created_at"]),
        "modified_at": iso(row["modified_at"]),
    }
