"""``/ai-search/tokens``: create, list and revoke API tokens.

A token carries Cloudflare's permission names (``AI Search:Read``, ``AI Search:Edit``,
``AI Search:Run``) and optionally a ``folder_prefix``: searches with such a token
only ever see chunks whose ``folder`` starts with it (multitenancy), whatever
filter the request sends.  The secret is returned once, as ``result.value``, and
stored as a SHA-256 hash.

A caller cannot hand out more than it holds: a new token's permissions must be a
subset of the caller's, and a caller restricted to a folder prefix can only create
(and see, and revoke) tokens restricted to that prefix or a sub-folder of it.
"""

from __future__ import annotations

import logging
import time
import unicodedata
import uuid
from typing import Any

from fastapi import APIRouter, Body

from server.auth import PERMISSIONS, EditDep, Principal, mint_token
from server.deps import AccountDep, StateDep
from server.errors import APIError, envelope
from server.schemas import iso

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/client/v4/accounts/{account_id}/ai-search/tokens", tags=["tokens"])

MAX_NAME_LENGTH = 200
MAX_PREFIX_LENGTH = 1024


def token_public(row: dict[str, Any]) -> dict[str, Any]:
    """A token as the API shows it (never the secret)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "permissions": list(row["permissions"]),
        "folder_prefix": row.get("folder_prefix"),
        "created_at": iso(row["created_at"]),
    }


def _within(principal: Principal, row: dict[str, Any]) -> bool:
    """Whether a restricted caller may see/revoke a token."""
    if not principal.folder_prefix:
        return True
    return (row.get("folder_prefix") or "").startswith(principal.folder_prefix)


def _text(body: dict[str, Any], key: str, max_len: int, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise APIError(400, f"{key}: field required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise APIError(400, f"{key}: must be a non-empty string")
    if len(value) > max_len:
        raise APIError(400, f"{key}: at most {max_len} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise APIError(400, f"{key}: control characters are not allowed")
    return value


@router.post("")
def create_token(_: AccountDep, principal: EditDep, state: StateDep, body: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Create a token; the response's ``value`` is the secret, shown this once."""
    if not isinstance(body, dict):
        raise APIError(400, "body: must be a JSON object")
    if "cf_api_id" in body and "permissions" not in body:
        return envelope(_service_token_registration(body))
    name = _text(body, "name", MAX_NAME_LENGTH, required=True)
    permissions = body.get("permissions")
    if not isinstance(permissions, list) or not permissions or not all(isinstance(p, str) for p in permissions):
        raise APIError(400, f"permissions: a non-empty list of permission names ({', '.join(PERMISSIONS)})")
    unknown = [p for p in permissions if p not in PERMISSIONS]
    if unknown:
        raise APIError(400, f"permissions: unknown permission {unknown[0]!r}; use {', '.join(PERMISSIONS)}")
    beyond = [p for p in permissions if p not in principal.permissions]
    if beyond:
        raise APIError(403, f"permissions: this token cannot grant {beyond[0]!r}, which it does not hold")
    prefix = _text(body, "folder_prefix", MAX_PREFIX_LENGTH, required=False) or None
    if prefix is not None and (prefix.startswith("/") or "\\" in prefix or not prefix.endswith("/")):
        # the trailing '/' keeps 'customer-a/' from also matching 'customer-ab/'
        raise APIError(400, "folder_prefix: a folder ending in '/', such as 'customer-a/' (relative, '/' between folders)")
    if principal.folder_prefix and not (prefix or "").startswith(principal.folder_prefix):
        raise APIError(403, f"folder_prefix: this token may only create tokens under {principal.folder_prefix!r}")
    secret, row = mint_token(state, name, list(dict.fromkeys(permissions)), folder_prefix=prefix)  # type: ignore[arg-type]
    logger.info("token %s (%s) created by %s", row["id"], name, principal.token_id)
    return envelope({**token_public(row), "value": secret})


def _service_token_registration(body: dict[str, Any]) -> dict[str, Any]:
    """Answer Cloudflare's "register the service token" call (get-started step 4) so its scripts run.

    Cloudflare keeps that token to reach the account's own R2, Vectorize and Workers AI; a
    self-hosted install has no such account, so the key is checked for shape and then
    forgotten: nothing is stored.  The ``id`` is derived from ``cf_api_id`` (the same id on
    every call), for the ``token_id`` field of an instance, which is stored only.
    """
    cf_api_id = _text(body, "cf_api_id", MAX_NAME_LENGTH, required=True)
    _text(body, "cf_api_key", 4096, required=True)
    name = _text(body, "name", MAX_NAME_LENGTH, required=False) or "AI Search Service Token"
    now = iso(time.time())
    token_id = uuid.uuid5(uuid.NAMESPACE_URL, f"sitesearch:service-token:{cf_api_id}").hex
    return {"id": token_id, "name": name, "cf_api_id": cf_api_id, "created_at": now, "modified_at": now, "enabled": True}


@router.get("")
def list_tokens(_: AccountDep, principal: EditDep, state: StateDep) -> dict[str, Any]:
    rows = [token_public(r) for r in state.list_tokens() if _within(principal, r)]
    return envelope(rows, result_info={"page": 1, "per_page": len(rows), "count": len(rows), "total_count": len(rows)})


@router.get("/{token_id}")
def get_token(_: AccountDep, principal: EditDep, state: StateDep, token_id: str) -> dict[str, Any]:
    row = state.get_token(token_id)
    if row is None or not _within(principal, row):
        raise APIError(404, f"token {token_id!r} not found")
    return envelope(token_public(row))


@router.delete("/{token_id}")
def delete_token(_: AccountDep, principal: EditDep, state: StateDep, token_id: str) -> dict[str, Any]:
    """Revoke a token; requests with it fail from now on."""
    row = state.get_token(token_id)
    if row is None or not _within(principal, row):
        raise APIError(404, f"token {token_id!r} not found")
    state.delete_token(token_id)
    logger.info("token %s (%s) revoked by %s", token_id, row["name"], principal.token_id)
    return envelope({"id": token_id})
