"""Memory of a long rendered crawl: browser contexts are recycled, so RSS plateaus.

Generates a 2,000-page JavaScript site (every page an empty shell that ``/app.js``
fills in: title, ~40 sentences of text, links), serves it on 127.0.0.1 with a sitemap,
and crawls it with ``use_browser_rendering: true`` through the product
(``python -m crawler.run`` in a child process; this process holds the index lock so
the crawler only renders and stores pages).  Every second it samples the resident
memory (PSS) of the whole crawler process tree (Python + Playwright's node driver +
chromium's processes, from ``/proc``) and the number of pages fetched.

Reports the curve (one line per sample), its max and its final value before the
crawler exits, and pages/s.  ``--context-pages N`` sets ``RENDER_CONTEXT_PAGES``
(default 200, the product default); ``--compare`` also runs with recycling off
(one context for the whole crawl) for contrast.

Usage: ``.venv/bin/python bench/render_memory.py [--pages 2000] [--compare]``.
Results: stdout and ``bench/out/render_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from indexer.config import Settings, settings_env  # noqa: E402
from indexer.instance import InstanceConfig  # noqa: E402
from indexer.state import StateStore  # noqa: E402
from indexer.vectorstore import try_own_embedded_store  # noqa: E402
from server.devsite import DevSite  # noqa: E402

APP_JS = r"""
(function () {
  var m = location.pathname.match(/page-(\d+)\.html$/);
  var n = m ? parseInt(m[1], 10) : 0;
  var words = ["orchard", "harbour", "lantern", "glacier", "meadow", "quarry", "beacon", "canyon", "thicket", "estuary"];
  var text = "";
  for (var i = 0; i < 40; i++) {
    text += "<p>Sentence " + i + " of page " + n + " mentions the " + words[(n + i) % 10] +
            " and the " + words[(n * 7 + i) % 10] + " near milestone " + (n * 31 + i) + ".</p>";
  }
  var links = "";
  for (var j = 1; j <= 5; j++) { links += '<a href="/page-' + ((n + j * 37) % TOTAL) + '.html">next ' + j + "</a> "; }
  document.title = "Rendered page " + n;
  document.getElementById("app").innerHTML = "<h1>Rendered page " + n + "</h1>" + text + "<nav>" + links + "</nav>";
})();
"""
SHELL = '<!doctype html><html><head><meta charset="utf-8"><title>Loading</title></head><body><div id="app">Loading</div><script src="/app.js"></script></body></html>\n'


def generate(root: Path, base_url: str, pages: int) -> None:
    (root / "app.js").write_text(APP_JS.replace("TOTAL", str(pages)))
    urls = []
    for n in range(pages):
        (root / f"page-{n}.html").write_text(SHELL)
        urls.append(f"<url><loc>{base_url}/page-{n}.html</loc></url>")
    (root / "sitemap.xml").write_text(
        '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">' + "".join(urls) + "</urlset>"
    )
    (root / "robots.txt").write_text(f"User-agent: *\nAllow: /\nSitemap: {base_url}/sitemap.xml\n")


def tree_rss_mb(root_pid: int) -> float:
    """Proportional resident memory (PSS, MB) of ``root_pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total_kb = 0
    stack = [root_pid]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:  # PSS: shared pages (chromium's many processes share most of theirs) are counted once
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total_kb += int(line.split()[1])
                        break
        except OSError:
            continue
    return total_kb / 1024


def run(site_url: str, data_dir: Path, pages: int, context_pages: int) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    state = StateStore(settings.resolved_database_url)
    cfg = InstanceConfig.model_validate(
        {
            "id": "js",
            "type": "web-crawler",
            "source": site_url,
            "source_params": {"web_crawler": {"parse_options": {"use_browser_rendering": True}}},
        }
    )
    state.create_instance(cfg.id, cfg.type, cfg.source, cfg.model_dump(mode="json"))
    job = state.create_job("js", "cli")["id"]
    lock = try_own_embedded_store(settings)  # the crawler renders and stores; no embedding in this benchmark
    env = {**os.environ, **settings_env(settings), "SCRAPY_SETTINGS_MODULE": "crawler.settings"}
    cmd = [sys.executable, "-m", "crawler.run", "js", "--job", job, "--log-level", "WARNING",
           "-s", f"RENDER_CONTEXT_PAGES={context_pages}"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    curve: list[tuple[float, int, float]] = []
    while proc.poll() is None:
        fetched = int((state.get_job(job) or {}).get("fetched", 0))
        curve.append((round(time.monotonic() - started, 1), fetched, round(tree_rss_mb(proc.pid), 1)))
        time.sleep(1.0)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    elapsed = time.monotonic() - started
    if lock is not None:
        lock.release()
    fetched = int((state.get_job(job) or {}).get("fetched", 0))
    # "final": the last sample taken while pages were still being rendered (before shutdown)
    crawling = [c for c in curve if c[1] < fetched] or curve
    rss = [c[2] for c in curve]
    return {
        "context_pages": context_pages,
        "pages": pages,
        "fetched": fetched,
        "returncode": proc.returncode,
        "wall_s": round(elapsed, 1),
        "pages_per_s": round(fetched / elapsed, 2) if elapsed else 0,
        "rss_max_mb": max(rss) if rss else None,
        "rss_final_mb": crawling[-1][2] if crawling else None,
        "rss_at_25_50_75_pct_mb": [
            next((c[2] for c in curve if c[1] >= fetched * q), None) for q in (0.25, 0.5, 0.75)
        ],
        "curve": curve,
        "stderr_tail": stderr[-1500:] if proc.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--context-pages", type=int, default=200)
    parser.add_argument("--compare", action="store_true", help="also run with recycling off")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/chromium").exists():
        raise SystemExit("/usr/bin/chromium is missing (apt-get install -y chromium)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-render-") as tmp:
        site_dir = Path(tmp, "site")
        site_dir.mkdir()
        with DevSite(site_dir) as site:
            generate(site_dir, site.url, args.pages)
            runs = [args.context_pages] + ([10**9] if args.compare else [])
            for i, n in enumerate(runs):
                r = run(site.url, Path(tmp, f"data{i}"), args.pages, n)
                results.append(r)
                label = "recycling off" if n >= 10**9 else f"recycle every {n} pages"
                print(f"\n== {label}: {r['fetched']}/{args.pages} pages in {r['wall_s']} s ({r['pages_per_s']} pages/s)")
                print("  t(s)  pages  tree PSS (MB)")
                step = max(1, len(r["curve"]) // 40)
                for t, pages_done, mb in r["curve"][::step]:
                    print(f"{t:6.0f} {pages_done:6d} {mb:10.1f}")
                print(f"  RSS max {r['rss_max_mb']} MB, final (last sample while crawling) {r['rss_final_mb']} MB, "
                      f"at 25/50/75% of pages {r['rss_at_25_50_75_pct_mb']} MB")
                if r["stderr_tail"]:
                    print(r["stderr_tail"])
    out = REPO / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "render_memory.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
