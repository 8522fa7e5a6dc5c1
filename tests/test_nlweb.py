"""NLWeb ``/ask``: list / summarize / generate, JSON and Server-Sent Events, site resolution and tokens.

The end-to-end part crawls the fixture site through the API (as ``test_crawl_and_search``);
site resolution and decontextualisation are also checked directly on a real state database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.config import Settings
from indexer.state import StateStore
from server.app import create_app
from server.auth import READ, RUN, mint_token
from server.devsite import DevSite
from server.errors import APIError
from server.routes.nlweb import AskParams, decontextualize, resolve_site
from tests.conftest import API_TOKEN, make_settings
from tests.test_mcp import crawl_fixture_site

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def sse_messages(text: str) -> list[dict[str, Any]]:
    """The JSON messages of a Server-Sent Events body (``data:`` lines)."""
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


@pytest.fixture(scope="module")
def client(fixture_site: DevSite, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("nlweb"), model_dir)
    with TestClient(create_app(settings)) as c:
        crawl_fixture_site(c, fixture_site)
        yield c


def ask(client: TestClient, **params: Any) -> dict[str, Any]:
    r = client.get("/ask", params={"streaming": "false", **params}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
def test_list_mode_finds_each_unique_fact(client: TestClient) -> None:
    cases = {
        "How fast is the sodium pumped to cool the reactor?": "/docs/alpha.html",
        "How long is the bridge over the fjord?": "/docs/beta.html",
        "When are cardamom buns served?": "/members/vip.html",
    }
    for query, path in cases.items():
        body = ask(client, query=query)  # the only instance answers when no site is named
        assert body["results"], query
        assert body["results"][0]["url"].endswith(path), (query, [r["url"] for r in body["results"]])


@pytest.mark.slow
def test_response_shape(client: TestClient) -> None:
    body = ask(client, query="tomatoes on a balcony", site="fixture", max_results=2, query_id="q-42")
    assert body["query_id"] == "q-42" and body["site"] == "fixture" and body["mode"] == "list"
    assert body["query"] == body["decontextualized_query"] == "tomatoes on a balcony"
    assert 1 <= len(body["results"]) <= 2
    urls = [r["url"] for r in body["results"]]
    assert len(set(urls)) == len(urls), "one result per page"
    top = body["results"][0]
    assert set(top) == {"url", "name", "site", "score", "description", "schema_object"}
    assert top["url"].endswith("/blog/tomatoes.html") and "balcony" in top["description"].lower()
    assert 0.0 < top["score"] <= 1.0
    schema = top["schema_object"]
    assert schema["@type"] == "WebPage" and schema["url"] == top["url"] and schema["name"] == top["name"]
    assert schema["dateModified"].startswith("20")
    assert "summary" not in body and "nlws" not in body


@pytest.mark.slow
def test_streaming_is_server_sent_events(client: TestClient) -> None:
    r = client.get("/ask", params={"query": "What flowers grow under violet lamps?", "mode": "summarize"}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    messages = sse_messages(r.text)
    kinds = [m["message_type"] for m in messages]
    assert kinds == ["begin-nlweb-response", "result_batch", "summary", "complete"], kinds
    assert len({m["query_id"] for m in messages}) == 1
    assert messages[1]["results"][0]["url"].endswith("/docs/gamma.html")
    assert "Sources:" in messages[2]["message"] and "gamma.html" in messages[2]["message"]


@pytest.mark.slow
def test_generate_mode_answers_with_items(client: TestClient) -> None:
    r = client.post(
        "/ask",
        json={"query": "What can you see of Saturn through the telescope mirror?", "mode": "generate", "streaming": False},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "generate"
    assert body["nlws"]["answer"] and "[1]" in body["nlws"]["answer"]
    assert body["nlws"]["items"] == body["results"]
    assert body["results"][0]["url"].endswith("/blog/telescope.html")


@pytest.mark.slow
def test_prev_makes_a_follow_up_self_contained(client: TestClient) -> None:
    body = ask(client, query="How long is it?", prev="Tell me about the bridge over the fjord")
    assert body["decontextualized_query"] == "Tell me about the bridge over the fjord How long is it?"
    assert body["results"][0]["url"].endswith("/docs/beta.html")
    r = client.get("/ask", params={"query": "How long is it?", "prev": '["x", "the bridge over the fjord"]'}, headers=AUTH)
    kinds = [m["message_type"] for m in sse_messages(r.text)]
    assert kinds[:2] == ["begin-nlweb-response", "decontextualized_query"]
    # a huge conversation is cut to what /search accepts, not an error (found by schemathesis)
    long = ask(client, query="and it?", prev="bridge " * 3000, mode="summarize")
    assert len(long["decontextualized_query"]) == 10_000 and long["summary"]["message"]


@pytest.mark.slow
def test_tokens(client: TestClient) -> None:
    state = client.app.state.state
    read_only, _ = mint_token(state, "nlweb-read", [READ])
    site = client.app.state.state.get_instance("fixture")["source"]
    host = site.split("://", 1)[1].rstrip("/")
    blog, _ = mint_token(state, "nlweb-blog", [RUN], folder_prefix=f"{host}/blog/")
    assert client.get("/ask", params={"query": "x"}).status_code == 401
    r = client.get("/ask", params={"query": "x"}, headers={"Authorization": f"Bearer {read_only}"})
    assert r.status_code == 403 and "AI Search:Run" in r.json()["errors"][0]["message"]
    r = client.get("/ask", params={"query": "bridge over the fjord", "streaming": "false", "site": host},
                   headers={"Authorization": f"Bearer {blog}"})
    assert r.status_code == 200, r.text
    urls = [x["url"] for x in r.json()["results"]]
    assert urls and all("/blog/" in u for u in urls), urls


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"query": "x", "site": "nope"}, 404, "site"),
        ({"query": "   "}, 400, "query"),
        ({"query": "x", "mode": "poem"}, 400, "mode"),
        ({"query": "x", "max_results": 51}, 400, "max_results"),
        ({}, 400, "required"),  # server.errors drops a field named "query" from the message (reported)
    ],
)
def test_bad_input_is_an_enveloped_4xx(client: TestClient, params: dict[str, Any], status: int, needle: str) -> None:
    r = client.get("/ask", params=params, headers=AUTH)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and needle in body["errors"][0]["message"]


# --- without a crawl ------------------------------------------------------------------------
def test_resolve_site(tmp_path: Path) -> None:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        none = Settings(data_dir=tmp_path)
        with pytest.raises(APIError) as err:
            resolve_site(state, none, None)
        assert err.value.status == 400 and "site" in err.value.message
        state.create_instance("docs", "web-crawler", "https://www.example.com/", {})
        assert resolve_site(state, none, None) == "docs"  # the only instance
        assert resolve_site(state, none, "all") == "docs"
        state.create_instance("shop", "web-crawler", "https://shop.example.org/", {})
        with pytest.raises(APIError):
            resolve_site(state, none, "")
        assert resolve_site(state, Settings(data_dir=tmp_path, nlweb_default_instance="shop"), None) == "shop"
        assert resolve_site(state, none, "docs") == "docs"
        assert resolve_site(state, none, "example.com") == "docs"
        assert resolve_site(state, none, "https://shop.example.org/cart") == "shop"
        with pytest.raises(APIError) as err:
            resolve_site(state, none, "other.net")
        assert err.value.status == 404
    finally:
        state.close()


def test_decontextualize_and_prev_forms() -> None:
    assert decontextualize("How long is the bridge?", []) == "How long is the bridge?"
    assert decontextualize("and the price?", ["What does the tour cost"]) == "What does the tour cost and the price?"
    assert decontextualize("Is it waterproof?", ["a", "the X1 watch"]) == "the X1 watch Is it waterproof?"
    assert decontextualize("Which flowers grow under violet lamps?", ["bridge"]) == "Which flowers grow under violet lamps?"
    assert len(decontextualize("is it?", ["x" * 20_000])) == 10_000
    assert AskParams(query="q", prev='["a, b", "c"]').previous() == ["a, b", "c"]
    assert AskParams(query="q", prev="a, b").previous() == ["a", "b"]
    assert AskParams(query="q", prev=["a", " "]).previous() == ["a"]
    assert AskParams(query="q", generate_mode="summarize").effective_mode == "summarize"
