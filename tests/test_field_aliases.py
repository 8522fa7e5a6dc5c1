"""Cloudflare's alias field names work on create and on PATCH (where the stored canonical name must not win)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from server.app import create_app
from tests.conftest import API_TOKEN, make_settings

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def _instance(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post(f"{ACCOUNT}/instances", json={"id": "alias", "type": "web-crawler", "source": "example.com", **body},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["result"]


def _patch(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    r = client.patch(f"{ACCOUNT}/instances/alias", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return client.get(f"{ACCOUNT}/instances/alias", headers=AUTH).json()["result"]


def test_score_threshold_alias_on_create_and_patch(tmp_path: Path, model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, model_dir))) as client:
        assert _instance(client, score_threshold=0.5)["match_threshold"] == 0.5
        got = _patch(client, {"score_threshold": 0.7})
        assert got["match_threshold"] == 0.7
        assert "score_threshold" not in got  # no stray copy stored beside the real field
        assert _patch(client, {"match_threshold": 0.2, "score_threshold": 0.9})["match_threshold"] == 0.2  # canonical wins
        r = client.patch(f"{ACCOUNT}/instances/alias", json={"score_threshold": 3}, headers=AUTH)
        assert r.status_code == 400 and "match_threshold" in r.json()["errors"][0]["message"]


def test_crawl_options_alias_on_patch(tmp_path: Path, model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, model_dir))) as client:
        _instance(client, source_params={"web_crawler": {"crawl_options": {"depth": 3}}})
        got = _patch(client, {"source_params": {"web_crawler": {"crawl_options": {"depth": 2}}}})
        crawler = got["source_params"]["web_crawler"]
        assert crawler["discover_options"]["depth"] == 2
        assert "crawl_options" not in crawler


def test_a_validator_naming_its_field_is_not_prefixed_twice(tmp_path: Path, model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, model_dir))) as client:
        body = {"id": "x", "type": "web-crawler", "source": "example.com", "source_params": {"include_items": ["**"] * 11}}
        r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
        assert r.status_code == 400
        assert r.json()["errors"][0]["message"] == "source_params.include_items: at most 10 patterns (got 11)"
        body["source_params"] = {"exclude_items": ["**", ""]}
        r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
        assert r.json()["errors"][0]["message"] == "source_params.exclude_items[1]: empty pattern"
