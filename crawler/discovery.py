"""Link discovery: pure extraction of crawlable links and the canonical URL from an HTML page.

Used by the ``site`` spider for ``parse_type: "discover"`` (and the fallback when a
site has no sitemap).  Bytes in, URLs out; no network.  Scope rules:

* same host and port as the instance (scheme http/https; ``http://h`` and ``https://h``
  on their default ports are one site, ``http://h:8080`` is another);
* subdomains of that host only with ``include_subdomains``;
* other hosts are returned separately as *external* so the caller can log or
  follow them (``include_external_links``).

Links are made absolute against ``<base href>`` (else the page URL), fragments
are dropped, ``rel="nofollow"`` links and non-HTTP schemes (``mailto:``,
``javascript:``, ``data:``...) are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from lxml import etree, html

from indexer.extract import decode_html

logger = logging.getLogger(__name__)

MAX_LINKS_PER_PAGE = 5000  # more links than this on one page are ignored (spider traps, huge indexes)
MAX_URL_LENGTH = 2048  # characters
_LINK_TAGS = {"a": "href", "area": "href"}


@dataclass(slots=True)
class PageLinks:
    """What one page contributes to discovery."""

    links: list[str] = field(default_factory=list)  # in-scope, absolute, deduplicated, in document order
    external: list[str] = field(default_factory=list)  # absolute http(s) links to other hosts
    canonical: str | None = None  # <link rel="canonical">, absolute, if in scope


@dataclass(frozen=True, slots=True)
class Scope:
    """Which hosts count as "the site".

    Args:
        host: the instance's hostname (lowercase, no port).
        include_subdomains: also accept ``*.host``.
        port: the site's port, None for the scheme's default (see :func:`site_port`).
    """

    host: str
    include_subdomains: bool = False
    port: int | None = None

    def contains(self, url: str) -> bool:
        """True if ``url`` is an http(s) URL on the site's host (or a subdomain when allowed)."""
        try:
            parts = urlsplit(url)
            hostname = (parts.hostname or "").lower()
            port = _port_of(parts)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not hostname or port != self.port:
            return False
        if same_site_host(hostname, self.host):
            return True
        return self.include_subdomains and hostname.endswith("." + self.host)


def same_site_host(hostname: str, site_host: str) -> bool:
    """True if ``hostname`` is the site's host, counting ``www.`` and the bare domain as one site.

    Many sites answer on ``example.com`` and list ``https://www.example.com/...`` in their
    sitemaps (or the reverse); an instance created for either form crawls both.
    """
    hostname, site_host = hostname.lower(), site_host.lower()
    return hostname == site_host or hostname.removeprefix("www.") == site_host.removeprefix("www.")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def site_port(url: str) -> int | None:
    """The port of ``url``, or None when it is its scheme's default (80 for http, 443 for https).

    Two URLs of one host are on the same site when their ``site_port`` is equal:
    ``http://h/`` and ``https://h:443/`` (an http → https redirect) are, ``http://h:8080/``
    is another site.

    Raises:
        ValueError: for a malformed or out-of-range port.
    """
    return _port_of(urlsplit(url))


def _port_of(parts: SplitResult) -> int | None:
    port = parts.port
    return None if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else port


def normalize_link(href: str, base_url: str) -> str | None:
    """Resolve ``href`` against ``base_url``; drop the fragment. None for non-HTTP or malformed links.

    Args:
        href: the attribute value as written.
        base_url: the page URL (or its ``<base href>``).

    Returns:
        An absolute http(s) URL without fragment, or None.
    """
    href = (href or "").strip()
    if not href or href.startswith("#"):
        return None
    try:
        absolute = urljoin(base_url, href)
        parts = urlsplit(absolute)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        netloc = parts.netloc.lower() if "@" not in parts.netloc else parts.netloc
        path = parts.path or "/"
        url = urlunsplit((parts.scheme, netloc, path, parts.query, ""))
    except ValueError:
        return None
    if len(url) > MAX_URL_LENGTH or any(c in url for c in " \t\r\n\0"):
        return None
    return url


def extract_links(body: bytes | str, page_url: str, scope: Scope, content_type: str | None = None) -> PageLinks:
    """Extract the in-scope links, external links and canonical URL of an HTML page.

    Args:
        body: the HTML document.
        page_url: the URL the page was fetched from (after redirects).
        scope: the site's host rules.
        content_type: the HTTP ``Content-Type``; its charset decodes non-ASCII links (see
            :func:`indexer.extract.decode_html`).

    Returns:
        A :class:`PageLinks`; empty when the document cannot be parsed.
    """
    result = PageLinks()
    if not body:
        return result
    try:
        parser = html.HTMLParser(recover=True, no_network=True, remove_comments=True)
        root = html.fromstring(decode_html(body, content_type), parser=parser)
    except (etree.ParserError, ValueError, TypeError) as exc:
        logger.debug("unparseable HTML at %s: %s", page_url, exc)
        return result
    if root is None:
        return result
    base_url = page_url
    for base in root.iter("base"):
        href = base.get("href")
        if href:
            resolved = normalize_link(href, page_url)
            if resolved:
                base_url = resolved
        break
    result.canonical = _canonical(root, base_url, scope)
    seen: set[str] = set()
    count = 0
    for el in root.iter(*_LINK_TAGS):
        if not isinstance(el.tag, str):
            continue
        rel = (el.get("rel") or "").lower().split()
        if "nofollow" in rel:
            continue
        url = normalize_link(el.get(_LINK_TAGS[el.tag.lower()]) or "", base_url)
        if url is None or url in seen:
            continue
        seen.add(url)
        count += 1
        if count > MAX_LINKS_PER_PAGE:
            logger.info("more than %d links on %s: the rest are ignored", MAX_LINKS_PER_PAGE, page_url)
            break
        (result.links if scope.contains(url) else result.external).append(url)
    return result


def canonical_url(body: bytes | str, page_url: str, scope: Scope) -> str | None:
    """The page's ``<link rel="canonical">`` URL if it is absolute-able and in scope, else None.

    Args:
        body: the HTML document.
        page_url: the URL the page was fetched from.
        scope: the site's host rules (a canonical on another host is ignored).

    Returns:
        The canonical URL (fragment dropped) or None.
    """
    if not body:
        return None
    try:
        root = html.fromstring(body, parser=html.HTMLParser(recover=True, no_network=True))
    except (etree.ParserError, ValueError, TypeError):
        return None
    if root is None:
        return None
    return _canonical(root, page_url, scope)


def _canonical(root: html.HtmlElement, base_url: str, scope: Scope) -> str | None:
    for link in root.iter("link"):
        rel = (link.get("rel") or "").lower().split()
        if "canonical" not in rel:
            continue
        url = normalize_link(link.get("href") or "", base_url)
        # only the first canonical counts; one on another host is a hint we do not follow
        return url if url and scope.contains(url) else None
    return None
