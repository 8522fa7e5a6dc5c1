"""An instance's configuration: the typed shape of Cloudflare's create-instance body.

Field names follow the seeds and ``shared/CLOUDFLARE_API.md`` so a Cloudflare AI
Search user's request bodies work unchanged.  The crawler, the indexer and the
API all read an instance's options through :class:`InstanceConfig`.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from indexer.boost import resolve_boosts
from indexer.chunker import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_OVERLAP,
    MIN_CHUNK_SIZE,
)
from indexer.pathfilter import validate_patterns

INSTANCE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 7230 token
MAX_HEADERS = 5
MAX_SITEMAPS = 5
MAX_PATTERNS = 10
MAX_CONTENT_SELECTORS = 10  # content_selector rules (our bound; Cloudflare documents none)
MAX_SELECTOR_LENGTH = 1000
SYNC_INTERVALS = (3600, 7200, 14400, 21600, 43200, 86400)  # seconds, as in Cloudflare's API
DEFAULT_SYNC_INTERVAL = 21600  # 6 hours
DEFAULT_EMBEDDING_MODEL = "sitesearch/all-MiniLM-L6-v2-onnx"


class _Model(BaseModel):
    # hide_input_in_errors: a ValidationError's text (logged by the scheduler, in tracebacks) would
    # otherwise quote the input, crawl header values included (docs/api.md, "Secrets")
    model_config = ConfigDict(extra="allow", populate_by_name=True, hide_input_in_errors=True)


class DiscoverOptions(_Model):
    """Link discovery (``parse_type: "discover"``, or the fallback when a site has no sitemap)."""

    source: Literal["all", "sitemaps", "links"] = "all"
    depth: int = Field(default=5, ge=0, le=20)
    limit: int = Field(default=100_000, ge=1, le=100_000)
    max_age: int | None = Field(default=None, ge=0, le=604_800)
    include_external_links: bool = False
    include_subdomains: bool = False


class ContentSelector(_Model):
    """One ``content_selector`` rule: pages whose URL matches ``path`` (a path-filter glob) are
    indexed from the elements ``selector`` (CSS) matches; the first matching rule wins."""

    path: str
    selector: str

    # Checked on client input only: a stored config loads as it was accepted (these fields were
    # stored unchecked before they were applied).
    @field_validator("path")
    @classmethod
    def _glob(cls, v: str, info: ValidationInfo) -> str:
        if (info.context or {}).get(CLIENT_INPUT):
            try:  # not blank, ≤ MAX_PATTERN_LENGTH, no control characters
                validate_patterns([v], field="path")
            except ValueError as exc:
                raise ValueError(str(exc).removeprefix("path[0]: ")) from None
        return v

    @field_validator("selector")
    @classmethod
    def _css(cls, v: str, info: ValidationInfo) -> str:
        if (info.context or {}).get(CLIENT_INPUT):
            from cssselect import SelectorError
            from lxml.cssselect import CSSSelector

            if not v.strip() or len(v) > MAX_SELECTOR_LENGTH:
                raise ValueError(f"a CSS selector of 1 to {MAX_SELECTOR_LENGTH} characters")
            try:
                CSSSelector(v, translator="html")
            except SelectorError as exc:
                raise ValueError(f"not a CSS selector lxml can use: {v!r} ({exc})") from None
        return v


class ParseOptions(_Model):
    specific_sitemaps: list[str] = Field(default_factory=list)
    include_headers: dict[str, str] = Field(default_factory=dict)
    use_browser_rendering: bool = False
    content_selector: list[ContentSelector] = Field(default_factory=list)
    include_images: bool = False  # keep images as ![alt](src): their alt text is indexed (no vision model)
    # our extension: obey noindex/nofollow in robots <meta> tags and X-Robots-Tag (indexer/robots_meta.py)
    respect_robots_meta: bool = True

    @field_validator("content_selector")
    @classmethod
    def _selectors(cls, v: list[ContentSelector], info: ValidationInfo) -> list[ContentSelector]:
        if (info.context or {}).get(CLIENT_INPUT) and len(v) > MAX_CONTENT_SELECTORS:
            raise ValueError(f"at most {MAX_CONTENT_SELECTORS} rules (got {len(v)})")
        return v

    @field_validator("specific_sitemaps")
    @classmethod
    def _sitemaps(cls, v: list[str]) -> list[str]:
        if len(v) > MAX_SITEMAPS:
            raise ValueError(f"at most {MAX_SITEMAPS} sitemaps (got {len(v)})")
        for url in v:
            if not isinstance(url, str) or not url.strip():
                raise ValueError("sitemap URLs must be non-empty strings")
        return [u.strip() for u in v]

    @field_validator("include_headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_HEADERS:
            raise ValueError(f"at most {MAX_HEADERS} headers (got {len(v)})")
        for name, value in v.items():
            if not HEADER_NAME_RE.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if not isinstance(value, str) or "\r" in value or "\n" in value or "\0" in value:
                raise ValueError(f"invalid value for header {name!r} (no CR, LF or NUL)")
        return v


def _rename(data: Any, alias: str, name: str) -> Any:
    """``data`` with ``alias`` renamed to ``name`` (``name`` wins when both are given)."""
    if not isinstance(data, dict) or alias not in data:
        return data
    out = {k: v for k, v in data.items() if k != alias}
    out.setdefault(name, data[alias])
    return out


def canonical_names(body: Any) -> Any:
    """An instance body (or a PATCH of one) with Cloudflare's alias field names renamed.

    ``score_threshold`` → ``match_threshold``, ``source_params.web_crawler.crawl_options`` →
    ``discover_options``.  A PATCH must be renamed before it is merged into the stored
    config, which already holds the canonical names: merged as sent, the alias would lose.
    """
    body = _rename(body, "score_threshold", "match_threshold")
    if isinstance(body, dict) and isinstance(body.get("source_params"), dict):
        params = body["source_params"]
        if isinstance(params.get("web_crawler"), dict):
            crawler = _rename(params["web_crawler"], "crawl_options", "discover_options")
            body = {**body, "source_params": {**params, "web_crawler": crawler}}
    return body


class WebCrawler(_Model):
    parse_type: Literal["sitemap", "discover", "crawl", "feed-rss"] = "sitemap"
    parse_options: ParseOptions = Field(default_factory=ParseOptions)
    discover_options: DiscoverOptions = Field(default_factory=DiscoverOptions)

    @model_validator(mode="before")
    @classmethod
    def _crawl_options_alias(cls, data: Any) -> Any:
        return _rename(data, "crawl_options", "discover_options")


class SourceParams(_Model):
    include_items: list[str] = Field(default_factory=list)
    exclude_items: list[str] = Field(default_factory=list)
    prefix: str | None = None
    web_crawler: WebCrawler = Field(default_factory=WebCrawler)

    @field_validator("include_items", "exclude_items")
    @classmethod
    def _patterns(cls, v: list[str], info: Any) -> list[str]:
        return validate_patterns(v, field=f"source_params.{info.field_name}")


#: Similarity-cache thresholds: the seeds' names → Cloudflare API names (stored).
CACHE_THRESHOLDS = {
    "exact": "super_strict_match",
    "strong": "close_enough",
    "broad": "flexible_friend",
    "loose": "anything_goes",
}
RESERVED_METADATA = ("folder", "filename", "timestamp", "context")
INDEX_KEYS = ("item_id", "chunk")  # stored on every chunk by the indexer


class IndexMethod(_Model):
    """Which indexes retrieval uses (hybrid when both)."""

    vector: bool = True
    keyword: bool = False

    @model_validator(mode="after")
    def _one(self) -> IndexMethod:
        if not (self.vector or self.keyword):
            raise ValueError("at least one of vector and keyword must be true")
        return self


class IndexingOptions(_Model):
    keyword_tokenizer: Literal["porter", "trigram"] = "porter"


#: Validation context key: the body comes from a client (create, PATCH), not from storage.
CLIENT_INPUT = "client_input"


class BoostBy(_Model):
    """One ``boost_by`` entry; ``direction`` None = the field type's default (:mod:`indexer.boost`)."""

    field: str = Field(min_length=1, max_length=64)
    direction: Literal["asc", "desc", "exists", "not_exists"] | None = None


class RetrievalOptionsConfig(_Model):
    keyword_match_mode: Literal["and", "or"] = "or"  # "or" won the retrieval benchmark (docs/search-quality.md)
    # at most MAX_BOOSTS from clients (InstanceConfig._boost_by); 5 accepted before, so stored configs may hold 5
    boost_by: list[BoostBy] = Field(default_factory=list, max_length=5)


class CustomMetadataField(_Model):
    field_name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    data_type: Literal["text", "number", "boolean", "datetime"] = "text"

    @field_validator("field_name")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        if v in RESERVED_METADATA:
            raise ValueError(f"{v!r} is built-in metadata; choose another name")
        return v


class InstanceConfig(_Model):
    """Everything configurable on an instance (defaults as documented)."""

    id: str
    type: Literal["web-crawler", "r2"] = "r2"
    source: str | None = None
    source_params: SourceParams = Field(default_factory=SourceParams)
    # indexing
    chunk: bool = True
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=MIN_CHUNK_SIZE, le=512)
    chunk_overlap: int = Field(default=DEFAULT_CHUNK_OVERLAP, ge=0, le=MAX_CHUNK_OVERLAP)
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    # retrieval
    max_num_results: int = Field(default=10, ge=1, le=50)
    match_threshold: float = Field(default=0.0, ge=0.0, le=1.0)
    index_method: IndexMethod = Field(default_factory=IndexMethod)
    fusion_method: Literal["rrf", "max"] = "rrf"  # how keyword and vector results merge (hybrid)
    indexing_options: IndexingOptions = Field(default_factory=IndexingOptions)
    custom_metadata: list[CustomMetadataField] = Field(default_factory=list, max_length=10)
    retrieval_options: RetrievalOptionsConfig = Field(default_factory=RetrievalOptionsConfig)  # after custom_metadata
    # query rewriting (seeds: "Query rewriting"); model None = the server's configured generation endpoint
    rewrite_query: bool = False
    rewrite_model: str | None = Field(default=None, max_length=256)
    system_prompt_rewrite_query: str | None = Field(default=None, max_length=20_000)
    # reranking (seeds: "Reranking")
    reranking: bool = False
    reranking_model: str | None = Field(default=None, max_length=256)
    # generation (seeds: "Models", "System prompt")
    ai_search_model: str | None = Field(default=None, max_length=256)
    # OpenAI-compatible endpoint for this instance (default: the server's SITESEARCH_GENERATION_BASE_URL);
    # the API key is read from the named environment variable, which must start with SITESEARCH_GENERATION_
    ai_search_base_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://")
    ai_search_api_key_env: str | None = Field(default=None, max_length=128, pattern=r"^SITESEARCH_GENERATION_[A-Z0-9_]*$")
    system_prompt_ai_search: str | None = Field(default=None, max_length=20_000)
    # similarity cache (seeds: "Similarity cache"); default on, "strong"
    cache: bool = True
    cache_threshold: Literal["super_strict_match", "close_enough", "flexible_friend", "anything_goes"] = "close_enough"
    # account wiring (accepted and stored; there is no AI Gateway or service token here)
    name: str | None = Field(default=None, max_length=64)
    ai_gateway_id: str | None = Field(default=None, max_length=256)
    token_id: str | None = Field(default=None, max_length=256)
    # sync
    sync_interval: int = DEFAULT_SYNC_INTERVAL
    sync_schedule: str | None = None
    paused: bool = False

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        data = _rename(data, "score_threshold", "match_threshold")
        if isinstance(data, dict) and isinstance(data.get("cache_threshold"), str):
            data = {**data, "cache_threshold": CACHE_THRESHOLDS.get(data["cache_threshold"], data["cache_threshold"])}
        return data

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not INSTANCE_ID_RE.match(v or ""):
            raise ValueError("must be 1-64 characters of lowercase letters, digits, '-' and '_', starting and ending with a letter or digit")
        return v

    @field_validator("custom_metadata")
    @classmethod
    def _distinct_fields(cls, v: list[CustomMetadataField], info: ValidationInfo) -> list[CustomMetadataField]:
        """Field names are matched case-insensitively (meta tags, headers, filters), so two that differ
        only in case would collide; ``item_id`` and ``chunk`` are the index's own keys."""
        if not (info.context or {}).get(CLIENT_INPUT):
            return v
        seen: set[str] = set()
        for i, f in enumerate(v):
            low = f.field_name.lower()
            if low in seen:
                raise ValueError(f"[{i}].field_name: {f.field_name!r} is already a field (names are case-insensitive)")
            if low in {*RESERVED_METADATA, *INDEX_KEYS}:
                raise ValueError(f"[{i}].field_name: {f.field_name!r} is built-in metadata; choose another name")
            seen.add(low)
        return v

    @field_validator("retrieval_options")
    @classmethod
    def _boost_by(cls, v: RetrievalOptionsConfig, info: ValidationInfo) -> RetrievalOptionsConfig:
        """``boost_by`` names ``timestamp`` or a ``custom_metadata`` field, asc/desc only on number/datetime."""
        if not (info.context or {}).get(CLIENT_INPUT):
            return v  # a stored config: checked when it was written (older rules were looser; search skips bad entries)
        schema = info.data.get("custom_metadata")
        if schema is not None and v.boost_by:  # None: custom_metadata failed and has its own error
            resolve_boosts(v.boost_by, [(f.field_name, f.data_type) for f in schema], where="retrieval_options.boost_by")
        return v

    @field_validator("sync_interval")
    @classmethod
    def _interval(cls, v: int) -> int:
        if v not in SYNC_INTERVALS:
            raise ValueError(f"must be one of {', '.join(map(str, SYNC_INTERVALS))} (seconds)")
        return v

    @field_validator("sync_schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        from croniter import croniter

        if len(v.split()) != 5 or not croniter.is_valid(v.strip()):
            raise ValueError(f"{v!r} is not a 5-field cron expression (minute hour day month weekday), e.g. '0 */6 * * *'")
        return v.strip()

    @model_validator(mode="after")
    def _name(self) -> InstanceConfig:
        if not self.name:
            self.name = self.id
        return self

    @model_validator(mode="after")
    def _source(self, info: ValidationInfo) -> InstanceConfig:
        if self.type == "web-crawler":
            if not self.source:
                raise ValueError("source: a web-crawler instance needs a domain or base URL")
            self.source = normalize_source(self.source, client_input=bool((info.context or {}).get(CLIENT_INPUT)))
        return self

    # --- derived -----------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """Scheme, host and port of the website (``https://example.com``)."""
        assert self.source is not None
        parts = urlsplit(self.source)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def host(self) -> str:
        """Hostname the crawl stays on."""
        assert self.source is not None
        return (urlsplit(self.source).hostname or "").lower()

    @property
    def parse_options(self) -> ParseOptions:
        return self.source_params.web_crawler.parse_options

    @property
    def indexing_signature(self) -> tuple[Any, ...]:
        """The options that decide what a stored page becomes in the index (extraction, chunking,
        custom metadata): when they change, stored pages are indexed again."""
        return (
            self.chunk_size,
            self.chunk_overlap,
            [f.model_dump() for f in self.custom_metadata],
            [r.model_dump() for r in self.parse_options.content_selector],
            self.parse_options.include_images,
            self.parse_options.respect_robots_meta,
        )


def normalize_source(source: str, *, client_input: bool = True) -> str:
    """Turn ``example.com`` or ``http://127.0.0.1:8000/docs`` into an absolute http(s) URL.

    Args:
        client_input: the value comes from a request (a URL with credentials is refused);
            False for a stored config, which loads as it was accepted.

    Raises:
        ValueError: when the value is not a domain or http(s) URL.
    """
    value = source.strip()
    if "://" not in value:
        value = "https://" + value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"source: {source!r} is not a domain or an http(s) URL")
    if any(c in value for c in " \t\r\n\0"):
        raise ValueError(f"source: {source!r} contains whitespace")
    if client_input and (parts.username is not None or parts.password is not None):  # stored ones still load
        # it would be stored and shown as the instance's source; credentials go in include_headers
        raise ValueError("source: a user name or password in the URL is not accepted; send credentials with "
                         "source_params.web_crawler.parse_options.include_headers (e.g. Authorization), whose values are kept secret")
    path = parts.path or "/"
    return f"{parts.scheme}://{parts.netloc.lower()}{path}"
