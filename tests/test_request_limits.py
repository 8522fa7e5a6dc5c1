"""Request bodies are bounded: JSON bodies over ``max_request_bytes`` get 413 in the envelope.

The limit holds whether the size is declared (``Content-Length``) or only counted as the
body streams in (chunked), on ``/search`` (answered before FastAPI's router, see
:mod:`server.asgi`) and on the routes FastAPI serves; file uploads keep their own, larger
limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import API_TOKEN, make_settings
from tests.test_items import upload

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"}
LIMIT = 4096


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("limits"), model_dir, max_request_bytes=LIMIT)
    with TestClient(create_app(settings)) as c:
        assert c.post(f"{ACCOUNT}/instances", json={"id": "notes", "type": "r2"}, headers=AUTH).status_code == 200
        yield c


def body_of(size: int) -> bytes:
    """A valid JSON search body of exactly ``size`` bytes."""
    head, tail = b'{"query": "otters', b'"}'
    return head + b" " * (size - len(head) - len(tail)) + tail


def chunked(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


def assert_too_large(r: Any) -> None:
    assert r.status_code == 413, r.text
    payload = r.json()
    assert payload["success"] is False
    assert payload["errors"][0] == {"code": 7005, "message": f"request body is larger than {LIMIT} bytes"}


@pytest.mark.parametrize("path", ["/instances/notes/search", "/instances/notes/ai-search", "/instances"])
def test_declared_and_streamed_bodies_over_the_limit_get_413(client: TestClient, path: str) -> None:
    assert_too_large(client.post(ACCOUNT + path, content=body_of(LIMIT + 1), headers=AUTH))
    assert_too_large(client.post(ACCOUNT + path, content=chunked(body_of(LIMIT + 1)), headers=AUTH))


def test_legacy_search_path_has_the_same_limit(client: TestClient) -> None:
    r = client.post("/client/v4/accounts/local/autorag/rags/notes/search", content=body_of(LIMIT + 1), headers=AUTH)
    assert_too_large(r)


@pytest.mark.parametrize("path", ["/instances/notes/search", "/instances/notes/ai-search"])
def test_a_body_at_the_limit_is_answered(client: TestClient, path: str) -> None:
    for content in (body_of(LIMIT), chunked(body_of(LIMIT))):
        r = client.post(ACCOUNT + path, content=content, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["search_query"] == "otters"


def test_uploads_keep_their_own_larger_limit(client: TestClient) -> None:
    text = ("Sea otters hold hands while they sleep. " * 400).encode()
    assert len(text) > 3 * LIMIT
    r = upload(client, "notes", "otters.txt", text)
    assert r.status_code == 200, r.text


def test_the_limit_is_a_validated_setting(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_request_bytes"):
        make_settings(tmp_path, model_dir, max_request_bytes=10)
