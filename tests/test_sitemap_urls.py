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


def test_a_listed_page_that_never_existed_is_an_error_not_a_deletion(
    server: RouteServer, tmp_path: Path, model_dir: Path
) -> None:
    server.routes["/robots.txt"] = text("User-agent: *\nAllow: /\n")
    server.routes["/sitemap.xml"] = urlset(server.url, ["/real.html", "/broken.html"])
    server.routes["/real.html"] = page("Real", "The ferry timetable changes every spring. " * 10)
    result = crawl(tmp_path, server.url, index=True, model_dir=model_dir, timeout=180)
    items = {k.rsplit("/", 1)[1]: v for k, v in result.items.items()}
    assert items["real.html"]["status"] == "indexed"
    assert items["broken.html"]["status"] == "error" and items["broken.html"]["http_status"] == 404
    assert items["broken.html"]["error"] == "HTTP 404: listed but not found (nothing to index)"
    assert (result.job["indexed"], result.job["errors"], result.job["deleted"]) == (1, 1, 0)
    assert result.job["status"] == "completed"
    assert "HTTP 404: listed but not found" in result.log_text()
