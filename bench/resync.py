"""Benchmark: incremental re-sync of a generated 2,000-page site served on 127.0.0.1.

Runs the real API server in-process (it owns the index; the crawler is a child
process, as with ``sitesearch serve``) and measures, from the job counters and the
test server's own request log:

1. the first sync of the whole site;
2. an unchanged re-sync: page GETs other than robots.txt and sitemaps must be 0, and
   nothing is embedded;
3. a re-sync two hours later after 20 pages changed content and ``<lastmod>``, 10
   pages without ``<lastmod>`` (``changefreq hourly``) changed content only (new
   ETag), 15 pages were removed from the sitemap and 5 (``hourly``) answer 410:
   exactly those are fetched, re-embedded or deleted;
4. the wall time of (2) and (3) as a ratio of (1).

The site: 2,000 pages; 1,900 carry an old ``<lastmod>``; 100 have none: 15 are
``hourly`` (the 10 content-only changes and the 5 gone pages), the other 85 are
``daily``, ``weekly`` or have no ``<changefreq>`` (daily).  "Two hours later" is
simulated by moving the stored check times back two hours
(``StateStore.shift_item_times``): the state a sync would see two hours later.
The 30 s manual-sync cooldown is likewise moved past between steps.

Run: ``.venv/bin/python bench/resync.py [--pages 2000] [--data-dir DIR] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from indexer.config import Settings  # noqa: E402
from server.app import create_app  # noqa: E402
from server.devsite import DevSite, write_sitemap_site  # noqa: E402

ACCOUNT = "/client/v4/accounts/local/ai-search"
TOKEN = "bench-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OLD_LASTMOD = "2026-01-01T00:00:00+00:00"
WORDS = (
    "river mountain engine garden harbor library lantern meadow orbit pepper quartz saddle "
    "timber violin walnut yacht zephyr anchor basalt canyon dolphin ember falcon glacier hazel "
    "island jasmine kettle lemon marble nectar oasis pebble quiver raven spruce tundra umber "
    "velvet willow xenon yarrow zinc amber bramble cobalt delta fern grotto heron ivory juniper"
).split()


class GeneratedSite:
    """``n`` HTML pages plus robots.txt and a sitemap, written to ``root``."""

    def __init__(self, root: Path, n: int, seed: int = 7) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.names = [f"page-{i:05d}" for i in range(n)]
        self.entries: dict[str, dict[str, str | None]] = {}
        self.version: dict[str, int] = {}
        no_lastmod = self.names[-100:]
        self.hourly = no_lastmod[:15]
        for i, name in enumerate(self.names):
            if name in self.hourly:
                entry = {"lastmod": None, "changefreq": "hourly"}
            elif name in no_lastmod:
                entry = {"lastmod": None, "changefreq": ("daily", "weekly", None)[i % 3]}
            else:
                entry = {"lastmod": OLD_LASTMOD, "changefreq": None}
            self.entries[name] = entry
            self.version[name] = 0
            self.write(name)

    def text(self, name: str) -> str:
        rng = random.Random(f"{name}-{self.version[name]}")
        sentences = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(rng.randint(4, 9))]
        return " ".join(sentences)

    def write(self, name: str) -> None:
        body = (
            f"<html><head><title>{name} v{self.version[name]}</title></head><body><article>"
            f"<h1>{name}</h1><p>{self.text(name)}</p><p>{self.text(name)[::-1]}</p></article></body></html>"
        )
        (self.root / f"{name}.html").write_text(body)

    def change(self, name: str) -> None:
        self.version[name] += 1
        self.write(name)

    def write_sitemap(self, base: str) -> None:
        write_sitemap_site(self.root, base, self.entries)


def run_sync(client: TestClient, dev: DevSite, state: Any, *, later: float = 0.0) -> dict[str, Any]:
    """One manual sync; returns wall time, job counters and the page GETs the server saw."""
    last = state.last_job("bench")
    if last:
        state.update_job(last["id"], created_at=last["created_at"] - 60)  # past the 30 s cooldown
    if later:
        state.shift_item_times("bench", later)
    dev.clear()
    t0 = time.perf_counter()
    r = client.post(f"{ACCOUNT}/instances/bench/jobs", headers=AUTH)
    r.raise_for_status()
    job_id = r.json()["result"]["id"]
    while True:
        job = client.get(f"{ACCOUNT}/instances/bench/jobs/{job_id}", headers=AUTH).json()["result"]
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    gets = [q for q in dev.requests if q.method == "GET"]
    pages = sorted(q.path for q in gets if q.path != "/robots.txt" and not q.path.startswith("/sitemap"))
    return {
        "wall_s": round(wall, 2),
        "status": job["status"],
        "end_reason": job["end_reason"],
        "counters": job["counters"],
        "page_gets": len(pages),
        "pages": pages,
        "page_304s": sum(1 for q in gets if q.status == 304),
        "other_gets": len(gets) - len(pages),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=None, help="state directory (default: a temporary one)")
    parser.add_argument("--model-dir", type=Path, default=None, help="a built ONNX model directory (default: build)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sitesearch-bench-") as tmp:
        site_root = Path(tmp) / "site"
        site_root.mkdir()
        data_dir = args.data_dir or Path(tmp) / "data"
        site = GeneratedSite(site_root, args.pages)
        settings = Settings(data_dir=data_dir, model_dir=args.model_dir, api_token=TOKEN, sync_on_create=False)
        with DevSite(site_root) as dev, TestClient(create_app(settings)) as client:
            state = client.app.state.state
            site.write_sitemap(dev.url)
            r = client.post(f"{ACCOUNT}/instances", json={"id": "bench", "source": dev.url}, headers=AUTH)
            r.raise_for_status()

            first = run_sync(client, dev, state)
            unchanged = run_sync(client, dev, state)

            with_lastmod = [n for n in site.names if site.entries[n]["lastmod"]]
            changed_lastmod = with_lastmod[100:120]
            removed = with_lastmod[500:515]
            content_only, gone = site.hourly[:10], site.hourly[10:15]
            now_iso = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
            for name in changed_lastmod:
                site.change(name)
                site.entries[name]["lastmod"] = now_iso
            for name in content_only:
                site.change(name)
            for name in removed:
                del site.entries[name]
            dev.gone.update(f"/{n}.html" for n in gone)
            site.write_sitemap(dev.url)
            changed = run_sync(client, dev, state, later=2 * 3600)

            expected_fetch = sorted(f"/{n}.html" for n in changed_lastmod + content_only + gone)
            items, _ = state.list_items("bench", status="deleted", limit=100)
            deleted_keys = sorted("/" + i["key"].rsplit("/", 1)[-1] for i in items)
            vectors = client.app.state.service.vectors.count("bench")
            stats = state.item_stats("bench")

    checks = {
        "first: all pages fetched and indexed": first["counters"]["fetched"] == args.pages
        and first["counters"]["indexed"] == args.pages,
        "unchanged: 0 page GETs": unchanged["page_gets"] == 0,
        "unchanged: 0 embeddings": unchanged["counters"]["indexed"] == 0 and unchanged["counters"]["unchanged"] == 0,
        "changed: exactly the 35 changed/gone pages fetched": changed["pages"] == expected_fetch,
        "changed: 30 re-embedded": changed["counters"]["indexed"] == 30,
        "changed: 20 deleted (15 unlisted + 5 gone)": changed["counters"]["deleted"] == 20
        and deleted_keys == sorted(f"/{n}.html" for n in removed + gone),
        "index holds exactly the live chunks": vectors == stats["chunks"],
    }
    result = {
        "pages": args.pages,
        "first": {k: v for k, v in first.items() if k != "pages"},
        "unchanged": {k: v for k, v in unchanged.items() if k != "pages"},
        "changed": {k: v for k, v in changed.items() if k != "pages"},
        "ratio_unchanged": round(unchanged["wall_s"] / first["wall_s"], 4),
        "ratio_changed": round(changed["wall_s"] / first["wall_s"], 4),
        "checks": checks,
    }
    print(f"sitesearch re-sync benchmark: {args.pages} pages on 127.0.0.1")
    print(f"{'sync':<12}{'wall s':>9}{'page GETs':>11}{'304s':>6}{'fetched':>9}{'not_mod':>9}{'indexed':>9}"
          f"{'unchanged':>11}{'deleted':>9}{'ratio':>8}")
    for name, run in (("first", first), ("unchanged", unchanged), ("changed", changed)):
        c = run["counters"]
        print(f"{name:<12}{run['wall_s']:>9.2f}{run['page_gets']:>11}{run['page_304s']:>6}{c['fetched']:>9}"
              f"{c['not_modified']:>9}{c['indexed']:>9}{c['unchanged']:>11}{c['deleted']:>9}"
              f"{run['wall_s'] / first['wall_s']:>8.3f}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"results written to {args.json}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
