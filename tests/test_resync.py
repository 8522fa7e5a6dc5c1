"""End to end: incremental re-syncs of a small generated site through the real API, crawler and index.

One module-scoped server and site; the tests run in order, each a sync of the site
after some change: a scheduled first sync, an unchanged re-sync (no page GETs), a
re-sync after changed / content-only / cosmetic / removed / 410 pages, the >50%
safety guard, and sync-one-item.  Time passing is simulated by moving the stored
check times back (``StateStore.shift_item_times``), which is exactly the state a
later sync would see.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.devsite import DevSite, write_sitemap_site
from tests.conftest import API_TOKEN, make_settings, wait_for_job, wait_until

pytestmark = pytest.mark.slow

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
OLD = "2026-01-01T00:00:00+00:00"
TOPICS = {
    "p1": "The lighthouse keeper polishes the brass lens every evening before dusk.",
    "p2": "Glacier meltwater feeds the turquoise lake below the northern ridge.",
    "p3": "Beekeepers smoke the hive gently before lifting the honey frames.",
    "p4": "The night train to the coast stops at seven quiet mountain stations.",
    "p5": "Sourdough starter needs rye flour and warm water twice a day.",
    "p6": "The cathedral organ has four keyboards and eight thousand pipes.",
    "lm1": "Copper weather vanes turn green after years of coastal rain.",
    "lm2": "Falconers train young hawks with leather lures in open fields.",
    "cf1": "The ferry timetable lists crossings every forty minutes in summer.",
    "cf2": "Terracotta roof tiles are fired twice in the village kiln.",
    "cosm": "Origami cranes need a perfectly square sheet of thin paper.",
    "rm": "The abandoned salt mine hosts concerts in its largest chamber.",
    "gone": "Street musicians gather at the old fountain on market days.",
}


class Site:
    """A generated site on disk: one HTML file per page, a sitemap built from ``entries``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: dict[str, dict[str, str | None]] = {}
        self.texts = dict(TOPICS)
        for name in TOPICS:
            hourly = name in ("cf1", "cf2", "cosm", "gone")
            self.entries[name] = {"lastmod": None if hourly else OLD, "changefreq": "hourly" if hourly else None}
            self.write(name)

    def write(self, name: str, comment: str = "") -> None:
        text = self.texts[name]
        html = (
            f"<html><head><title>Page {name}</title></head><body><!-- {comment} --><article>"
            f"<h1>About {name}</h1><p>{text}</p><p>{text} This is documented on page {name}.</p>"
            "</article></body></html>"
        )
        (self.root / f"{name}.html").write_text(html)

    def write_sitemap(self, base: str) -> None:
        write_sitemap_site(self.root, base, self.entries)


@pytest.fixture(scope="module")
def env(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("resync-site")
    site = Site(root)
    settings = make_settings(tmp_path_factory.mktemp("data"), model_dir, concurrent_requests_per_host=4)
    with DevSite(root) as dev, TestClient(create_app(settings)) as client:
        site.write_sitemap(dev.url)
        r = client.post(f"{ACCOUNT}/instances", json={"id": "resync", "source": dev.url}, headers=AUTH)
        assert r.status_code == 200, r.text
        yield {"site": site, "dev": dev, "client": client, "state": client.app.state.state, "settings": settings}


def wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    return wait_for_job(client, "resync", job_id, timeout=120)


def sync(env: dict[str, Any], *, later: float = 0.0) -> tuple[dict[str, Any], list[str], dict[str, str | None]]:
    """Run a manual sync ``later`` seconds after the previous one; returns the job, page GETs, If-None-Match by page."""
    state = env["state"]
    last = state.last_job("resync")
    if last:  # the 30 s manual-sync cooldown has passed
        state.update_job(last["id"], created_at=last["created_at"] - 60)
    if later:
        state.shift_item_times("resync", later)
    env["dev"].clear()
    r = env["client"].post(f"{ACCOUNT}/instances/resync/jobs", headers=AUTH)
    assert r.status_code == 200, r.text
    job = wait_job(env["client"], r.json()["result"]["id"])
    pages = [q.path for q in env["dev"].requests if q.path.endswith(".html")]
    inm = {q.path: q.headers.get("If-None-Match") for q in env["dev"].requests if q.path.endswith(".html")}
    return job, sorted(pages), inm


def items_by_name(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows, _ = env["state"].list_items("resync", limit=1000)
    return {r["key"].rsplit("/", 1)[-1].removesuffix(".html"): r for r in rows}


def chunks_consistent(env: dict[str, Any]) -> None:
    """Chroma holds exactly the chunks the live items claim: nothing left behind, no duplicates."""
    live = sum(i["chunks"] for i in items_by_name(env).values() if i["status"] != "deleted")
    assert env["client"].app.state.service.vectors.count("resync") == live


def top_hit(env: dict[str, Any], query: str) -> str:
    r = env["client"].post(f"{ACCOUNT}/instances/resync/search", json={"query": query}, headers=AUTH)
    data = r.json()["result"]["data"]
    return data[0]["filename"].rsplit("/", 1)[-1].removesuffix(".html") if data else ""


def test_1_scheduled_first_sync(env: dict[str, Any]) -> None:
    client, state = env["client"], env["state"]
    scheduler = client.app.state.scheduler
    started = scheduler.run_once(now=time.time() + 7 * 3600)  # the default 6 h interval has passed
    assert len(started) == 1
    job = wait_job(client, started[0])
    assert job["source"] == "schedule" and job["status"] == "completed", job
    c = job["counters"]
    assert (c["discovered"], c["fetched"], c["indexed"], c["deleted"], c["errors"]) == (13, 13, 13, 0, 0)
    assert scheduler.next_run("resync") > time.time() + 5 * 3600
    assert state.get_schedule("resync")["spec"] == "interval:21600"
    chunks_consistent(env)


def test_2_unchanged_resync_fetches_no_page(env: dict[str, Any]) -> None:
    r = env["client"].post(f"{ACCOUNT}/instances/resync/jobs", headers=AUTH)
    assert r.status_code == 429, r.text  # within 30 s of the previous sync
    assert "every 30 s" in r.json()["errors"][0]["message"] and "Retry-After" in r.headers
    job, pages, _ = sync(env)
    assert job["status"] == "completed"
    assert pages == []
    c = job["counters"]
    assert (c["fetched"], c["not_modified"], c["indexed"], c["unchanged"], c["deleted"]) == (0, 13, 0, 0, 0)
    logs = env["client"].get(f"{ACCOUNT}/instances/resync/jobs/{job['id']}/logs?per_page=1000", headers=AUTH).json()
    reasons = {line["url"].rsplit("/", 1)[-1]: line["message"] for line in logs["result"] if line["url"]}
    assert reasons["p1.html"] == "not modified: sitemap lastmod unchanged since the last fetch"
    assert reasons["cf1.html"].startswith("not modified: changefreq hourly")


def test_3_changes_fetch_exactly_what_changed(env: dict[str, Any]) -> None:
    site, dev = env["site"], env["dev"]
    now_iso = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    for name in ("lm1", "lm2"):  # content and lastmod
        site.texts[name] = f"Rewritten: the {name} page now explains how zeppelins are moored to tall masts."
        site.entries[name]["lastmod"] = now_iso
        site.write(name)
    site.texts["lm1"] = "Rewritten: submarine cables are repaired by ships with grappling hooks."
    site.write("lm1")
    site.texts["cf1"] = "Rewritten: the ferry now carries bicycles free of charge on weekdays."
    site.write("cf1")  # content only: no lastmod, the ETag changes
    site.write("cf2", comment="cache-buster 2")  # cosmetic: new ETag, same extracted text
    site.write("cosm")  # hourly but untouched: a 304
    del site.entries["rm"]  # removed from the sitemap
    dev.gone.add("/gone.html")
    site.write_sitemap(dev.url)

    job, pages, inm = sync(env, later=2 * 3600)  # two hours later: hourly pages are due
    assert job["status"] == "completed", job
    assert pages == ["/cf1.html", "/cf2.html", "/cosm.html", "/gone.html", "/lm1.html", "/lm2.html"]
    assert inm["/cf1.html"] and inm["/cosm.html"]  # conditional re-fetches
    c = job["counters"]
    assert c["discovered"] == 12
    assert c["fetched"] == 5  # 200s and the 410; the 304 is counted as not_modified
    assert c["not_modified"] == 6 + 1
    assert c["indexed"] == 3  # lm1, lm2, cf1
    assert c["unchanged"] == 1  # cf2: new ETag, same content
    assert c["deleted"] == 2  # rm (not in the sitemap) and gone (410)
    assert c["errors"] == 0
    items = items_by_name(env)
    assert items["rm"]["status"] == "deleted" and items["gone"]["status"] == "deleted"
    assert items["rm"]["chunks"] == 0 and items["gone"]["http_status"] == 410
    chunks_consistent(env)
    assert top_hit(env, "How are submarine cables repaired?") == "lm1"
    assert top_hit(env, "Can I take my bicycle on the ferry?") == "cf1"
    assert top_hit(env, "Where do concerts take place in a salt mine?") != "rm"


def test_4_safety_guard_deletes_nothing(env: dict[str, Any]) -> None:
    site = env["site"]
    kept = dict(site.entries)
    site.entries = {k: v for k, v in kept.items() if k in ("p1", "p2")}  # 9 of 11 live items vanish
    site.write_sitemap(env["dev"].url)
    try:
        before = env["client"].app.state.service.vectors.count("resync")
        job, pages, _ = sync(env)
        assert job["status"] == "completed", job
        assert job["end_reason"].startswith("warning: safety guard")
        assert job["counters"]["deleted"] == 0
        assert env["client"].app.state.service.vectors.count("resync") == before
        assert sum(i["status"] == "indexed" for i in items_by_name(env).values()) == 11
    finally:
        site.entries = kept
        site.write_sitemap(env["dev"].url)


def test_5_sync_one_item(env: dict[str, Any]) -> None:
    client, dev = env["client"], env["dev"]
    dev.clear()
    url = f"{dev.url}/p3.html"
    r = client.post(f"{ACCOUNT}/instances/resync/jobs/sync-item", json={"url": url}, headers=AUTH)
    assert r.status_code == 200, r.text
    job = wait_job(client, r.json()["result"]["id"])
    assert job["status"] == "completed", job
    pages = [q for q in dev.requests if q.path.endswith(".html")]
    assert [q.path for q in pages] == ["/p3.html"]
    assert pages[0].headers.get("If-None-Match") is None  # forced: not conditional
    assert job["counters"]["indexed"] == 1 and job["counters"]["deleted"] == 0
    chunks_consistent(env)
    r = client.post(f"{ACCOUNT}/instances/resync/jobs/sync-item", json={"url": "https://elsewhere.example/x"}, headers=AUTH)
    assert r.status_code == 400 and "url" in r.json()["errors"][0]["message"]


def test_6_cancel_a_running_job(env: dict[str, Any]) -> None:
    client, dev, state = env["client"], env["dev"], env["state"]
    last = state.last_job("resync", full_sync_only=True)
    state.update_job(last["id"], created_at=last["created_at"] - 60)
    dev.delay = 1.0  # a slow site: the job is still running when the cancel arrives
    try:
        r = client.post(f"{ACCOUNT}/instances/resync/jobs", headers=AUTH)
        assert r.status_code == 200, r.text
        job_id = r.json()["result"]["id"]
        r = client.post(f"{ACCOUNT}/instances/resync/jobs/{job_id}/cancel", headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["result"]["status"] == "cancelled"
        r = client.post(f"{ACCOUNT}/instances/resync/jobs/{job_id}/cancel", headers=AUTH)
        assert r.status_code == 409
        wait_until(lambda: not client.app.state.runner._procs, timeout=30)
    finally:
        dev.delay = 0.0
    assert state.get_job(job_id)["status"] == "cancelled"
    job, pages, _ = sync(env)  # the next sync runs normally
    assert job["status"] == "completed" and pages == []
