"""Sitemap page URLs as the frontier stores them: one item per page, whatever the sitemap's spelling."""

from __future__ import annotations

from pathlib import Path

from tests.test_crawler_robots_fetch import RouteServer, crawl, page, server, text, urlset  # noqa: F401


def test_fragment_urls_are_one_page_and_nothing_stays_queued(server: RouteServer, tmp_path: Path) -> None:
    server.routes["/robots.txt"] = text(f"User-agent: *\nAllow: /\nSitemap: {server.url}/sitemap.xml\n")
    server.routes["/sitemap.xml"] = urlset(server.url, ["/a.html#intro", "/a.html", "/b.html#x", "/c.html"])
    for p in ("/a.html", "/b.html", "/c.html"):
        server.routes[p] = page(p)
    result = crawl(tmp_path, server.url)
    assert sorted(result.items) == [f"{server.url}/a.html", f"{server.url}/b.html", f"{server.url}/c.html"]
    assert {item["status"] for item in result.items.values()} == {"fetched"}
    assert sorted(p for p in server.paths() if p.endswith(".html")) == ["/a.html", "/b.html", "/c.html"]
