"""API errors in Cloudflare's envelope.

Only ``server/`` turns errors into HTTP responses.  Every error a client can
cause is a 4xx with ``{"success": false, "errors": [{"code", "message"}], ...}``
whose message names the offending field; anything unexpected is a 500 with a
generic message (the traceback goes to the server log, never to the client).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer.vectorstore import StoreUnavailableError

logger = logging.getLogger(__name__)

# Error codes (stable; documented in the README).
CODE_BAD_REQUEST = 7001
CODE_UNAUTHENTICATED = 10000
CODE_FORBIDDEN = 10001
CODE_NOT_FOUND = 7002
CODE_CONFLICT = 7003
CODE_TOO_MANY = 7004
CODE_TOO_LARGE = 7005
CODE_UNSUPPORTED = 7006
CODE_INTERNAL = 7000

_STATUS_CODES = {
    400: CODE_BAD_REQUEST,
    401: CODE_UNAUTHENTICATED,
    403: CODE_FORBIDDEN,
    404: CODE_NOT_FOUND,
    405: CODE_BAD_REQUEST,
    409: CODE_CONFLICT,
    413: CODE_TOO_LARGE,
    415: CODE_UNSUPPORTED,
    422: CODE_BAD_REQUEST,
    429: CODE_TOO_MANY,
}


class APIError(Exception):
    """An error with an HTTP status and a client-facing message."""

    def __init__(self, status: int, message: str, *, code: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _STATUS_CODES.get(status, CODE_BAD_REQUEST)
        self.headers = headers


def envelope(result: Any = None, *, result_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A success response body."""
    body: dict[str, Any] = {"success": True, "result": result, "errors": [], "messages": []}
    if result_info is not None:
        body["result_info"] = result_info
    return body


def error_response(status: int, message: str, *, code: int | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={
            "success": False,
            "result": None,
            "errors": [{"code": code or _STATUS_CODES.get(status, CODE_BAD_REQUEST), "message": message}],
            "messages": [],
        },
        headers=headers,
    )


def _field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    # loc[0] says where the value came from (body, query, path, header); the rest names the field
    rest = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    parts = [str(p) for p in rest]
    out = ""
    for p in parts:
        if p.isdigit():
            out += f"[{p}]"
        else:
            out += ("." if out else "") + p
    return out or "body"


_NAMED = re.compile(r"[A-Za-z_][\w.\[\]]*: ")  # a whole-body validator's message that names its field


def validation_message(errors: list[dict[str, Any]]) -> str:
    """Turn pydantic errors into one readable message naming each field."""
    msgs = []
    for err in errors[:5]:
        etype = err.get("type", "")
        loc = tuple(err.get("loc", ()))
        # Drop pydantic's union/function tags from the location.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        field = _field_path(loc)
        if etype == "json_invalid":
            msgs.append(f"request body is not valid JSON: {err.get('ctx', {}).get('error', '')}".strip())
            continue
        if etype == "missing":
            msgs.append(f"{field}: field required")
            continue
        if field == "body" and etype in ("model_attributes_type", "model_type", "dict_type"):
            # e.g. curl -d without -H 'Content-Type: application/json' (sent as a form), or a JSON array
            msgs.append("body: must be a JSON object, sent with Content-Type: application/json")
            continue
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        # a validator that names the field itself (``field[3]: ...``, ``field.sub: ...``) is not prefixed twice
        named = msg.startswith((f"{field}:", f"{field}[", f"{field}.")) or (field == "body" and _NAMED.match(msg))
        msgs.append(msg if named else f"{field}: {msg}")
    return "; ".join(msgs)


def api_error_response(exc: APIError) -> JSONResponse:
    """The envelope response of an :class:`APIError`."""
    return error_response(exc.status, exc.message, code=exc.code, headers=exc.headers)


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    """The envelope response of Starlette's HTTPException (unknown route, method, body too large, ...)."""
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such route"
    return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))


def unavailable_response(exc: StoreUnavailableError) -> JSONResponse:
    """503 while a Chroma server is down: the client should retry."""
    return error_response(503, str(exc), code=CODE_INTERNAL, headers={"Retry-After": "5"})


def internal_error_response(method: str, path: str) -> JSONResponse:
    """Log the exception being handled (with its traceback) and answer a generic 500."""
    logger.exception("unhandled error on %s %s", method, path)
    return error_response(500, "internal error; see the server log", code=CODE_INTERNAL)


def install_error_handlers(app: FastAPI) -> None:
    """Register the envelope handlers on an app."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(StoreUnavailableError)
    async def _store_unavailable(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        return unavailable_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return internal_error_response(request.method, request.url.path)
