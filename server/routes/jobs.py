"""``/instances/{id}/jobs``: start a sync, list and inspect jobs, read their logs, cancel."""

from __future__ import annotations

import math
import time
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Query

from crawler.discovery import site_port
from server.auth import EditDep, JobReadDep
from server.deps import AccountDep, RunnerDep, StateDep, load_instance
from server.errors import APIError, envelope
from server.schemas import iso, job_public

router = APIRouter(prefix="/client/v4/accounts/{account_id}/ai-search/instances/{instance_id}/jobs", tags=["jobs"])


SYNC_COOLDOWN = 30.0  # seconds between manual sync requests of one instance (as documented by Cloudflare)
CREATE_SOURCE = "create"  # job source of the first sync, started when an instance is created


def start_sync(
    state: Any, runner: Any, instance_id: str, source: str = "manual", *, target: str | None = None
) -> dict[str, Any]:
    """Queue and launch a sync job for an instance (one at a time; 429 within the cooldown).

    Args:
        target: sync one item: the URL to re-fetch and re-index (None: a full sync).
    """
    row, config = load_instance(state, instance_id)
    if config.type != "web-crawler":
        raise APIError(400, f"instance {instance_id!r} has no website to crawl (type {config.type!r})")
    last = state.last_job(instance_id, full_sync_only=True)
    if target is None and last is not None and last["source"] == CREATE_SOURCE:
        # The sync started by creating the instance is what "create, then sync" asks for (so
        # scripts written for either flow work), unless the instance changed since it started.
        if last["status"] in ("queued", "running") and row["modified_at"] <= last["created_at"]:
            return last
    elif target is None and last is not None:
        wait = SYNC_COOLDOWN - (time.time() - last["created_at"])
        if wait > 0:
            raise APIError(
                429,
                f"a sync of instance {instance_id!r} was requested {SYNC_COOLDOWN - wait:.0f} s ago; "
                f"a new sync can start every {SYNC_COOLDOWN:.0f} s (retry in {wait:.0f} s)",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
    job = state.create_job_if_idle(instance_id, source, target=target)
    if job is None:
        active = state.active_job(instance_id) or {}
        raise APIError(409, f"sync job {active.get('id')} is already {active.get('status')} for this instance")
    runner.launch(job)
    return state.get_job(job["id"])


@router.post("")
def create_job(_: AccountDep, __: EditDep, state: StateDep, runner: RunnerDep, instance_id: str) -> dict[str, Any]:
    return envelope(job_public(start_sync(state, runner, instance_id)))


@router.post("/sync-item")
def sync_item(
    _: AccountDep, __: EditDep, state: StateDep, runner: RunnerDep, instance_id: str, body: dict[str, Any] = Body(...)
) -> dict[str, Any]:
    """Sync one item: re-fetch one URL (``{"url": ...}`` or ``{"item_id": ...}``) and re-index it, as a job."""
    if not isinstance(body, dict):
        raise APIError(400, "body: must be a JSON object with url or item_id")
    url = body.get("url")
    if url is None and body.get("item_id") is not None:
        item = state.get_item(instance_id, str(body["item_id"]))
        if item is None:
            load_instance(state, instance_id)
            raise APIError(404, f"item_id: item {body['item_id']!r} not found")
        url = item["key"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise APIError(400, "url: an absolute http(s) URL of a page of this instance is required")
    _row, config = load_instance(state, instance_id)
    if config.type != "web-crawler":
        raise APIError(400, f"instance {instance_id!r} has no website to crawl (type {config.type!r})")
    try:  # same host and port as the instance (http and https on their default ports are one site)
        on_site = (urlsplit(url).hostname or "").lower() == config.host and site_port(url) == site_port(config.base_url)
    except ValueError:
        on_site = False
    if not on_site:
        raise APIError(400, f"url: {url!r} is not on {config.base_url}")
    return envelope(job_public(start_sync(state, runner, instance_id, target=url)))


@router.get("")
def list_jobs(
    _: AccountDep,
    __: JobReadDep,
    state: StateDep,
    instance_id: str,
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=20, ge=1, le=100),
) -> dict[str, Any]:
    load_instance(state, instance_id)
    rows = state.list_jobs(instance_id, limit=per_page, offset=(page - 1) * per_page)
    return envelope([job_public(j) for j in rows], result_info={"page": page, "per_page": per_page, "count": len(rows)})


def _job(state: Any, instance_id: str, job_id: str) -> dict[str, Any]:
    load_instance(state, instance_id)
    job = state.get_job(job_id)
    if job is None or job["instance_id"] != instance_id:
        raise APIError(404, f"job {job_id!r} not found")
    return job


@router.get("/{job_id}")
def get_job(_: AccountDep, __: JobReadDep, state: StateDep, instance_id: str, job_id: str) -> dict[str, Any]:
    return envelope(job_public(_job(state, instance_id, job_id)))


@router.get("/{job_id}/logs")
def job_logs(
    _: AccountDep,
    __: JobReadDep,
    state: StateDep,
    instance_id: str,
    job_id: str,
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    _job(state, instance_id, job_id)
    rows, total = state.job_logs(job_id, limit=per_page, offset=(page - 1) * per_page)
    lines = [
        {"id": r["id"], "created_at": iso(r["ts"]), "level": r["level"], "url": r["url"], "message": r["message"]}
        for r in rows
    ]
    return envelope(lines, result_info={"page": page, "per_page": per_page, "count": len(lines), "total_count": total})


@router.post("/{job_id}/cancel")
def cancel_job(
    _: AccountDep, __: EditDep, state: StateDep, runner: RunnerDep, instance_id: str, job_id: str
) -> dict[str, Any]:
    job = _job(state, instance_id, job_id)
    if job["status"] not in ("queued", "running"):
        raise APIError(409, f"job {job_id} is already {job['status']}")
    runner.cancel(job_id)
    state.finish_job(job_id, "cancelled", "cancelled by request")
    state.log(job_id, "job cancelled by request", level="warning")
    return envelope(job_public(state.get_job(job_id)))
