"""/ai-search answers: generation through an OpenAI-compatible endpoint, the extractive fallback,
SSE streaming, and query rewriting.

The endpoint is a minimal OpenAI-compatible server written here: it records the exact
request we send and answers like the real API (JSON, or SSE chunks for ``stream: true``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.answer import DEFAULT_REWRITE_PROMPT, DEFAULT_SYSTEM_PROMPT, EXTRACTIVE_PREFIX
from server.app import create_app
from tests.conftest import API_TOKEN, make_settings

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
KEY_ENV = "SITESEARCH_GENERATION_TEST_KEY"
CHUNKS = {
    "tides": ("Tides", "The tide at Port Ellen rises 3.2 metres at spring tides. Neap tides rise about 1.1 metres."),
    "ferry": ("Ferry", "The ferry to Port Ellen leaves Kennacraig twice a day. The crossing takes two hours and twenty minutes."),
}


class ChatServer:
    """A minimal OpenAI-compatible ``/v1/chat/completions`` that records requests."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                system = body["messages"][0]["content"]
                text = "tide rise harbour" if system == DEFAULT_REWRITE_PROMPT else "Spring tides rise 3.2 metres [1]."
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for tok in ("Spring ", "tides ", "rise ", "3.2 metres ", "[1]."):
                        chunk = {"choices": [{"index": 0, "delta": {"content": tok}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.write(b"data: [DONE]\n\n")
                    return
                out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def chat() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory, chat: ChatServer) -> Iterator[TestClient]:
    os.environ[KEY_ENV] = "sk-test-123"
    settings = make_settings(tmp_path_factory.mktemp("answer"), model_dir)
    try:
        with TestClient(create_app(settings)) as c:
            instances = {
                "plain": {},
                "gen": {"ai_search_base_url": chat.url, "ai_search_model": "tiny-chat", "ai_search_api_key_env": KEY_ENV},
            }
            for iid, extra in instances.items():
                r = c.post(f"{ACCOUNT}/instances", json={"id": iid, "type": "r2", **extra}, headers=AUTH)
                assert r.status_code == 200, r.text
                service = c.app.state.service
                for item, (title, text) in CHUNKS.items():
                    meta = {"item_id": item, "filename": f"https://isle.example/{item}.html", "folder": "isle.example/",
                            "timestamp": 0, "title": title, "chunk": 0}
                    service.vectors.replace_item(iid, item, [text], service.embedder.embed([f"{title}\n\n{text}"]), [meta])
            yield c
    finally:
        os.environ.pop(KEY_ENV, None)


def ai_search(client: TestClient, instance: str, **body: Any) -> Any:
    return client.post(f"{ACCOUNT}/instances/{instance}/ai-search", json={"query": "How high do spring tides rise?", **body},
                       headers=AUTH)


def sse_events(text: str) -> list[Any]:
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_extractive_answer_without_generator(client: TestClient) -> None:
    r = ai_search(client, "plain")
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["response"].startswith(EXTRACTIVE_PREFIX)
    assert "3.2 metres at spring tides. [1]" in result["response"]
    assert "Sources:\n[1] Tides — https://isle.example/tides.html" in result["response"]
    assert result["data"][0]["filename"] == "https://isle.example/tides.html"


def test_extractive_answer_streams_sentences(client: TestClient) -> None:
    r = ai_search(client, "plain", stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[0]["data"][0]["filename"].endswith("tides.html")
    pieces = [e["response"] for e in events[1:]]
    assert len(pieces) >= 3 and pieces[0].startswith(EXTRACTIVE_PREFIX)
    assert "".join(pieces) == ai_search(client, "plain").json()["result"]["response"]


def test_rewrite_without_generator_is_400(client: TestClient) -> None:
    for body in ({"rewrite_query": True}, {"ai_search_options": {"query_rewrite": {"enabled": True}}}):
        r = ai_search(client, "plain", **body)
        assert r.status_code == 400
        assert "rewrite_query" in r.json()["errors"][0]["message"]
        assert r.json()["success"] is False


def test_generated_answer_sends_the_exact_request(client: TestClient, chat: ChatServer) -> None:
    chat.requests.clear()
    r = ai_search(client, "gen")
    assert r.status_code == 200, r.text
    response = r.json()["result"]["response"]
    assert response.startswith("Spring tides rise 3.2 metres [1].")
    assert "Sources:\n[1] Tides — https://isle.example/tides.html" in response
    [req] = chat.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    body = req["body"]
    assert set(body) == {"model", "messages", "stream"}
    assert body["model"] == "tiny-chat" and body["stream"] is False
    system, user = body["messages"]
    assert system == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert user["role"] == "user"
    assert user["content"].startswith("Matched documents:\n\n[1] File name: https://isle.example/tides.html\nTitle: Tides\n")
    assert "The tide at Port Ellen rises 3.2 metres" in user["content"]
    assert user["content"].endswith("User's question: How high do spring tides rise?")


def test_request_overrides_model_and_system_prompt(client: TestClient, chat: ChatServer) -> None:
    chat.requests.clear()
    r = ai_search(client, "gen", model="other-model", system_prompt="Answer in one word.")
    assert r.status_code == 200, r.text
    body = chat.requests[0]["body"]
    assert body["model"] == "other-model"
    assert body["messages"][0] == {"role": "system", "content": "Answer in one word."}


def test_generated_answer_streams_tokens(client: TestClient, chat: ChatServer) -> None:
    chat.requests.clear()
    r = ai_search(client, "gen", stream=True)
    assert r.status_code == 200
    events = sse_events(r.text)
    assert "data" in events[0]
    tokens = [e["response"] for e in events[1:]]
    assert tokens[:5] == ["Spring ", "tides ", "rise ", "3.2 metres ", "[1]."]
    assert tokens[5].strip().startswith("Sources:")
    assert chat.requests[0]["body"]["stream"] is True


def test_rewrite_with_generator_searches_the_rewritten_query(client: TestClient, chat: ChatServer) -> None:
    chat.requests.clear()
    r = client.post(f"{ACCOUNT}/instances/gen/search", json={"query": "how high does the sea get", "rewrite_query": True},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["search_query"] == "tide rise harbour"
    assert chat.requests[0]["body"]["messages"][0]["content"] == DEFAULT_REWRITE_PROMPT
    assert chat.requests[0]["body"]["messages"][1] == {"role": "user", "content": "how high does the sea get"}


def test_nlweb_helper_still_imports_extractive_answer() -> None:
    from server.routes.search import extractive_answer

    assert extractive_answer("x", []) == "No relevant content was found for this query."


def test_similarity_cache_header_hit_and_miss(client: TestClient) -> None:
    q = {"query": "When does the ferry to Port Ellen leave?"}
    first = client.post(f"{ACCOUNT}/instances/plain/ai-search", json=q, headers=AUTH)
    assert first.headers["cf-aig-cache-status"] == "MISS"
    again = client.post(f"{ACCOUNT}/instances/plain/ai-search", json={"query": "when does the ferry to port Ellen leave"},
                        headers=AUTH)
    assert again.headers["cf-aig-cache-status"] == "HIT"
    assert again.json()["result"] == first.json()["result"]
    off = client.post(f"{ACCOUNT}/instances/plain/ai-search",
                      json={**q, "ai_search_options": {"cache": {"enabled": False}}}, headers=AUTH)
    assert off.headers["cf-aig-cache-status"] == "MISS"
    other = client.post(f"{ACCOUNT}/instances/plain/ai-search", json={**q, "filters": {"type": "eq", "key": "folder",
                        "value": "isle.example/"}}, headers=AUTH)
    assert other.headers["cf-aig-cache-status"] == "MISS"  # other options, other entry
    bad = client.post(f"{ACCOUNT}/instances/plain/ai-search",
                      json={**q, "ai_search_options": {"cache": {"cache_threshold": "sort_of"}}}, headers=AUTH)
    assert bad.status_code == 400 and "cache_threshold" in bad.text


def test_context_metadata_is_passed_to_generation() -> None:
    from indexer.answer import context_message
    from indexer.search import SearchHit

    hit = SearchHit(
        item_id="i", chunk_id="i:0", filename="customer-a/contract.pdf", folder="customer-a/", timestamp=0,
        title="Contract", text="The fee is 40 EUR.", score=0.8, context="Signed by ACME in 2025; supersedes v1.",
    )
    message = context_message("What is the fee?", [hit])
    assert "Context: Signed by ACME in 2025; supersedes v1." in message
    assert "The fee is 40 EUR." in message


def test_extractive_sentences_by_embedding_find_a_paraphrase(model_dir: Path, tmp_path: Path) -> None:
    """The answer to a paraphrased question: word overlap picks the sentence sharing its words,
    the embedding scorer (what /ai-search uses) the one that answers it."""
    from indexer.answer import embedding_similarity, extractive_sentences
    from indexer.embedder import load_embedder
    from indexer.search import SearchHit

    text = ("The battery sits in a sealed case and the battery weighs three hundred grams. "
            "It runs for forty hours before it needs to be plugged in again.")
    hit = SearchHit(item_id="i", chunk_id="i:0", filename="lamp.html", folder="", timestamp=0, title="Lamp",
                    text=text, score=0.6)
    query = "How long does the battery last?"
    embedder = load_embedder(model_dir, tmp_path)
    by_words = extractive_sentences(query, [hit], max_sentences=1)
    by_meaning = extractive_sentences(query, [hit], max_sentences=1, similarity=embedding_similarity(embedder, query))
    assert by_words == ["The battery sits in a sealed case and the battery weighs three hundred grams. [1]"]
    assert by_meaning == ["It runs for forty hours before it needs to be plugged in again. [1]"]
