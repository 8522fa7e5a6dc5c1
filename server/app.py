"""The FastAPI application: a Cloudflare AI Search compatible API over the local index."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from indexer import __version__
from indexer.config import Settings, get_settings
from indexer.rerank import RerankError, onnx_directory
from indexer.service import IndexService, describe
from indexer.state import StateStore
from server.asgi import SitesearchAPI
from server.auth import ensure_bootstrap_token
from server.deps import InstanceCache
from server.errors import install_error_handlers
from server.jobs import IndexWorker, JobRunner
from server.mcp_server import mount_mcp
from server.routes import instances, items, jobs, nlweb, playground, search, tokens
from server.scheduler import Scheduler

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Storage, the model and background workers start in the lifespan.

    Args:
        settings: defaults to :func:`indexer.config.get_settings` (the environment).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        state = StateStore(settings.resolved_database_url)
        secret = ensure_bootstrap_token(settings, state)
        if secret:
            print(  # noqa: T201 - shown once, by design
                f"\n  Generated an admin API token (shown once; store it now):\n\n    {secret}\n", flush=True
            )
        logger.info("loading the embedding model and opening the index (first start builds the model)")
        service = IndexService.open(settings, state=state)
        if settings.rerank_model_dir is not None:  # a checkpoint is converted now, not on the first query
            try:
                onnx_directory(settings.rerank_model_dir, settings.models_dir)
            except RerankError as exc:
                logger.error("SITESEARCH_RERANK_MODEL_DIR: %s (reranked queries will answer 400)", exc)
        runner = JobRunner(settings, state)
        worker = IndexWorker(service, poll_interval=settings.index_poll_interval)
        app.state.settings = settings
        app.state.state = state
        app.state.service = service
        app.state.runner = runner
        app.state.search_pool = ThreadPoolExecutor(  # see server.deps.run_search_pool
            settings.search_threads or os.cpu_count() or 1, thread_name_prefix="sitesearch-search"
        )
        app.state.instance_cache = InstanceCache(settings.instance_cache_seconds)  # /search's config cache
        scheduler = Scheduler(state, runner.launch)
        app.state.scheduler = scheduler
        runner.start()
        worker.start()
        scheduler.start()
        logger.info("sitesearch %s ready: %s", __version__, describe(service))
        try:
            async with mcp_endpoint.run():
                yield
        finally:
            scheduler.stop()
            runner.stop()
            worker.stop()
            app.state.search_pool.shutdown(wait=True)
            service.close()
            state.close()

    app = SitesearchAPI(  # FastAPI + a request body limit + POST …/search served before the middleware stack
        title="sitesearch",
        version=__version__,
        description="Self-hosted AI search for your website, compatible with Cloudflare AI Search's REST API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)

    app.include_router(instances.router)
    app.include_router(jobs.router)
    app.include_router(items.router)
    app.include_router(tokens.router)
    app.include_router(search.router)
    app.include_router(nlweb.router)
    app.include_router(playground.router)
    mcp_endpoint = mount_mcp(app)

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    return app
