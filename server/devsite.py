"""A small static website server on 127.0.0.1, for the demo, the tests and the benchmarks.

Serves a directory with ETag / Last-Modified and conditional GETs (304), can
require a header on some paths (403 without it), answer 410 for "gone" paths,
and records every request it receives (``requests``) so callers can check what a
crawler fetched and in which order.  ``.gz`` files are served as
``application/gzip`` without ``Content-Encoding``, as many sites serve sitemaps.
"""

from __future__ import annotations

import email.utils
import hashlib
import mimetypes
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def write_sitemap_site(root: Path, base: str, entries: dict[str, dict[str, str | None]]) -> None:
    """Write ``sitemap.xml`` (``<loc>{base}/{name}.html</loc>`` plus the given tags) and a robots.txt naming it.

    Args:
        root: the site directory.
        base: the site's URL (``http://127.0.0.1:PORT``).
        entries: page name → sitemap tags (``lastmod``, ``changefreq``, ``priority``); empty tags are left out.
    """
    rows = []
    for name, tags in entries.items():
        extra = "".join(f"<{k}>{v}</{k}>" for k, v in tags.items() if v)
        rows.append(f"<url><loc>{base}/{name}.html</loc>{extra}</url>")
    (root / "sitemap.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n' + "\n".join(rows) + "\n</urlset>\n"
    )
    (root / "robots.txt").write_text(f"User-agent: *\nAllow: /\nSitemap: {base}/sitemap.xml\n")


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int
    ts: float = field(default_factory=time.time)


class DevSite:
    """A threaded static server; use as a context manager or call :meth:`start`/:meth:`stop`.

    Args:
        root: directory to serve.
        port: 0 picks a free port.
        protected: path prefix → (header name, required value).
        gone: paths that answer 410.
        delay: seconds to sleep before each response.
        content_types: path → ``Content-Type`` value sent as is (e.g. ``text/html`` with no charset).
        extra_headers: path → headers added to its 200 answers (e.g. ``X-Robots-Tag``).
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        protected: dict[str, tuple[str, str]] | None = None,
        gone: set[str] | None = None,
        delay: float = 0.0,
        content_types: dict[str, str] | None = None,
        extra_headers: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.protected = protected or {}
        self.gone = set(gone or ())
        self.delay = delay
        self.content_types = dict(content_types or {})
        self.extra_headers = dict(extra_headers or {})
        self.requests: list[LoggedRequest] = []
        self.in_flight = 0  # requests being answered right now
        self.max_in_flight = 0  # the most ever answered at once (politeness checks)
        self._lock = threading.Lock()
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> DevSite:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="devsite", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> DevSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def paths(self, method: str = "GET") -> list[str]:
        """Paths requested so far, in arrival order."""
        with self._lock:
            return [r.path for r in self.requests if r.method == method]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, req: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(req)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        site = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "devsite/1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr
                return

            def do_HEAD(self) -> None:  # noqa: N802
                self._serve(head=True)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(head=False)

            def _serve(self, *, head: bool) -> None:
                with site._lock:
                    site.in_flight += 1
                    site.max_in_flight = max(site.max_in_flight, site.in_flight)
                try:
                    self._answer(head=head)
                finally:
                    with site._lock:
                        site.in_flight -= 1

            def _answer(self, *, head: bool) -> None:
                if site.delay:
                    time.sleep(site.delay)
                path = unquote(urlsplit(self.path).path)
                status, body, headers = self._resolve(path)
                site._record(LoggedRequest(self.command, self.path, dict(self.headers.items()), status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _resolve(self, path: str) -> tuple[int, bytes, dict[str, str]]:
                if path in site.gone:
                    return 410, b"gone", {"Content-Type": "text/plain"}
                for prefix, (name, value) in site.protected.items():
                    if path.startswith(prefix) and self.headers.get(name) != value:
                        return 403, b"forbidden", {"Content-Type": "text/plain"}
                target = (site.root / path.lstrip("/")).resolve()
                if target.is_dir():
                    target = target / "index.html"
                if site.root not in target.parents and target != site.root or not target.is_file():
                    return 404, b"not found", {"Content-Type": "text/plain"}
                body = target.read_bytes()
                etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
                mtime = email.utils.formatdate(target.stat().st_mtime, usegmt=True)
                if self.headers.get("If-None-Match") == etag:
                    return 304, b"", {"ETag": etag}
                ctype = "application/gzip" if target.suffix == ".gz" else (
                    mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                )
                if ctype.startswith("text/") or ctype in ("application/xml",):
                    ctype += "; charset=utf-8"
                ctype = site.content_types.get(path, ctype)
                return 200, body, {"Content-Type": ctype, "ETag": etag, "Last-Modified": mtime, **site.extra_headers.get(path, {})}

        return Handler
