"""``/instances``: create, list, get, update, delete; stats (items: :mod:`server.routes.items`).

Crawl header values (``include_headers``) are secrets: responses mask them unless the caller
may read them (:func:`server.auth.may_read_secrets`), and a masked value sent back keeps the
stored one (docs/api.md, "Secrets").
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import ValidationError

from indexer.instance import CLIENT_INPUT, InstanceConfig, canonical_names, normalize_source
from server.auth import EditDep, ReadDep, may_read_secrets
from server.deps import AccountDep, RunnerDep, ServiceDep, SettingsDep, StateDep, forget_instance, load_instance
from server.errors import APIError, envelope, validation_message
from server.routes.jobs import CREATE_SOURCE, start_sync
from server.routes.search import similarity_cache
from server.schemas import SECRET_HEADERS_PATH, SECRET_MASK, instance_public, secret_headers

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/client/v4/accounts/{account_id}/ai-search/instances", tags=["instances"])

#: Fields fixed at creation (seeds: "Configuration", editable = no).
IMMUTABLE_FIELDS = ("id", "type", "source", "embedding_model", "name")


def parse_config(data: dict[str, Any]) -> InstanceConfig:
    """Validate an instance body, turning pydantic errors into a 400 naming the fields."""
    try:
        return InstanceConfig.model_validate(data, context={CLIENT_INPUT: True})
    except ValidationError as exc:
        raise APIError(400, validation_message(list(exc.errors()))) from None


@router.post("")
def create_instance(
    request: Request, _: AccountDep, principal: EditDep, state: StateDep, settings: SettingsDep, runner: RunnerDep,
    body: dict[str, Any] = Body(...),
) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise APIError(400, "body: must be a JSON object")
    if "type" not in body:
        body = {**body, "type": "web-crawler" if body.get("source") else "r2"}
    config = parse_config(unmask_headers(body, {}))
    if state.get_instance(config.id):
        raise APIError(409, f"id: an instance named {config.id!r} already exists")
    if state.count_instances() >= settings.max_instances:
        raise APIError(400, f"at most {settings.max_instances} instances per account")
    data = config.model_dump(mode="json")
    row = state.create_instance(config.id, config.type, config.source, data)
    forget_instance(request, config.id)  # a same-named instance deleted by another process may still be cached
    if settings.sync_on_create and config.type == "web-crawler" and not config.paused:
        start_sync(state, runner, config.id, CREATE_SOURCE)  # "indexing begins when you create an instance"
    return envelope(instance_public(row, reveal_secrets=may_read_secrets(principal)))


@router.get("")
def list_instances(
    _: AccountDep,
    principal: ReadDep,
    state: StateDep,
    page: int = Query(default=1, ge=1, le=1_000_000),
    per_page: int = Query(default=50, ge=1, le=100),
) -> dict[str, Any]:
    """Instances, oldest first, a page at a time (``page``, ``per_page``: 1-100, default 50)."""
    reveal = may_read_secrets(principal)
    every = state.list_instances()  # at most max_instances rows
    rows = [instance_public(r, reveal_secrets=reveal) for r in every[(page - 1) * per_page : page * per_page]]
    info = {"count": len(rows), "total_count": len(every), "page": page, "per_page": per_page}
    return envelope(rows, result_info=info)


@router.get("/{instance_id}")
def get_instance(_: AccountDep, principal: ReadDep, state: StateDep, instance_id: str) -> dict[str, Any]:
    row, _cfg = load_instance(state, instance_id)
    return envelope(instance_public(row, reveal_secrets=may_read_secrets(principal)))


@router.patch("/{instance_id}")
def update_instance(
    request: Request, _: AccountDep, principal: EditDep, state: StateDep, instance_id: str,
    body: dict[str, Any] = Body(...),
) -> dict[str, Any]:
    row, cfg = load_instance(state, instance_id)
    if not isinstance(body, dict):
        raise APIError(400, "body: must be a JSON object")
    current = {**row["config"], "id": row["id"]}
    fixed = cfg.model_dump(mode="json")
    for field in IMMUTABLE_FIELDS:
        if field in body and _comparable(field, body[field]) != fixed.get(field):
            raise APIError(
                400,
                f"{field}: cannot be changed after creation (the data source, embedding model, name and id are "
                "fixed; create a new instance instead)",
            )
    patch = unmask_headers(canonical_names(body), row["config"])  # aliases first, or the stored names would win
    config = parse_config(_deep_merge(current, patch))
    state.update_instance_config(instance_id, config.model_dump(mode="json"))
    messages = []
    if config.indexing_signature != cfg.indexing_signature:  # stored pages are indexed again under the new options
        count = state.requeue_indexed(instance_id)
        note = f"indexing options changed: {count} indexed items are being indexed again from their stored pages"
        logger.info("instance %s: %s", instance_id, note)
        if count:
            messages.append({"code": 0, "message": note})
    forget_instance(request, instance_id)  # other API processes: within instance_cache_seconds
    updated: dict[str, Any] = state.get_instance(instance_id)  # type: ignore[assignment]
    return {**envelope(instance_public(updated, reveal_secrets=may_read_secrets(principal))), "messages": messages}


@router.delete("/{instance_id}")
def delete_instance(
    request: Request, _: AccountDep, __: EditDep, state: StateDep, service: ServiceDep, instance_id: str
) -> dict[str, Any]:
    row, _cfg = load_instance(state, instance_id)
    if state.active_job(instance_id):
        raise APIError(409, "a sync job is running for this instance; cancel it first")
    service.vectors.drop_instance(instance_id)
    service.raw.drop_instance(instance_id)
    similarity_cache(service).drop_instance(instance_id)
    state.delete_instance(instance_id)
    forget_instance(request, instance_id)
    return envelope({"id": instance_id})


@router.get("/{instance_id}/stats")
def instance_stats(_: AccountDep, __: ReadDep, state: StateDep, instance_id: str) -> dict[str, Any]:
    load_instance(state, instance_id)
    stats = state.item_stats(instance_id)
    job = state.list_jobs(instance_id, limit=1)
    return envelope(
        {
            "id": instance_id,
            "indexed": stats.get("indexed", 0),
            "queued": stats.get("queued", 0) + stats.get("fetched", 0),
            "errors": stats.get("error", 0),
            "skipped": stats.get("skipped", 0),
            "deleted": stats.get("deleted", 0),
            "chunks": stats.get("chunks", 0),
            "items": {k: v for k, v in stats.items() if k != "chunks"},
            "last_job": job[0]["id"] if job else None,
        }
    )


def unmask_headers(body: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """``body`` with each ``include_headers`` value sent as :data:`SECRET_MASK` replaced by the stored value.

    So a GET (masked) → modify → PATCH round trip keeps the secrets. Header names match
    case-insensitively, as in HTTP; the name as sent is kept.

    Args:
        body: an instance body or PATCH, with canonical field names.
        stored: the instance's stored config (``{}`` when creating).

    Raises:
        APIError: 400 naming the header when a mask stands for no stored value.
    """
    headers = secret_headers(body)
    if not headers or SECRET_MASK not in headers.values():
        return body
    known = secret_headers(stored) or {}
    folded = {name.lower(): value for name, value in known.items()}
    out = copy.deepcopy(body)
    target = secret_headers(out)
    assert target is not None
    for name, value in headers.items():
        if value != SECRET_MASK:
            continue
        if name in known or name.lower() in folded:
            target[name] = known.get(name, folded.get(name.lower()))
        else:
            raise APIError(
                400,
                f"{'.'.join(SECRET_HEADERS_PATH)}.{name}: {SECRET_MASK!r} is how the API masks a stored value, and "
                f"there is none for {name!r} here; send the header's real value",
            )
    return out


def _comparable(field: str, value: Any) -> Any:
    """A PATCH value as it would be stored (``source`` is normalised)."""
    if field == "source" and isinstance(value, str):
        try:
            return normalize_source(value)
        except ValueError:
            return value
    return value


def _deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "include_headers":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
