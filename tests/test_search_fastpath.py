"""``/search``'s own request path: body, auth and error order, and the instance config cache.

The route validates its body and authenticates without FastAPI's dependency machinery
and reuses an instance's config for ``instance_cache_seconds``; these tests pin that its
answers (statuses, messages, order of checks) are those of every other route, that a
PATCH or DELETE in this process takes effect at once, and that a change made elsewhere
(another API process on the same database) takes effect within the TTL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from indexer.state import StateStore
from server.app import create_app
from server.auth import READ, RUN
from server.deps import InstanceCache
from server.errors import APIError
from tests.conftest import API_TOKEN, make_settings, wait_until
from tests.test_items import upload

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
NOTES = {
    "otters.txt": b"Sea otters float on their backs and hold hands while they sleep in kelp forests.",
    "beavers.txt": b"Beavers build dams of branches and mud across streams, making ponds where they live.",
    "herons.txt": b"Herons stand still in shallow water, waiting to spear fish with their long beaks.",
}


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("fastpath"), model_dir, instance_cache_seconds=60)
    with TestClient(create_app(settings)) as c:
        assert c.post(f"{ACCOUNT}/instances", json={"id": "animals", "type": "r2"}, headers=AUTH).status_code == 200
        for name, data in NOTES.items():
            assert upload(c, "animals", name, data).status_code == 200
        wait_until(lambda: c.get(f"{ACCOUNT}/instances/animals/stats", headers=AUTH).json()["result"]["indexed"] == 3)
        yield c


def search(client: TestClient, body: Any = None, *, instance: str = "animals", headers: dict[str, str] | None = None,
           **kw: Any) -> Any:
    kw = kw or {"json": body}
    return client.post(f"{ACCOUNT}/instances/{instance}/search", headers=headers or AUTH, **kw)


def message(r: Any) -> str:
    payload = r.json()
    assert payload["success"] is False and payload["result"] is None
    return payload["errors"][0]["message"]


def stored_token(client: TestClient, *perms: str) -> dict[str, str]:
    r = client.post(f"{ACCOUNT}/tokens", json={"name": "fastpath", "permissions": list(perms)}, headers=AUTH)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['result']['value']}"}


def test_search_and_legacy_alias_answer_alike(client: TestClient) -> None:
    r = search(client, {"query": "which animal sleeps holding hands", "max_num_results": 2})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["search_query"] == "which animal sleeps holding hands"
    assert result["data"][0]["filename"] == "otters.txt" and len(result["data"]) == 2
    legacy = client.post("/client/v4/accounts/local/autorag/rags/animals/search",
                         json={"query": "which animal sleeps holding hands", "max_num_results": 2}, headers=AUTH)
    assert legacy.status_code == 200 and legacy.json()["result"]["data"] == result["data"]
    # the nested form and messages work as on /ai-search
    r = search(client, {"messages": [{"role": "user", "content": "dams across streams"}],
                        "ai_search_options": {"retrieval": {"max_num_results": 1}}})
    assert r.status_code == 200 and [d["filename"] for d in r.json()["result"]["data"]] == ["beavers.txt"]


def test_bad_bodies_name_the_field(client: TestClient) -> None:
    r = search(client, content=b"", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and message(r) == "body: field required"
    r = search(client, content=b'{"query": ', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in message(r)
    r = search(client, content=b'{"query": "x"}', headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 400 and message(r) == "body: must be a JSON object, sent with Content-Type: application/json"
    for path in ("search", "ai-search"):  # curl -d without a Content-Type sends a form: say what to do
        r = client.post(f"{ACCOUNT}/instances/animals/{path}", content=b'{"query": "x"}',
                        headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 400 and "Content-Type: application/json" in message(r), r.text
        assert "SearchRequest" not in message(r)
    r = search(client, content=b'["query"]', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400 and message(r).startswith("body:")
    r = search(client, {"query": "x", "max_num_results": "many"})
    assert r.status_code == 400 and message(r).startswith("max_num_results:")
    r = search(client, {"query": "x", "ai_search_options": {"retrieval": {"max_num_results": 99}}})
    assert r.status_code == 400 and message(r).startswith("ai_search_options.retrieval.max_num_results:")
    r = search(client, {"messages": [{"role": "user"}]})
    assert r.status_code == 400 and message(r) == "messages[0].content: field required"
    # no Content-Type: parsed as JSON, as FastAPI does
    r = search(client, content=b'{"query": "kelp"}')
    assert r.status_code == 200, r.text


def test_checks_run_in_the_routes_order(client: TestClient) -> None:
    bad_body = {"max_num_results": 0}
    r = client.post("/client/v4/accounts/other/ai-search/instances/animals/search", json=bad_body)
    assert r.status_code == 404 and "other" in message(r)  # account first
    r = search(client, bad_body, headers={"X": "no auth"})
    assert r.status_code == 401 and "Authorization" in message(r) and r.headers["WWW-Authenticate"] == "Bearer"
    r = search(client, bad_body, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 403 and message(r) == "invalid API token"  # a stored-token miss still beats the body
    reader = stored_token(client, READ)
    r = search(client, bad_body, headers=reader)
    assert r.status_code == 403 and RUN in message(r)
    runner = stored_token(client, RUN)
    r = search(client, bad_body, headers=runner)
    assert r.status_code == 400 and "max_num_results" in message(r)  # the body before the instance
    r = search(client, {"query": "x"}, instance="nope", headers=runner)
    assert r.status_code == 404 and "nope" in message(r)
    r = search(client, {"query": "kelp forests"}, headers=runner)
    assert r.status_code == 200 and r.json()["result"]["data"][0]["filename"] == "otters.txt"


def test_patch_and_delete_take_effect_at_once_in_this_process(client: TestClient) -> None:
    assert client.post(f"{ACCOUNT}/instances", json={"id": "scratch", "type": "r2", "max_num_results": 5},
                       headers=AUTH).status_code == 200
    for name, data in NOTES.items():
        assert upload(client, "scratch", name, data).status_code == 200
    wait_until(lambda: client.get(f"{ACCOUNT}/instances/scratch/stats", headers=AUTH).json()["result"]["indexed"] == 3)
    assert len(search(client, {"query": "animals"}, instance="scratch").json()["result"]["data"]) == 3  # now cached
    r = client.patch(f"{ACCOUNT}/instances/scratch", json={"max_num_results": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert len(search(client, {"query": "animals"}, instance="scratch").json()["result"]["data"]) == 1
    assert client.delete(f"{ACCOUNT}/instances/scratch", headers=AUTH).status_code == 200
    r = search(client, {"query": "animals"}, instance="scratch")
    assert r.status_code == 404 and "scratch" in message(r)


def test_cache_sees_other_processes_changes_within_the_ttl(tmp_path: Path) -> None:
    # another API process changes the shared database: this one sees it when its entry expires
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        state.create_instance("shared", "r2", None, {"id": "shared", "type": "r2", "max_num_results": 5})
        cache = InstanceCache(ttl=0.3)
        assert cache.get(state, "shared").max_num_results == 5
        state.update_instance_config("shared", {"id": "shared", "type": "r2", "max_num_results": 2})
        assert cache.get(state, "shared").max_num_results == 5  # within the TTL: the cached config
        time.sleep(0.35)
        assert cache.get(state, "shared").max_num_results == 2
        state.delete_instance("shared")
        assert cache.peek("shared") is not None
        time.sleep(0.35)
        with pytest.raises(APIError) as exc:
            cache.get(state, "shared")
        assert exc.value.status == 404
        # a missing instance is not cached: it is found as soon as it exists
        state.create_instance("shared", "r2", None, {"id": "shared", "type": "r2", "max_num_results": 3})
        assert cache.get(state, "shared").max_num_results == 3
        # forget() drops the entry at once; ttl 0 never caches
        state.update_instance_config("shared", {"id": "shared", "type": "r2", "max_num_results": 4})
        cache.forget("shared")
        assert cache.get(state, "shared").max_num_results == 4
        uncached = InstanceCache(ttl=0)
        uncached.get(state, "shared")
        assert uncached.peek("shared") is None
    finally:
        state.close()
