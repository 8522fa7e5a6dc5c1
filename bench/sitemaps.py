"""Sitemap discovery at scale: 1,000,000 URLs over 20 gzipped sitemaps, in bounded memory.

Generates the site (a sitemap index listed in robots.txt, 20 ``.xml.gz`` children of
50,000 URLs each, priorities spread over 0.0-0.9), serves it on 127.0.0.1 and times,
each in its own child process so peak RSS is that tool's alone:

* **sitesearch** - the spider's discovery path run directly (not the Scrapy spider):
  fetch robots.txt and each sitemap over HTTP, parse with :mod:`crawler.sitemaps`
  (streaming), host / path-filter / robots checks as in the spider, record the URLs
  in the on-disk frontier with ``StateStore.record_discovered`` in batches of 1,000,
  then *schedule*: read the whole frontier back with ``StateStore.frontier_batch``
  (500 at a time, as the spider does) and check it comes out in ``priority DESC,
  sequence ASC`` order across all 20 sitemaps.
* **ultimate-sitemap-parser** (``usp``) - ``sitemap_tree_for_homepage`` then
  ``all_pages()`` counted, as a black box, from its own venv ``bench/.venv``
  (``python -m venv bench/.venv && bench/.venv/bin/pip install ultimate-sitemap-parser==1.8.1``).
  It builds the whole tree in memory and does no ordering or persistence, so the
  comparison shows the price of our frontier as much as parsing speed.

Usage: ``.venv/bin/python bench/sitemaps.py [--urls 1000000] [--sitemaps 20]``.
Results go to stdout and ``bench/out/sitemaps.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USP_PYTHON = REPO / "bench" / ".venv" / "bin" / "python"
NS = "http://www.sitemaps.org/schemas/sitemap/0.9"


def generate(root: Path, base_url: str, urls: int, sitemaps: int) -> None:
    """Write robots.txt, sitemap_index.xml and ``sitemaps`` gzipped urlsets under ``root``."""
    per = -(-urls // sitemaps)
    locs = []
    n = 0
    for s in range(sitemaps):
        name = f"sitemap-{s:02d}.xml.gz"
        locs.append(f"<sitemap><loc>{base_url}/{name}</loc></sitemap>")
        comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        chunks = [comp.compress(f'<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="{NS}">\n'.encode())]
        lines = []
        for _ in range(min(per, urls - n)):
            prio = (n * 7919) % 10 / 10
            lines.append(
                f"<url><loc>{base_url}/section-{s:02d}/page-{n:07d}.html</loc>"
                f"<lastmod>2026-0{1 + n % 9}-1{n % 10}</lastmod><priority>{prio:.1f}</priority></url>\n"
            )
            n += 1
            if len(lines) >= 5000:
                chunks.append(comp.compress("".join(lines).encode()))
                lines = []
        chunks.append(comp.compress(("".join(lines) + "</urlset>\n").encode()))
        chunks.append(comp.flush())
        (root / name).write_bytes(b"".join(chunks))
    (root / "sitemap_index.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex xmlns="{NS}">{"".join(locs)}</sitemapindex>\n'
    )
    (root / "robots.txt").write_text(f"User-agent: *\nDisallow: /private/\nSitemap: {base_url}/sitemap_index.xml\n")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_ours(base_url: str, data_dir: str) -> dict[str, object]:
    """Our discovery + scheduling path (run in a child process)."""
    import urllib.request
    from collections import deque

    sys.path.insert(0, str(REPO))
    from crawler.robots import RobotsTxt
    from crawler.sitemaps import ParseReport, SitemapWalk, iter_sitemap
    from indexer.pathfilter import PathFilter
    from indexer.state import StateStore

    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - 127.0.0.1 only
            return r.read()

    state = StateStore(f"sqlite:///{data_dir}/state.db")
    state.create_instance("bench", "web-crawler", base_url, {})
    job = state.create_job("bench", "cli")["id"]
    host = base_url.split("//", 1)[1].split(":")[0]
    flt = PathFilter([], ["**/private/**"])
    started = time.perf_counter()
    robots = RobotsTxt.parse(fetch(base_url + "/robots.txt"))
    queue: deque[tuple[str, int]] = deque((u, 0) for u in robots.sitemaps)
    walk = SitemapWalk()
    buffer: list[dict[str, object]] = []
    seq = discovered = 0
    while queue:
        url, depth = queue.popleft()
        if walk.should_fetch(url, depth):
            continue
        report = ParseReport()
        children = []
        for entry in iter_sitemap(fetch(url), base_url=url, report=report):
            if entry.kind == "sitemap":
                children.append((entry.loc, depth + 1))
                continue
            if entry.loc.split("//", 1)[1].split(":")[0].split("/")[0] != host or flt.skip_reason(entry.loc):
                continue
            if not robots.allowed(entry.loc, "sitesearch"):
                continue
            seq += 1
            buffer.append({"key": entry.loc, "priority": 0.5 if entry.priority is None else entry.priority,
                           "seq": seq, "lastmod": entry.lastmod, "changefreq": entry.changefreq})
            if len(buffer) >= 1000:
                discovered += state.record_discovered("bench", job, buffer)
                buffer = []
        queue.extendleft(reversed(children))
    discovered += state.record_discovered("bench", job, buffer)
    discovery_s = time.perf_counter() - started
    rss_after_discovery = _peak_rss_mb()

    # scheduling: the whole frontier back out in priority order, 500 at a time
    t1 = time.perf_counter()
    cursor = None
    scheduled = 0
    ordered = True
    last: tuple[float, int] | None = None
    while True:
        batch = state.frontier_batch("bench", job, after=cursor, limit=500)
        if not batch:
            break
        for item in batch:
            key = (item["priority"], item["seq"])
            if last is not None and (key[0] > last[0] or (key[0] == last[0] and key[1] < last[1])):
                ordered = False
            last = key
            scheduled += 1
        cursor = (batch[-1]["priority"], batch[-1]["seq"])
    schedule_s = time.perf_counter() - t1
    return {
        "tool": "sitesearch (parse + record_discovered + frontier_batch)",
        "urls": discovered,
        "scheduled": scheduled,
        "priority_order_ok": ordered,
        "discovery_s": round(discovery_s, 2),
        "schedule_s": round(schedule_s, 2),
        "urls_per_s": round(discovered / discovery_s),
        "urls_per_s_incl_schedule": round(discovered / (discovery_s + schedule_s)),
        "peak_rss_mb_discovery": round(rss_after_discovery, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "db_mb": round(Path(data_dir, "state.db").stat().st_size / 2**20, 1),
    }


def child_usp(base_url: str) -> dict[str, object]:
    """ultimate-sitemap-parser as a black box (run in bench/.venv)."""
    import logging

    from usp.tree import sitemap_tree_for_homepage

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    tree = sitemap_tree_for_homepage(base_url + "/", use_known_paths=False)
    count = sum(1 for _ in tree.all_pages())
    elapsed = time.perf_counter() - started
    return {
        "tool": "ultimate-sitemap-parser 1.8.1 (tree + all_pages)",
        "urls": count,
        "discovery_s": round(elapsed, 2),
        "urls_per_s": round(count / elapsed) if elapsed else 0,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def _run_child(cmd: list[str]) -> dict[str, object]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"tool": cmd[0], "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=1_000_000)
    parser.add_argument("--sitemaps", type=int, default=20)
    parser.add_argument("--skip-usp", action="store_true")
    parser.add_argument("--child-ours", nargs=2, metavar=("BASE_URL", "DATA_DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--child-usp", metavar="BASE_URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_ours:
        print(json.dumps(child_ours(*args.child_ours)))
        return 0
    if args.child_usp:
        print(json.dumps(child_usp(args.child_usp)))
        return 0

    sys.path.insert(0, str(REPO))
    from server.devsite import DevSite

    with tempfile.TemporaryDirectory(prefix="bench-sitemaps-") as tmp:
        site_dir, data_dir = Path(tmp, "site"), Path(tmp, "data")
        site_dir.mkdir()
        data_dir.mkdir()
        with DevSite(site_dir) as site:
            t0 = time.perf_counter()
            generate(site_dir, site.url, args.urls, args.sitemaps)
            gz_mb = sum(p.stat().st_size for p in site_dir.glob("*.gz")) / 2**20
            print(f"generated {args.urls:,} URLs in {args.sitemaps} .gz sitemaps ({gz_mb:.1f} MiB) "
                  f"in {time.perf_counter() - t0:.1f} s; serving at {site.url}", flush=True)
            results = [_run_child([sys.executable, __file__, "--child-ours", site.url, str(data_dir)])]
            print(json.dumps(results[0]), flush=True)
            if not args.skip_usp:
                if USP_PYTHON.exists():
                    results.append(_run_child([str(USP_PYTHON), __file__, "--child-usp", site.url]))
                else:
                    results.append({"tool": "ultimate-sitemap-parser", "error": f"{USP_PYTHON} missing (see docstring)"})
                print(json.dumps(results[-1]), flush=True)
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    report = {"urls": args.urls, "sitemaps": args.sitemaps, "gz_mib": round(gz_mb, 1), "results": results}
    (out / "sitemaps.json").write_text(json.dumps(report, indent=2))
    print(f"{'tool':58} {'URLs':>9} {'URLs/s':>8} {'peak RSS MB':>12}")
    for r in results:
        print(f"{str(r.get('tool'))[:58]:58} {r.get('urls', '-')!s:>9} {r.get('urls_per_s', '-')!s:>8} {r.get('peak_rss_mb', '-')!s:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
