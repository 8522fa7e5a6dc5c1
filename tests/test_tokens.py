"""API tokens: create/list/get/revoke, permission scopes on every kind of route, no escalation."""

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
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
READ, EDIT, RUN = "AI Search:Read", "AI Search:Edit", "AI Search:Run"


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("tokens"), model_dir)
    with TestClient(create_app(settings)) as c:
        assert c.post(f"{ACCOUNT}/instances", json={"id": "docs", "type": "r2"}, headers=AUTH).status_code == 200
        yield c


def mint(client: TestClient, *perms: str, headers: dict[str, str] | None = None, **extra: Any) -> Any:
    return client.post(f"{ACCOUNT}/tokens", json={"name": "t", "permissions": list(perms), **extra}, headers=headers or AUTH)


def bearer(response: Any) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['result']['value']}"}


def test_create_shows_secret_once_and_stores_a_hash(client: TestClient) -> None:
    r = mint(client, RUN, READ, folder_prefix="customer-a/")
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    secret = result["value"]
    assert secret.startswith("ss_") and len(secret) > 30
    assert result["permissions"] == [RUN, READ] and result["folder_prefix"] == "customer-a/"
    listed = client.get(f"{ACCOUNT}/tokens", headers=AUTH)
    assert listed.status_code == 200
    assert secret not in listed.text and "value" not in listed.json()["result"][0]
    one = client.get(f"{ACCOUNT}/tokens/{result['id']}", headers=AUTH).json()["result"]
    assert one["id"] == result["id"] and "value" not in one and secret not in str(one)
    state = client.app.state.state  # type: ignore[attr-defined]
    row = state.get_token(result["id"])
    assert secret not in str(row) and len(row["secret_hash"]) == 64


def test_revoked_token_stops_working(client: TestClient) -> None:
    r = mint(client, READ)
    headers, token_id = bearer(r), r.json()["result"]["id"]
    assert client.get(f"{ACCOUNT}/instances", headers=headers).status_code == 200
    assert client.delete(f"{ACCOUNT}/tokens/{token_id}", headers=AUTH).status_code == 200
    assert client.get(f"{ACCOUNT}/instances", headers=headers).status_code == 403
    assert client.delete(f"{ACCOUNT}/tokens/{token_id}", headers=AUTH).status_code == 404
    assert client.get(f"{ACCOUNT}/tokens/{token_id}", headers=AUTH).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "permissions": ["AI Search:Admin"]}, "permissions"),
        ({"name": "x", "permissions": ["ai search:run"]}, "permissions"),
        ({"name": "x", "permissions": []}, "permissions"),
        ({"name": "x", "permissions": "AI Search:Run"}, "permissions"),
        ({"permissions": [READ]}, "name"),
        ({"name": "", "permissions": [READ]}, "name"),
        ({"name": "a\nb", "permissions": [READ]}, "name"),
        ({"name": "x", "permissions": [READ], "folder_prefix": "/abs/"}, "folder_prefix"),
        ({"name": "x", "permissions": [READ], "folder_prefix": 3}, "folder_prefix"),
    ],
)
def test_bad_token_bodies_are_400(client: TestClient, body: dict[str, Any], field: str) -> None:
    r = client.post(f"{ACCOUNT}/tokens", json=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["message"].startswith(field), r.json()


def _calls(client: TestClient) -> dict[str, tuple[str, Any]]:
    """One representative call per route family, with the permission it needs."""
    return {
        "list instances": (READ, lambda h: client.get(f"{ACCOUNT}/instances", headers=h)),
        "get instance": (READ, lambda h: client.get(f"{ACCOUNT}/instances/docs", headers=h)),
        "list items": (READ, lambda h: client.get(f"{ACCOUNT}/instances/docs/items", headers=h)),
        "list jobs": (READ, lambda h: client.get(f"{ACCOUNT}/instances/docs/jobs", headers=h)),
        "create instance": (EDIT, lambda h: client.post(f"{ACCOUNT}/instances", json={"id": "scratch", "type": "r2"}, headers=h)),
        "patch instance": (EDIT, lambda h: client.patch(f"{ACCOUNT}/instances/docs", json={"max_num_results": 7}, headers=h)),
        "upload item": (EDIT, lambda h: upload(client, "docs", "perm/note.txt", b"permission test note", headers=h)),
        "list tokens": (EDIT, lambda h: client.get(f"{ACCOUNT}/tokens", headers=h)),
        "search": (RUN, lambda h: client.post(f"{ACCOUNT}/instances/docs/search", json={"query": "note"}, headers=h)),
        "ai-search": (RUN, lambda h: client.post(f"{ACCOUNT}/instances/docs/ai-search", json={"query": "note"}, headers=h)),
    }


#: What each permission allows: Edit includes Run (a token that may change an instance may query it).
GRANTS = {READ: {READ}, EDIT: {EDIT, RUN}, RUN: {RUN}}


@pytest.mark.parametrize("held", [READ, EDIT, RUN])
def test_each_permission_allows_exactly_its_routes(client: TestClient, held: str) -> None:
    headers = bearer(mint(client, held))
    for name, (needed, call) in _calls(client).items():
        r = call(headers)
        if needed in GRANTS[held]:
            assert r.status_code == 200, (name, r.text)
        else:
            assert r.status_code == 403, (name, r.text)
            assert f"'{needed}'" in r.json()["errors"][0]["message"], (name, r.json())
    client.delete(f"{ACCOUNT}/instances/scratch", headers=AUTH)


def test_missing_or_wrong_bearer(client: TestClient) -> None:
    assert client.get(f"{ACCOUNT}/tokens").status_code == 401
    assert client.get(f"{ACCOUNT}/tokens", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert client.get(f"{ACCOUNT}/tokens", headers={"Authorization": "Basic abc"}).status_code == 401


def test_no_privilege_escalation(client: TestClient) -> None:
    editor = bearer(mint(client, EDIT))
    r = mint(client, READ, headers=editor)
    assert r.status_code == 403 and "AI Search:Read" in r.json()["errors"][0]["message"]
    assert mint(client, EDIT, headers=editor).status_code == 200
    assert mint(client, RUN, headers=editor).status_code == 200  # Edit includes Run
    runner = bearer(mint(client, RUN))
    r = mint(client, EDIT, headers=runner)
    assert r.status_code == 403 and "AI Search:Edit" in r.json()["errors"][0]["message"]
    tenant = mint(client, EDIT, RUN, READ, folder_prefix="tenant-x/")
    tenant_headers, tenant_id = bearer(tenant), tenant.json()["result"]["id"]
    r = mint(client, RUN, headers=tenant_headers)
    assert r.status_code == 403 and r.json()["errors"][0]["message"].startswith("folder_prefix")
    assert mint(client, RUN, headers=tenant_headers, folder_prefix="tenant-y/").status_code == 403
    sub = mint(client, RUN, headers=tenant_headers, folder_prefix="tenant-x/team-1/")
    assert sub.status_code == 200, sub.text
    # a tenant sees and revokes only tokens inside its prefix
    seen = {t["id"] for t in client.get(f"{ACCOUNT}/tokens", headers=tenant_headers).json()["result"]}
    assert seen == {tenant_id, sub.json()["result"]["id"]}
    editor_id = client.get(f"{ACCOUNT}/tokens", headers=AUTH).json()["result"][0]["id"]
    assert client.delete(f"{ACCOUNT}/tokens/{editor_id}", headers=tenant_headers).status_code == 404


@pytest.mark.parametrize("perms", [(READ, EDIT), (EDIT, RUN), (EDIT,)])
def test_both_documented_recipes_can_query(client: TestClient, perms: tuple[str, ...]) -> None:
    """Seeds: the REST API page asks for Read + Edit, the get-started page for Edit + Run."""
    headers = bearer(mint(client, *perms))
    for route in ("search", "ai-search"):
        r = client.post(f"{ACCOUNT}/instances/docs/{route}", json={"query": "note"}, headers=headers)
        assert r.status_code == 200, (route, r.text)


def test_read_only_cannot_query_and_is_told_what_would_do(client: TestClient) -> None:
    r = client.post(f"{ACCOUNT}/instances/docs/search", json={"query": "note"}, headers=bearer(mint(client, READ)))
    assert r.status_code == 403
    assert r.json()["errors"][0]["message"] == (
        "this token lacks the 'AI Search:Run' permission (or 'AI Search:Edit', which includes it)")


def test_wrong_account_is_404(client: TestClient) -> None:
    r = client.get("/client/v4/accounts/other/ai-search/tokens", headers=AUTH)
    assert r.status_code == 404


def test_tenant_edit_token_cannot_change_instances(client: TestClient) -> None:
    tenant = bearer(mint(client, EDIT, READ, folder_prefix="tenant-z/"))
    for r in (
        client.patch(f"{ACCOUNT}/instances/docs", json={"max_num_results": 3}, headers=tenant),
        client.delete(f"{ACCOUNT}/instances/docs", headers=tenant),
        client.post(f"{ACCOUNT}/instances", json={"id": "mine", "type": "r2"}, headers=tenant),
        client.post(f"{ACCOUNT}/instances/docs/jobs", headers=tenant),
    ):
        assert r.status_code == 403, r.text
        assert "restricted to the folder 'tenant-z/'" in r.json()["errors"][0]["message"]
    r = upload(client, "docs", "tenant-z/own.txt", b"a tenant's own note", headers=tenant)
    assert r.status_code == 200, r.text
    item_id = r.json()["result"]["id"]
    assert client.post(f"{ACCOUNT}/instances/docs/items/{item_id}/sync", headers=tenant).status_code == 200
    assert client.delete(f"{ACCOUNT}/instances/docs/items/{item_id}", headers=tenant).status_code == 200
    assert client.get(f"{ACCOUNT}/instances/docs", headers=tenant).status_code == 200


def test_tenant_read_token_cannot_read_sync_jobs(client: TestClient) -> None:
    tenant = bearer(mint(client, READ, folder_prefix="tenant-q/"))
    r = client.get(f"{ACCOUNT}/instances/docs/jobs", headers=tenant)
    assert r.status_code == 403 and "folder-restricted" in r.json()["errors"][0]["message"]
    assert client.get(f"{ACCOUNT}/instances/docs/jobs", headers=AUTH).status_code == 200


def test_cloudflare_service_token_registration_is_answered_and_nothing_is_stored(client: TestClient) -> None:
    """Get-started step 4 (seeds): POST /tokens {cf_api_id, cf_api_key, name} → {id, name, cf_api_id, ...}."""
    before = client.get(f"{ACCOUNT}/tokens", headers=AUTH).json()["result"]
    body = {"cf_api_id": "a1b2c3", "cf_api_key": "very-secret-key", "name": "AI Search Service Token"}
    r = client.post(f"{ACCOUNT}/tokens", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert set(result) == {"id", "name", "cf_api_id", "created_at", "modified_at", "enabled"}
    assert (result["name"], result["cf_api_id"], result["enabled"]) == ("AI Search Service Token", "a1b2c3", True)
    assert "very-secret-key" not in r.text
    again = client.post(f"{ACCOUNT}/tokens", json=body, headers=AUTH).json()["result"]
    assert again["id"] == result["id"]  # the same service token, the same id
    assert client.get(f"{ACCOUNT}/tokens", headers=AUTH).json()["result"] == before  # nothing stored
    # the id goes in an instance's token_id (stored only)
    r = client.post(f"{ACCOUNT}/instances", json={"id": "with-token", "type": "r2", "token_id": result["id"]}, headers=AUTH)
    assert r.status_code == 200 and r.json()["result"]["token_id"] == result["id"]
    client.delete(f"{ACCOUNT}/instances/with-token", headers=AUTH)
    r = client.post(f"{ACCOUNT}/tokens", json={"cf_api_id": "a1b2c3"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["errors"][0]["message"] == "cf_api_key: field required"
    reader = client.post(f"{ACCOUNT}/tokens", json={"name": "r", "permissions": ["AI Search:Read"]}, headers=AUTH)
    r = client.post(f"{ACCOUNT}/tokens", json=body, headers={"Authorization": f"Bearer {reader.json()['result']['value']}"})
    assert r.status_code == 403  # registering needs Edit, as on Cloudflare
