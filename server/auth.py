"""Bearer-token authentication with Cloudflare's AI Search permission names.

Tokens are stored as SHA-256 hashes; the secret is shown once, when created.
``SITESEARCH_API_TOKEN`` (if set) is an admin token with every permission; if it is
unset, an admin token is generated at first start, stored hashed, and printed once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from indexer.config import Settings
from indexer.state import StateStore
from server.errors import APIError

logger = logging.getLogger(__name__)

READ = "AI Search:Read"
EDIT = "AI Search:Edit"
RUN = "AI Search:Run"
PERMISSIONS = (READ, EDIT, RUN)
#: Permissions that come with another: a token that may change an instance may also query it
#: (the seeds ask for Read + Edit on the REST API page and for Edit + Run when getting started).
IMPLIED = {EDIT: (RUN,)}
BOOTSTRAP_NAME = "bootstrap"
TOKEN_PREFIX = "ss_"


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do (``permissions``: as granted plus :data:`IMPLIED`)."""

    token_id: str
    name: str
    permissions: frozenset[str] = field(default_factory=frozenset)
    folder_prefix: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "permissions", effective_permissions(self.permissions))


def effective_permissions(granted: Iterable[str]) -> frozenset[str]:
    """``granted`` plus the permissions they imply (Edit → Run).

    Args:
        granted: permission names as stored on a token.

    Returns:
        Every permission the holder has.
    """
    out = set(granted)
    for permission in tuple(out):
        out.update(IMPLIED.get(permission, ()))
    return frozenset(out)


def may_read_secrets(principal: Principal) -> bool:
    """Whether ``principal`` sees secret config values (crawl header values): Edit, no folder restriction.

    The same callers may change them; everyone else sees :data:`server.schemas.SECRET_MASK`.
    """
    return EDIT in principal.permissions and not principal.folder_prefix


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def mint_token(
    state: StateStore, name: str, permissions: tuple[str, ...] | list[str] = PERMISSIONS, *, folder_prefix: str | None = None
) -> tuple[str, dict]:
    """Create a token; returns ``(secret, row)``. The secret is not stored."""
    secret = new_secret()
    row = state.create_token(name, hash_secret(secret), list(permissions), folder_prefix=folder_prefix)
    return secret, row


def ensure_bootstrap_token(settings: Settings, state: StateStore) -> str | None:
    """Generate the admin token on first start. Returns the secret if one was just created."""
    if settings.api_token:
        return None
    if state.get_meta("bootstrap_token_created"):
        return None
    secret, _ = mint_token(state, BOOTSTRAP_NAME)
    state.set_meta("bootstrap_token_created", "1")
    return secret


def _bearer_secret(authorization: str | None) -> str:
    """The token of a ``Bearer`` header (401 when missing or malformed)."""
    if not authorization:
        raise APIError(401, "missing Authorization header: send 'Authorization: Bearer <token>'",
                       headers={"WWW-Authenticate": "Bearer"})
    scheme, _, secret = authorization.strip().partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise APIError(401, "Authorization header must be 'Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
    return secret


def _env_principal(settings: Settings, secret: str) -> Principal | None:
    if settings.api_token and hmac.compare_digest(secret.encode(), settings.api_token.encode()):
        return Principal("env", "SITESEARCH_API_TOKEN", frozenset(PERMISSIONS))
    return None


def stored_principal(row: dict | None) -> Principal:
    """The principal of a stored token row (403 when there is none)."""
    if row is None:
        raise APIError(403, "invalid API token")
    return Principal(row["id"], row["name"], frozenset(row["permissions"]), row.get("folder_prefix"))


def bearer_principal(settings: Settings, authorization: str | None) -> tuple[Principal | None, str]:
    """The I/O-free half of :func:`authenticate`: ``(env principal, "")`` or ``(None, secret hash)``.

    For a stored token, finish with ``stored_principal(state.token_by_hash(hash))`` off the event loop.
    """
    secret = _bearer_secret(authorization)
    principal = _env_principal(settings, secret)
    return (principal, "") if principal is not None else (None, hash_secret(secret))


def authenticate(settings: Settings, state: StateStore, authorization: str | None) -> Principal:
    """Resolve an ``Authorization`` header to a principal (401 missing, 403 wrong)."""
    principal, token_hash = bearer_principal(settings, authorization)
    return principal or stored_principal(state.token_by_hash(token_hash))


async def authenticate_request(request: Request) -> Principal:
    """:func:`authenticate` for a request; only the stored-token lookup leaves the event loop.

    Tokens are looked up on every request (no cache), so a revoked token fails at once.
    """
    app_state = request.app.state
    principal, token_hash = bearer_principal(app_state.settings, request.headers.get("authorization"))
    if principal is None:
        principal = stored_principal(await run_in_threadpool(app_state.state.token_by_hash, token_hash))
    return principal


def require(permission: str):  # noqa: ANN201 - a FastAPI dependency factory
    """Dependency: the caller must hold ``permission`` (403 names it otherwise)."""

    async def dependency(request: Request) -> Principal:
        return check_permission(await authenticate_request(request), permission, request.url.path)

    return dependency


def check_permission(principal: Principal, permission: str, path: str) -> Principal:
    """``principal`` if it may use ``permission`` on ``path`` (403 naming what is missing otherwise)."""
    if permission not in principal.permissions:
        also = [p for p, implied in IMPLIED.items() if permission in implied]
        hint = f" (or '{also[0]}', which includes it)" if also else ""
        raise APIError(403, f"this token lacks the '{permission}' permission{hint}")
    if permission == EDIT and principal.folder_prefix and not tenant_may_edit(path):
        raise APIError(
            403,
            f"this token is restricted to the folder {principal.folder_prefix!r}: it may upload and manage "
            "items and tokens under it, not change instances or jobs",
        )
    return principal


def tenant_may_edit(path: str) -> bool:
    """Whether a folder-restricted token may use Edit on ``path`` (items and tokens only).

    Paths look like ``/client/v4/accounts/{account}/ai-search/tokens[/...]`` and
    ``/client/v4/accounts/{account}/ai-search/instances/{id}/items[/...]``.
    """
    parts = path.split("/")
    if len(parts) > 6 and parts[5] == "ai-search" and parts[6] == "tokens":
        return True
    return len(parts) > 8 and parts[5] == "ai-search" and parts[6] == "instances" and parts[8] == "items"


async def require_unrestricted_read(request: Request) -> Principal:
    """Dependency: Read, from a token not restricted to a folder (job logs list every crawled URL)."""
    principal = await require(READ)(request)
    if principal.folder_prefix:
        raise APIError(403, "a folder-restricted token cannot read sync jobs: their logs cover every folder")
    return principal


ReadDep = Annotated[Principal, Depends(require(READ))]
JobReadDep = Annotated[Principal, Depends(require_unrestricted_read)]
EditDep = Annotated[Principal, Depends(require(EDIT))]
RunDep = Annotated[Principal, Depends(require(RUN))]
