"""The one typed settings object for sitesearch.

Every process (API server, crawler, CLI) builds its configuration from
:class:`Settings`, read from ``SITESEARCH_*`` environment variables (or a
``.env`` file).  Components receive a ``Settings`` instance; they never read
``os.environ`` themselves.  Scrapy's UPPERCASE settings in
``crawler/settings.py`` are derived from this object.

Defaults are declared once, here, grouped by prefix, with units in comments.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer import __version__

#: Product token robots.txt groups are matched against (RFC 9309).
USER_AGENT_TOKEN = "sitesearch"
PROJECT_URL = "https://github.com/sitesearch/sitesearch"


class Settings(BaseSettings):
    """Service-wide settings; per-instance options live on the instance."""

    model_config = SettingsConfigDict(env_prefix="SITESEARCH_", env_file=".env", extra="ignore")

    # --- storage -------------------------------------------------------------
    data_dir: Path = Field(default=Path("data"), description="Root of all local state.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/state.db"
    )
    chroma_url: str | None = Field(
        default=None, description="http://host:port of a `chroma run` server; default embedded"
    )
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db shared by crawler workers (one frontier per job); default none"
    )

    # --- API -----------------------------------------------------------------
    api_token: str | None = Field(default=None, description="Bootstrap bearer token (all permissions)")
    account_id: str = "local"
    host: str = "127.0.0.1"
    port: int = 8787
    max_instances: int = 50
    nlweb_default_instance: str | None = Field(
        default=None, description="Instance NLWeb /ask and the MCP tools answer from when no site/instance is named"
    )

    # --- embeddings ------------------------------------------------------------
    model_dir: Path | None = Field(
        default=None, description="An ONNX model directory (model.onnx + tokenizer.json); default: built-in MiniLM"
    )
    embed_threads: int | None = None  # onnxruntime intra-op threads; None = all cores
    embed_batch_size: int = 32  # chunks per onnxruntime call

    # --- search ------------------------------------------------------------------
    search_threads: int | None = None  # /search calls running at once per API process (others queue); None = cores
    # /search reuses an instance's validated config for this long (0 = read it every request). A PATCH/DELETE
    # takes effect at once in the API process that served it, and within this many seconds in the others.
    instance_cache_seconds: float = Field(default=1.0, ge=0)
    # JSON request bodies (search, instances, jobs, tokens, NLWeb) over this many bytes get 413; uploads have their own limit
    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    rerank_model_dir: Path | None = Field(
        default=None,
        description="A cross-encoder for reranking: an ONNX directory (model.onnx + tokenizer.json) or a Hugging Face "
        "BertForSequenceClassification snapshot (config.json + model.safetensors + tokenizer.json), converted once",
    )
    generation_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint for /ai-search answers, e.g. http://127.0.0.1:11434/v1"
    )
    generation_model: str | None = None  # default chat model at that endpoint
    generation_api_key_env: str = "SITESEARCH_GENERATION_API_KEY"  # env var holding the endpoint's API key
    generation_timeout: float = 60.0  # seconds

    # --- crawling --------------------------------------------------------------
    concurrent_requests: int = 16  # whole crawler process
    concurrent_requests_per_host: int = 4
    download_delay: float = 0.0  # seconds between requests to one host (Crawl-delay overrides)
    download_timeout: float = 30.0  # seconds
    autothrottle: bool = True
    max_page_bytes: int = 4 * 1024 * 1024  # pages over this are skipped (bytes)
    max_pages_per_instance: int = 1_000_000
    frontier_batch: int = 500  # URLs moved from the on-disk frontier to Scrapy at a time
    render_context_pages: int = 200  # rendered crawls: pages per browser context before it is recycled

    # --- jobs ------------------------------------------------------------------
    index_poll_interval: float = 0.5  # seconds between looks at the pending-index queue
    sync_on_create: bool = True  # a new website instance starts its first sync at once (as Cloudflare)

    def generation_api_key(self, env_name: str | None = None) -> str | None:
        """The generation API key from ``env_name`` (default :attr:`generation_api_key_env`).

        Only variables named ``SITESEARCH_GENERATION_*`` are read, so an instance's
        configuration cannot send another secret to its endpoint.
        """
        name = env_name or self.generation_api_key_env
        if not name.startswith("SITESEARCH_GENERATION_"):
            return None
        return os.environ.get(name) or None

    @property
    def user_agent(self) -> str:
        """Full User-Agent header: product token, version and a URL (RFC 9309 §2.2.1)."""
        return f"{USER_AGENT_TOKEN}/{__version__} (+{PROJECT_URL})"

    @property
    def resolved_database_url(self) -> str:
        """The state database URL, defaulting to SQLite in the data directory (``postgres://`` → psycopg)."""
        from indexer.state import normalize_database_url

        return normalize_database_url(self.database_url or f"sqlite:///{self.data_dir.resolve() / 'state.db'}")

    @property
    def models_dir(self) -> Path:
        """Where built ONNX models are cached."""
        return self.data_dir / "models"

    @property
    def pages_dir(self) -> Path:
        """Raw page store (our counterpart of the R2 bucket)."""
        return self.data_dir / "pages"

    @property
    def chroma_dir(self) -> Path:
        """Embedded Chroma persistence directory."""
        return self.data_dir / "chroma"

    @property
    def keyword_dir(self) -> Path:
        """Keyword (SQLite FTS5) indexes, one file per instance."""
        return self.data_dir / "keyword"


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings (cached; tests build their own ``Settings``)."""
    return Settings()


def settings_errors(exc: ValidationError) -> list[str]:
    """One line per bad variable of a failed :class:`Settings`: ``SITESEARCH_NAME: what is wrong (got value)``."""
    lines = []
    for err in exc.errors():
        name = "SITESEARCH_" + "_".join(str(p) for p in err["loc"]).upper()
        lines.append(f"{name}: {err['msg']} (got {err.get('input')!r})")
    return lines


def settings_env(settings: Settings) -> dict[str, str]:
    """``SITESEARCH_*`` variables that make a child process see the same storage and model."""
    env = {
        "SITESEARCH_DATA_DIR": str(settings.data_dir.resolve()),
        "SITESEARCH_DATABASE_URL": settings.resolved_database_url,
        "SITESEARCH_ACCOUNT_ID": settings.account_id,
    }
    if settings.chroma_url:
        env["SITESEARCH_CHROMA_URL"] = settings.chroma_url
    if settings.redis_url:
        env["SITESEARCH_REDIS_URL"] = settings.redis_url
    if settings.model_dir:
        env["SITESEARCH_MODEL_DIR"] = str(settings.model_dir.resolve())
    if settings.embed_threads:
        env["SITESEARCH_EMBED_THREADS"] = str(settings.embed_threads)
    for name in ("concurrent_requests", "concurrent_requests_per_host", "download_delay", "max_page_bytes",
                 "max_pages_per_instance", "frontier_batch", "render_context_pages"):
        env[f"SITESEARCH_{name.upper()}"] = str(getattr(settings, name))
    env["SITESEARCH_AUTOTHROTTLE"] = "1" if settings.autothrottle else "0"
    env["SITESEARCH_SYNC_ON_CREATE"] = "1" if settings.sync_on_create else "0"
    return env
