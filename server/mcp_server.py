"""``/mcp``: a Model Context Protocol server (Streamable HTTP) with ``search`` and ``ask`` tools.

Built on the official SDK (``mcp`` 2.x, whose ``MCPServer`` was ``FastMCP`` in 1.x).
The SDK's Streamable HTTP app is routed at ``/mcp`` inside our FastAPI app and its
session manager runs in the app's lifespan (:meth:`MCPEndpoint.run`).

Authentication uses the API's bearer tokens through the SDK's own resource-server
hooks: :class:`TokenVerifier` maps a token to its permissions (as scopes) and the SDK
answers 401 without a valid token and 403 without ``AI Search:Run``; a session only
accepts the token that opened it.  Tools search with the caller's folder restriction.
DNS-rebinding protection (Host/Origin checks) is off: every request must carry a
bearer token, which a rebinding page cannot obtain, and a fixed host list would break
deployments behind a reverse proxy.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import ValidationError
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from indexer import __version__
from server.auth import RUN, Principal, authenticate
from server.errors import APIError, validation_message
from server.routes.nlweb import AskParams, AskPlan, answer_text, nlweb_results, plan_ask, retrieve

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
INSTRUCTIONS = (
    "Search this site's content. `search` returns the most relevant pages (url, title, score, snippet); "
    "`ask` answers a question in a few sentences with numbered sources. Both take an optional instance_id "
    "(the search instance; default: the server's default instance)."
)


class TokenVerifier:
    """The SDK's token-verifier protocol over our API tokens (scopes = permissions)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    async def verify_token(self, token: str) -> AccessToken | None:
        state = self._app.state

        def check() -> Principal | None:
            try:
                return authenticate(state.settings, state.state, f"Bearer {token}")
            except APIError:
                return None

        principal = await anyio.to_thread.run_sync(check)
        if principal is None:
            return None
        return AccessToken(
            token=token,
            client_id=principal.token_id,
            scopes=sorted(principal.permissions),
            claims={"name": principal.name, "folder_prefix": principal.folder_prefix},
        )


def current_principal() -> Principal:
    """The caller of the running tool, from the SDK's auth context."""
    token = get_access_token()
    if token is None:  # the route requires auth, so this is a wiring error
        raise ToolError("not authenticated")
    claims = token.claims or {}
    return Principal(token.client_id, str(claims.get("name", "")), frozenset(token.scopes), claims.get("folder_prefix"))


def build_server(app: FastAPI) -> MCPServer:
    """The MCP server and its tools, reading the index and state from ``app.state``."""
    settings = app.state.settings if hasattr(app.state, "settings") else None
    # AuthSettings requires an issuer; with no OAuth provider and no resource_server_url the
    # SDK never advertises it (our tokens are minted by the API, not by an OAuth server).
    issuer = f"http://{settings.host}:{settings.port}" if settings else "http://127.0.0.1"
    # MCPServer() calls logging.basicConfig (a Rich handler on the root logger) unless the
    # root already has a handler: keep the host's logging setup as it is.
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        server = MCPServer(
            "sitesearch",
            title="sitesearch",
            instructions=INSTRUCTIONS,
            version=__version__,
            token_verifier=TokenVerifier(app),
            auth=AuthSettings(issuer_url=issuer, resource_server_url=None, required_scopes=[RUN]),
        )
    finally:
        root.removeHandler(guard)

    def plan(query: str, instance_id: str | None, max_results: int) -> AskPlan:
        try:
            params = AskParams(query=query, site=instance_id, max_results=max_results, streaming=False)
            return plan_ask(app.state.state, app.state.settings, current_principal(), params)
        except ValidationError as exc:
            raise ToolError(validation_message(list(exc.errors()))) from None
        except APIError as exc:
            raise ToolError(exc.message) from None

    @server.tool(name="search", description="Find the pages of the site most relevant to a query.")
    def search_tool(query: str, instance_id: str | None = None, max_results: int = 10) -> dict[str, Any]:
        """Search one instance.

        Args:
            query: what to look for, in natural language.
            instance_id: the search instance; default: the server's default instance.
            max_results: 1-50 pages.
        """
        if not 1 <= max_results <= 50:
            raise ToolError("max_results: must be between 1 and 50")
        p = plan(query, instance_id, max_results)
        try:
            hits = retrieve(app.state.service, p)
        except APIError as exc:
            raise ToolError(exc.message) from None
        results = nlweb_results(hits, p.instance_id, p.max_results)
        return {
            "instance_id": p.instance_id,
            "query": p.query,
            "results": [
                {"url": r["url"], "title": r["name"], "score": r["score"], "snippet": r["description"]} for r in results
            ],
        }

    @server.tool(name="ask", description="Answer a question from the site's content, citing numbered sources.")
    def ask_tool(query: str, instance_id: str | None = None, max_results: int = 5) -> str:
        """Answer a question.

        Args:
            query: the question.
            instance_id: the search instance; default: the server's default instance.
            max_results: pages to draw the answer from (1-50).
        """
        if not 1 <= max_results <= 50:
            raise ToolError("max_results: must be between 1 and 50")
        p = plan(query, instance_id, max_results)
        try:
            hits = retrieve(app.state.service, p)
            return answer_text(app.state.service, p, hits)
        except APIError as exc:
            raise ToolError(exc.message) from None

    return server


class MCPEndpoint:
    """The ASGI app routed at ``/mcp``; :meth:`run` starts its session manager (once per lifespan)."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._asgi: ASGIApp | None = None

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Build the SDK app (a fresh session manager each time) and serve it until exit."""
        server = build_server(self._app)
        asgi = server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        async with server.session_manager.run():
            self._asgi = asgi
            try:
                yield
            finally:
                self._asgi = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._asgi is None:
            await JSONResponse({"error": "MCP server not started"}, status_code=503)(scope, receive, send)
            return
        await self._asgi(scope, receive, send)


def mount_mcp(app: FastAPI) -> MCPEndpoint:
    """Route ``/mcp`` (all methods) to the MCP endpoint; run ``endpoint.run()`` in the lifespan.

    Returns:
        The endpoint, whose :meth:`MCPEndpoint.run` the app's lifespan must enter.
    """
    endpoint = MCPEndpoint(app)
    app.router.routes.append(Route(MCP_PATH, endpoint=endpoint, include_in_schema=False))
    return endpoint
