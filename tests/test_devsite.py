"""DevSite: static files with validators and 304s, protected and gone paths, request log, no escapes."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator

import pytest

from server.devsite import DevSite

PROTECTED = ("X-Key", "sesame")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSite]:
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<h1>docs</h1>")
    (root / "docs" / "a b.html").write_text("<p>spaced</p>")
    (root / "members").mkdir()
    (root / "members" / "vip.html").write_text("<p>vip</p>")
    (root / "sitemap.xml.gz").write_bytes(gzip.compress(b"<urlset/>"))
    (root / "robots.txt").write_text("User-agent: *\n")
    (root.parent / "secret.txt").write_text("outside the root")
    with DevSite(root, protected={"/members/": PROTECTED}, gone={"/old.html"}) as s:
        yield s


def get(site: DevSite, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    host, port = site.httpd.server_address[:2]
    conn = http.client.HTTPConnection(str(host), int(port), timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_serves_files_with_type_and_validators(site: DevSite) -> None:
    status, headers, body = get(site, "/docs/index.html")
    assert (status, body) == (200, b"<h1>docs</h1>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["etag"].startswith('"') and headers["last-modified"].endswith("GMT")
    assert headers["content-length"] == str(len(body))
    assert get(site, "/robots.txt")[1]["content-type"] == "text/plain; charset=utf-8"


def test_directories_serve_index_and_names_are_unquoted(site: DevSite) -> None:
    assert get(site, "/")[2] == b"<h1>home</h1>"
    assert get(site, "/docs/")[2] == b"<h1>docs</h1>"
    assert get(site, "/docs/a%20b.html?q=1")[2] == b"<p>spaced</p>"


def test_conditional_get_answers_304(site: DevSite) -> None:
    etag = get(site, "/docs/index.html")[1]["etag"]
    status, headers, body = get(site, "/docs/index.html", {"If-None-Match": etag})
    assert (status, body, headers["etag"]) == (304, b"", etag)
    assert get(site, "/docs/index.html", {"If-None-Match": '"stale"'})[0] == 200


def test_gzip_files_are_not_content_encoded(site: DevSite) -> None:
    status, headers, body = get(site, "/sitemap.xml.gz")
    assert status == 200 and headers["content-type"] == "application/gzip"
    assert "content-encoding" not in headers
    assert gzip.decompress(body) == b"<urlset/>"


def test_missing_gone_and_protected(site: DevSite) -> None:
    assert get(site, "/nope.html")[0] == 404
    assert get(site, "/old.html")[0] == 410
    assert get(site, "/members/vip.html")[0] == 403
    assert get(site, "/members/vip.html", {"X-Key": "wrong"})[0] == 403
    assert get(site, "/members/vip.html", {"X-Key": "sesame"})[2] == b"<p>vip</p>"


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/secret.txt", "/docs/../../secret.txt", "//etc/passwd"])
def test_nothing_outside_the_root_is_served(site: DevSite, path: str) -> None:
    status, _, body = get(site, path)
    assert status == 404 and b"outside" not in body and b"root:" not in body


def test_head_has_no_body(site: DevSite) -> None:
    status, headers, body = get(site, "/docs/index.html", method="HEAD")
    assert (status, body) == (200, b"") and headers["content-length"] == str(len(b"<h1>docs</h1>"))


def test_request_log_in_order_and_clear(site: DevSite) -> None:
    site.clear()
    get(site, "/robots.txt")
    get(site, "/docs/", {"X-Trace": "1"})
    get(site, "/docs/", method="HEAD")
    get(site, "/old.html")
    assert site.paths() == ["/robots.txt", "/docs/", "/old.html"]
    assert site.paths("HEAD") == ["/docs/"]
    assert site.requests[1].headers["X-Trace"] == "1"
    assert [r.status for r in site.requests] == [200, 200, 200, 410]
    site.clear()
    assert site.requests == []
