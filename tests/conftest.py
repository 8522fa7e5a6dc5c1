"""Shared fixtures: the fixture website on 127.0.0.1, a built embedding model, settings in a temp dir."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.config import Settings
from server.devsite import DevSite

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SHARED_EVAL = REPO.parent / "shared" / "eval"
FIXTURE_SITE = TESTS / "site"
FIXTURE_HEADER = ("X-Fixture-Key", "open-sesame")
API_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def fixture_site() -> Iterator[DevSite]:
    """The fixture website (robots.txt, sitemap index, .gz child, header-protected /members/)."""
    with DevSite(FIXTURE_SITE, protected={"/members/": FIXTURE_HEADER}) as site:
        yield site


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default ONNX embedding model, built once per test session from the installed package."""
    from indexer.onnx_export import ensure_default_model

    return ensure_default_model(tmp_path_factory.mktemp("models"))


def make_settings(data_dir: Path, model_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: its own data dir, the shared model, deterministic crawling."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "model_dir": model_dir,
        "api_token": API_TOKEN,
        "autothrottle": False,
        "concurrent_requests_per_host": 1,
        "index_poll_interval": 0.1,
        "sync_on_create": False,  # tests start their syncs themselves (tests/test_sync_on_create.py: the default)
    }
    values.update(overrides)
    return Settings(**values)


def wait_for_job(client: Any, instance_id: str, job_id: str, *, timeout: float = 180.0) -> dict[str, Any]:
    """Poll ``GET .../jobs/{job_id}`` through the API until the job ends; returns the job.

    Args:
        client: an API client (``TestClient`` or ``httpx.Client``) for the ``local`` account.
    """
    url = f"/client/v4/accounts/local/ai-search/instances/{instance_id}/jobs/{job_id}"

    def ended() -> dict[str, Any] | None:
        job = client.get(url, headers={"Authorization": f"Bearer {API_TOKEN}"}).json()["result"]
        return job if job["status"] not in ("queued", "running") else None

    return wait_until(ended, timeout=timeout)


def wait_until(predicate: Any, *, timeout: float = 120.0, interval: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


from tests.services import chroma_url, postgres_url, redis_url  # noqa: E402,F401  (service fixtures)
from tests.databases import state  # noqa: E402,F401  (a StateStore on the module's database_url)
