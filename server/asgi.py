"""The ASGI entry: FastAPI, plus a request body limit and ``POST …/search`` served before the middleware stack.

**Body limit.** A JSON request body over ``Settings.max_request_bytes`` gets 413 in the error
envelope (declared by ``Content-Length`` or counted as it arrives), so no route buffers an
unbounded body. File uploads (``POST …/items``) are exempt: they stream and check their own,
larger limit (:mod:`server.routes.items`).

**The /search hot path.** At 100,000 chunks an answer costs ~4 ms of embedding and Chroma;
Starlette's middleware stack, the router's scan of the routes and FastAPI's dependency
solving all run on the one event-loop thread every request crosses. :class:`SitesearchAPI`
matches the two ``/search`` paths (``/ai-search/instances/{id}/search`` and the legacy
``/autorag/rags/{id}/search``) first and hands them to :func:`serve_search`, which reads the
body (bounded), calls :func:`server.routes.search.search_bytes` — the function the FastAPI
route uses too — and renders errors with the app's own envelope helpers. Every other request,
and ``/search`` before the lifespan has started, goes through FastAPI. (So FastAPI's
OpenTelemetry instrumentation, when configured, makes no span for ``/search``.)
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from indexer.vectorstore import StoreUnavailableError
from server.errors import (
    APIError,
    api_error_response,
    http_error_response,
    internal_error_response,
    unavailable_response,
)
from server.routes.search import search_bytes

SEARCH_PATH = re.compile(r"/client/v4/accounts/([^/]+)/(?:ai-search/instances|autorag/rags)/([^/]+)/search")
UPLOAD_PATH = re.compile(r"/client/v4/accounts/[^/]+/ai-search/instances/[^/]+/items")


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


class SitesearchAPI(FastAPI):
    """FastAPI with a request body limit, and ``POST …/search`` served by :func:`serve_search`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and hasattr(self.state, "settings"):  # after the lifespan started
            limit = self.state.settings.max_request_bytes
            if scope["method"] == "POST" and not scope.get("root_path"):
                match = SEARCH_PATH.fullmatch(scope["path"])
                if match is not None:
                    await serve_search(self, scope, receive, send, match[1], match[2], limit)
                    return
            if not (scope["method"] == "POST" and UPLOAD_PATH.fullmatch(scope["path"])):
                receive = limited_receive(receive, _headers(scope).get("content-length"), limit)
        await super().__call__(scope, receive, send)


def limited_receive(receive: Receive, declared: str | None, limit: int) -> Receive:
    """``receive`` that raises 413 past ``limit`` body bytes, declared (``Content-Length``) or received.

    An HTTPException, which FastAPI's body parsing passes through (it turns other errors into a 400).
    """
    received = 0

    async def wrapped() -> Message:
        nonlocal received
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise _too_large(limit)
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return wrapped


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body is larger than {limit} bytes")


async def serve_search(app: FastAPI, scope: Scope, receive: Receive, send: Send, account_id: str,
                       instance_id: str, limit: int) -> None:
    """Answer one ``/search`` request (200 JSON, or the error envelope)."""
    headers = _headers(scope)
    try:
        raw = await read_body(limited_receive(receive, headers.get("content-length"), limit))
        payload = await search_bytes(app.state, account_id, instance_id, scope["path"], headers.get("authorization"),
                                     headers.get("content-type"), raw)
    except ClientGone:
        return
    except HTTPException as exc:  # the body limit
        await http_error_response(exc)(scope, receive, send)
        return
    except APIError as exc:
        await api_error_response(exc)(scope, receive, send)
        return
    except StoreUnavailableError as exc:
        await unavailable_response(exc)(scope, receive, send)
        return
    except Exception:  # noqa: BLE001 - never a traceback to the client
        await internal_error_response("POST", scope["path"])(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def _headers(scope: Scope) -> dict[str, str]:
    """The request headers read here (names lower-case, values latin-1 like Starlette's)."""
    wanted = (b"authorization", b"content-type", b"content-length")
    found: dict[str, str] = {}
    for k, v in scope["headers"]:
        if k in wanted:
            found.setdefault(k.decode(), v.decode("latin-1"))  # the first, as Starlette's headers.get
    return found


async def read_body(receive: Receive) -> bytes:
    """The whole request body.

    Raises:
        ClientGone: the client disconnected first.
    """
    chunks: list[bytes] = []
    while True:
        message: dict[str, Any] = await receive()  # type: ignore[assignment]
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
