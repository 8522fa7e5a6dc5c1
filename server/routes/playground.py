"""The playground: ``GET /`` serves a small search page (plain HTML + JS, no build step).

The page calls the public API with a token the user pastes (kept in the browser's
localStorage); it needs no server-side session.  Its files live in ``server/static``
(package data) and are served by name from a fixed list, nothing else.
"""

from __future__ import annotations

import html
import logging
from functools import lru_cache
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import HTMLResponse

from server.deps import SettingsDep
from server.errors import APIError

logger = logging.getLogger(__name__)

router = APIRouter(tags=["playground"])

ASSETS = {"playground.js": "text/javascript; charset=utf-8", "playground.css": "text/css; charset=utf-8"}


@lru_cache(maxsize=8)
def static_text(name: str) -> str:
    """A file of ``server/static`` as text (cached)."""
    return resources.files("server").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse)
def playground(settings: SettingsDep) -> HTMLResponse:
    """The search playground page."""
    page = static_text("index.html").replace("{{ACCOUNT_ID}}", html.escape(settings.account_id, quote=True))
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}", responses={200: {"content": {"text/javascript": {}, "text/css": {}}}})
def asset(name: Annotated[str, Path(examples=sorted(ASSETS))]) -> Response:
    """The playground's script and stylesheet."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise APIError(404, f"name: no static file {name!r}")
    return Response(static_text(name), media_type=media_type, headers={"Cache-Control": "no-cache"})
