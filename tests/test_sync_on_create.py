"""Creating a website instance starts its first sync, as Cloudflare's does ("Indexing begins
automatically when you create an AI Search instance"), and "create, then sync" scripts still work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.devsite import DevSite
from tests.conftest import API_TOKEN, FIXTURE_HEADER, FIXTURE_SITE, make_settings, wait_for_job

pytestmark = pytest.mark.slow

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def slow_site() -> Iterator[DevSite]:
    """The fixture site, each answer 0.3 s late: a sync of it stays running for several seconds."""
    with DevSite(FIXTURE_SITE, protected={"/members/": FIXTURE_HEADER}, delay=0.3) as site:
        yield site


def _create(client: TestClient, source: str, **extra: Any) -> None:
    body = {"id": "auto", "type": "web-crawler", "source": source, "source_params": {"include_items": ["**/docs/**"]},
            **extra}
    r = client.post(f"{ACCOUNT}/instances", json=body, headers=AUTH)
    assert r.status_code == 200, r.text


def _jobs(client: TestClient) -> list[dict[str, Any]]:
    return client.get(f"{ACCOUNT}/instances/auto/jobs", headers=AUTH).json()["result"]


def test_creating_an_instance_starts_its_first_sync(slow_site: DevSite, tmp_path: Path, model_dir: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path, model_dir, sync_on_create=True))) as client:
        _create(client, slow_site.url)
        jobs = _jobs(client)
        assert [j["source"] for j in jobs] == ["create"]
        # a script written for "create, then sync" gets the sync already under way, not a 409
        r = client.post(f"{ACCOUNT}/instances/auto/jobs", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["id"] == jobs[0]["id"]
        job = wait_for_job(client, "auto", jobs[0]["id"])
        assert job["status"] == "completed" and job["counters"]["indexed"] >= 3
        hits = client.post(f"{ACCOUNT}/instances/auto/search", json={"query": "saffron harvest"}, headers=AUTH)
        assert hits.json()["result"]["data"][0]["filename"].endswith("/docs/gamma.html")
        # once it has ended, a manual sync starts at once (the creation sync is not a manual request)
        r = client.post(f"{ACCOUNT}/instances/auto/jobs", headers=AUTH)
        assert r.status_code == 200 and r.json()["result"]["id"] != jobs[0]["id"]
        wait_for_job(client, "auto", r.json()["result"]["id"])


def test_a_change_after_creation_is_not_hidden_by_the_running_sync(
    slow_site: DevSite, tmp_path: Path, model_dir: Path
) -> None:
    with TestClient(create_app(make_settings(tmp_path, model_dir, sync_on_create=True))) as client:
        _create(client, slow_site.url)
        first = _jobs(client)[0]
        r = client.patch(f"{ACCOUNT}/instances/auto", json={"source_params": {"include_items": ["**/blog/**"]}},
                         headers=AUTH)
        assert r.status_code == 200, r.text
        r = client.post(f"{ACCOUNT}/instances/auto/jobs", headers=AUTH)
        assert r.status_code == 409 and first["id"] in r.json()["errors"][0]["message"]
        wait_for_job(client, "auto", first["id"])


@pytest.mark.parametrize(("overrides", "extra"), [({"sync_on_create": False}, {}), ({}, {"paused": True})])
def test_no_first_sync_when_turned_off_or_paused(
    fixture_site: DevSite, tmp_path: Path, model_dir: Path, overrides: dict[str, Any], extra: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, model_dir, **{"sync_on_create": True, **overrides})
    with TestClient(create_app(settings)) as client:
        _create(client, fixture_site.url, **extra)
        assert _jobs(client) == []
