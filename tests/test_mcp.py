"""``/mcp`` end to end: the official MCP SDK client talks Streamable HTTP to a real uvicorn server.

The server crawls and indexes the fixture site first (the pattern of
``test_crawl_and_search``); the client lists the tools and calls ``search`` and
``ask`` with bearer tokens of different permissions.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
import uvicorn
from fastapi import FastAPI
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from indexer.config import Settings
from server.app import create_app
from server.auth import READ, RUN, mint_token
from server.devsite import DevSite
from tests.conftest import API_TOKEN, FIXTURE_HEADER, make_settings, wait_for_job, wait_until

pytestmark = pytest.mark.slow

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@contextmanager
def live_server(settings: Settings) -> Iterator[tuple[str, FastAPI]]:
    """The app under a real uvicorn server on 127.0.0.1 (port 0), in a thread; yields (base URL, app)."""
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=120)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def crawl_fixture_site(client: httpx.Client, site: DevSite, instance_id: str = "fixture") -> dict[str, Any]:
    """Create an instance for the fixture site through the API, sync it, wait for the job to end.

    Args:
        client: an admin-authenticated client of the API (``httpx.Client`` or FastAPI's ``TestClient``).
    """
    body = {
        "id": instance_id,
        "type": "web-crawler",
        "source": site.url,
        "source_params": {
            "include_items": ["**/docs/**", "**/blog/**", "**/members/**"],
            "web_crawler": {"parse_options": {"include_headers": {FIXTURE_HEADER[0]: FIXTURE_HEADER[1]}}},
        },
    }
    r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    r = client.post(f"{ACCOUNT}/instances/{instance_id}/jobs", headers=AUTH)
    assert r.status_code == 200, r.text
    job = wait_for_job(client, instance_id, r.json()["result"]["id"])
    assert job["status"] == "completed", job
    assert job["counters"]["indexed"] >= 5, job
    return job


@pytest.fixture(scope="module")
def served(fixture_site: DevSite, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = make_settings(tmp_path_factory.mktemp("mcp"), model_dir, nlweb_default_instance="fixture")
    with live_server(settings) as (url, app):
        with httpx.Client(base_url=url, timeout=30) as client:
            crawl_fixture_site(client, fixture_site)
        state = app.state.state
        tokens = {
            "run": mint_token(state, "mcp-run", [RUN])[0],
            "read": mint_token(state, "mcp-read", [READ])[0],
            "blog": mint_token(state, "mcp-blog", [RUN], folder_prefix=f"{fixture_site.url.split('://', 1)[1]}/blog/")[0],
        }
        yield {"url": url, "tokens": tokens}


async def _with_session(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Any]]:
    """Open an SDK session with ``token``; return the tool names and each call's result."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        async with streamable_http_client(f"{url}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                assert init.server_info.name == "sitesearch"
                tools = await session.list_tools()
                results = [await session.call_tool(name, args) for name, args in calls]
    return [t.name for t in tools.tools], results


def run_session(url: str, token: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Any]]:
    return anyio.run(_with_session, url, token, calls)


def structured(result: Any) -> dict[str, Any]:
    assert not result.is_error, result
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def test_tools_listed_and_search_finds_the_page(served: dict[str, Any]) -> None:
    names, (found, explicit) = run_session(
        served["url"],
        served["tokens"]["run"],
        [
            ("search", {"query": "How long is the bridge over the fjord?", "max_results": 3}),
            ("search", {"query": "What flowers grow under violet lamps?", "instance_id": "fixture"}),
        ],
    )
    assert {"search", "ask"} <= set(names)
    data = structured(found)
    assert data["instance_id"] == "fixture"
    assert 1 <= len(data["results"]) <= 3
    top = data["results"][0]
    assert top["url"].endswith("/docs/beta.html"), data
    assert set(top) == {"url", "title", "score", "snippet"} and 0.0 < top["score"] <= 1.0 and top["snippet"]
    assert len({r["url"] for r in data["results"]}) == len(data["results"])  # one entry per page
    assert structured(explicit)["results"][0]["url"].endswith("/docs/gamma.html")


def test_ask_answers_with_sources(served: dict[str, Any]) -> None:
    _, (answer,) = run_session(
        served["url"], served["tokens"]["run"], [("ask", {"query": "What can you see of Saturn through the telescope mirror?"})]
    )
    assert not answer.is_error, answer
    text = answer.content[0].text
    assert "Sources:" in text and "/blog/telescope.html" in text
    assert "[1]" in text


def test_folder_token_only_sees_its_folder(served: dict[str, Any]) -> None:
    _, (result,) = run_session(
        served["url"], served["tokens"]["blog"], [("search", {"query": "How long is the bridge over the fjord?"})]
    )
    urls = [r["url"] for r in structured(result)["results"]]
    assert urls and all("/blog/" in u for u in urls), urls


def test_tool_errors_name_the_field(served: dict[str, Any]) -> None:
    _, (unknown, too_many) = run_session(
        served["url"],
        served["tokens"]["run"],
        [("search", {"query": "bridge", "instance_id": "nope"}), ("search", {"query": "bridge", "max_results": 99})],
    )
    assert unknown.is_error and "nope" in unknown.content[0].text
    assert too_many.is_error and "max_results" in too_many.content[0].text


@pytest.mark.parametrize(("token", "status"), [(None, 401), ("wrong-token", 401), ("read", 403)])
def test_http_auth_is_enforced(served: dict[str, Any], token: str | None, status: int) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {served['tokens'].get(token, token)}"
    init = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    r = httpx.post(f"{served['url']}/mcp", json=init, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers.get("www-authenticate", "").startswith("Bearer")
