"""Crawl header values (``include_headers``) are secrets: masked for every token but an unrestricted editor.

Also: ``AI Search:Edit`` includes ``AI Search:Run`` (the seeds' REST API page asks for Read + Edit to query).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import API_TOKEN, make_settings

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
READ, EDIT, RUN = "AI Search:Read", "AI Search:Edit", "AI Search:Run"
MASK = "********"
SECRET = "yyy-very-secret-value"
HEADERS = {"CF-Access-Client-Id": "xxx.access", "CF-Access-Client-Secret": SECRET}


def _body(instance_id: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "id": instance_id,
        "source": "example.com",
        "paused": True,
        "source_params": {"web_crawler": {"parse_options": {"include_headers": headers}}},
    }


def _headers_of(instance: dict[str, Any]) -> dict[str, str]:
    return instance["source_params"]["web_crawler"]["parse_options"]["include_headers"]


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = make_settings(tmp_path_factory.mktemp("secrets"), model_dir)
    with TestClient(create_app(settings)) as c:
        r = c.post(f"{ACCOUNT}/instances", json=_body("private", HEADERS), headers=AUTH)
        assert r.status_code == 200, r.text
        yield c


def token(client: TestClient, *perms: str, **extra: Any) -> dict[str, str]:
    r = client.post(f"{ACCOUNT}/tokens", json={"name": "t", "permissions": list(perms), **extra}, headers=AUTH)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['result']['value']}"}


def stored_headers(client: TestClient, instance_id: str) -> dict[str, str]:
    row = client.app.state.state.get_instance(instance_id)  # type: ignore[attr-defined]
    return row["config"]["source_params"]["web_crawler"]["parse_options"]["include_headers"]


@pytest.mark.parametrize(
    ("perms", "prefix"),
    [((READ, RUN), "customer-a/"), ((READ,), None), ((READ, RUN), None), ((READ, EDIT), "customer-a/")],
)
def test_readers_and_tenants_see_masks(client: TestClient, perms: tuple[str, ...], prefix: str | None) -> None:
    headers = token(client, *perms, **({"folder_prefix": prefix} if prefix else {}))
    one = client.get(f"{ACCOUNT}/instances/private", headers=headers)
    assert one.status_code == 200, one.text
    assert SECRET not in one.text and "xxx.access" not in one.text
    assert _headers_of(one.json()["result"]) == {name: MASK for name in HEADERS}  # names stay visible
    listed = client.get(f"{ACCOUNT}/instances", headers=headers)
    assert listed.status_code == 200 and SECRET not in listed.text
    assert [_headers_of(i) for i in listed.json()["result"] if i["id"] == "private"] == [{n: MASK for n in HEADERS}]


@pytest.mark.parametrize("auth", ["env", "editor"])
def test_unrestricted_editors_see_values(client: TestClient, auth: str) -> None:
    headers = AUTH if auth == "env" else token(client, READ, EDIT)
    assert _headers_of(client.get(f"{ACCOUNT}/instances/private", headers=headers).json()["result"]) == HEADERS
    listed = client.get(f"{ACCOUNT}/instances", headers=headers).json()["result"]
    assert [_headers_of(i) for i in listed if i["id"] == "private"] == [HEADERS]


def test_create_and_patch_responses_follow_the_rule(client: TestClient) -> None:
    r = client.post(f"{ACCOUNT}/instances", json=_body("made", {"X-Key": "k1"}), headers=AUTH)
    assert r.status_code == 200 and _headers_of(r.json()["result"]) == {"X-Key": "k1"}
    r = client.patch(f"{ACCOUNT}/instances/made", json={"max_num_results": 4}, headers=AUTH)
    assert r.status_code == 200 and _headers_of(r.json()["result"]) == {"X-Key": "k1"}
    assert client.delete(f"{ACCOUNT}/instances/made", headers=AUTH).status_code == 200


def test_masked_round_trip_keeps_the_stored_values(client: TestClient) -> None:
    r = client.post(f"{ACCOUNT}/instances", json=_body("trip", HEADERS), headers=AUTH)
    assert r.status_code == 200, r.text
    seen = client.get(f"{ACCOUNT}/instances/trip", headers=token(client, READ)).json()["result"]
    assert _headers_of(seen) == {n: MASK for n in HEADERS}
    # GET (masked) → modify → PATCH the whole thing back with an editor token
    seen["max_num_results"] = 9
    body = {k: v for k, v in seen.items() if k not in ("created_at", "modified_at")}
    r = client.patch(f"{ACCOUNT}/instances/trip", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert stored_headers(client, "trip") == HEADERS
    assert r.json()["result"]["max_num_results"] == 9
    # one header changed, one sent back masked (header names match case-insensitively), one added
    new = {"cf-access-client-id": MASK, "CF-Access-Client-Secret": "rotated", "X-New": "n"}
    r = client.patch(f"{ACCOUNT}/instances/trip", json={"source_params": {"web_crawler": {"parse_options": {
        "include_headers": new}}}}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert stored_headers(client, "trip") == {"cf-access-client-id": "xxx.access", "CF-Access-Client-Secret": "rotated",
                                              "X-New": "n"}
    assert client.delete(f"{ACCOUNT}/instances/trip", headers=AUTH).status_code == 200


def test_a_mask_with_no_stored_value_is_400(client: TestClient) -> None:
    r = client.post(f"{ACCOUNT}/instances", json=_body("copy", {"X-Key": MASK}), headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["message"].startswith("source_params.web_crawler.parse_options.include_headers.X-Key:")
    r = client.patch(f"{ACCOUNT}/instances/private", json={"source_params": {"web_crawler": {"parse_options": {
        "include_headers": {**HEADERS, "X-Other": MASK}}}}}, headers=AUTH)
    assert r.status_code == 400 and "include_headers.X-Other" in r.json()["errors"][0]["message"]
    assert stored_headers(client, "private") == HEADERS


def test_values_never_reach_the_log(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reader = token(client, READ)
    client.get(f"{ACCOUNT}/instances/private", headers=reader)
    client.patch(f"{ACCOUNT}/instances/private", json={"source_params": {"web_crawler": {"parse_options": {
        "include_headers": {"CF-Access-Client-Secret": "bad\nvalue"}}}}}, headers=AUTH)
    client.patch(f"{ACCOUNT}/instances/private", json={"max_num_results": 5}, headers=AUTH)
    assert SECRET not in caplog.text and "bad\nvalue" not in caplog.text


def test_edit_includes_run(client: TestClient) -> None:
    """The seeds' REST API page: a token with Read and Edit uses /search; so does Edit alone."""
    client.post(f"{ACCOUNT}/instances", json={"id": "docs", "type": "r2"}, headers=AUTH)
    for perms in ((READ, EDIT), (EDIT,), (EDIT, RUN)):
        headers = token(client, *perms)
        for route in ("search", "ai-search"):
            r = client.post(f"{ACCOUNT}/instances/docs/{route}", json={"query": "anything"}, headers=headers)
            assert r.status_code == 200, (perms, route, r.text)
    # a tenant editor may query too, restricted to its folder like any tenant token
    tenant = token(client, EDIT, folder_prefix="customer-a/")
    assert client.post(f"{ACCOUNT}/instances/docs/search", json={"query": "x"}, headers=tenant).status_code == 200
    # Read alone still cannot query
    r = client.post(f"{ACCOUNT}/instances/docs/search", json={"query": "x"}, headers=token(client, READ))
    assert r.status_code == 403 and "'AI Search:Run'" in r.json()["errors"][0]["message"]


def test_mcp_scopes_include_run_for_an_editor(client: TestClient) -> None:
    """The MCP server's token check (the SDK requires the ``AI Search:Run`` scope) sees Edit as Run too."""
    import asyncio

    from server.mcp_server import TokenVerifier

    verifier = TokenVerifier(client.app)  # type: ignore[arg-type]
    editor = token(client, READ, EDIT)["Authorization"].removeprefix("Bearer ")
    reader = token(client, READ)["Authorization"].removeprefix("Bearer ")
    editor_token = asyncio.run(verifier.verify_token(editor))
    reader_token = asyncio.run(verifier.verify_token(reader))
    assert editor_token is not None and RUN in editor_token.scopes
    assert reader_token is not None and RUN not in reader_token.scopes


def test_an_invalid_stored_config_is_logged_without_header_values(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler logs why a stored config no longer validates; the ValidationError text quotes no input."""
    app_state = client.app.state  # type: ignore[attr-defined]
    r = client.post(f"{ACCOUNT}/instances", json=_body("stale", HEADERS), headers=AUTH)
    assert r.status_code == 200, r.text
    config = r.json()["result"]
    config["source_params"]["web_crawler"]["parse_options"]["include_headers"]["X-Broken"] = "still-secret\n"
    app_state.state.update_instance_config("stale", config)  # as if a newer validator rejected an old config
    caplog.set_level(logging.WARNING, logger="server.scheduler")
    app_state.scheduler.run_once()
    assert "instance stale: invalid config" in caplog.text
    assert SECRET not in caplog.text and "still-secret" not in caplog.text
    app_state.state.delete_instance("stale")
