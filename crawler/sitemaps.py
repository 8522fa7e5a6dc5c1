"""Pure, streaming, hostile-input-safe sitemap parsing.

Bytes in, :class:`SitemapEntry` records out; no network, no file access. The
spider fetches, this module parses. Supported forms: XML ``urlset`` and
``sitemapindex`` (any or no namespace, including the old 0.84 one), gzip
(detected by magic bytes), plain-text sitemaps, RSS 2.0 / RSS 1.0 and Atom
feeds. See ``docs/sitemaps.md`` for limits and the error messages.

Pipeline (all stages are incremental, so memory stays bounded):

1. a bounded reader slices the body (or gunzips it) into chunks, stopping at
   ``max_bytes`` of uncompressed data;
2. an incremental decoder turns them into text (BOM / XML declaration sniffed,
   invalid bytes replaced);
3. for XML, a sanitiser repairs the common breakage of real-world sitemaps
   (bare ``&``, HTML entities, control characters) and drops every
   non-predefined entity reference, so nothing is ever expanded;
4. a strict ``lxml`` pull parser (no DTD loading, no network, no entity
   expansion, no huge trees) yields entries as their end tags arrive and
   clears the tree behind it. On a structural error the error is reported and
   parsing resumes at the next entry start tag after the error position.
"""

from __future__ import annotations

import codecs
import html.entities
import logging
import math
import re
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urldefrag, urljoin, urlsplit
from xml.sax.saxutils import quoteattr

from lxml import etree

logger = logging.getLogger(__name__)

MAX_URLS_PER_SITEMAP = 50_000
MAX_SITEMAP_BYTES = 50 * 1024 * 1024  # uncompressed
MAX_DECOMPRESSED_BYTES = MAX_SITEMAP_BYTES  # gzip cap
MAX_INDEX_DEPTH = 10
MAX_URL_LENGTH = 2048  # sitemaps.org: "less than 2,048 characters"
MAX_XML_ERRORS = 100  # structural XML errors (each costs a resync) before giving up
MAX_REPORTED_ERRORS = 20  # further per-problem messages are counted, not stored

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 64 * 1024  # bytes of input per step
_OUT_CHUNK = 256 * 1024  # max bytes of gunzipped output per step
_WINDOW_CHARS = 1 << 20  # sanitised text kept to locate an XML error for resync
_MAX_TEXT_LINE = 8192  # longer lines in a text sitemap are dropped
_CHANGEFREQS = frozenset({"always", "hourly", "daily", "weekly", "monthly", "yearly", "never"})
_PREDEFINED_ENTITIES = frozenset({"amp", "lt", "gt", "quot", "apos"})
_UNSAFE_CODECS = frozenset(
    {"unicode_escape", "raw_unicode_escape", "idna", "punycode", "utf_7", "undefined"}
)

# Root element local name -> report format; entry local name -> entry kind.
_ROOT_FORMATS = {
    "urlset": "urlset",
    "sitemapindex": "sitemapindex",
    "rss": "rss",
    "rdf": "rss",  # RSS 1.0 (rdf:RDF)
    "feed": "atom",
}
_ENTRY_KINDS: dict[str, dict[str, Literal["url", "sitemap"]]] = {
    "urlset": {"url": "url", "sitemap": "sitemap"},
    "sitemapindex": {"url": "url", "sitemap": "sitemap"},
    "rss": {"item": "url"},
    "atom": {"entry": "url"},
}

_XML_DECL_ENCODING = re.compile(
    rb"""^\s*<\?xml[^>]{0,200}?encoding\s*=\s*["']([A-Za-z0-9._:-]{1,40})["']"""
)
_CTRL = "[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]"
_SANITISER_PATTERNS = (
    re.compile(r"&|<!\[CDATA\[|<!--|" + _CTRL),  # normal markup/content
    re.compile(r"\]\]>|" + _CTRL),  # inside CDATA
    re.compile(r"-->|" + _CTRL),  # inside a comment
)
_REF = re.compile(r"&(#[0-9]{1,10}|#[xX][0-9a-fA-F]{1,8}|[A-Za-z_][\w.-]{0,59});")
_FAST_ABSOLUTE_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#][!-\[\]-~]*)?\Z")
_TEXT_URL = re.compile(r"(?:https?://|/)\S*\Z", re.IGNORECASE)
_W3C_DATETIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)?)?)?)?\Z",
    re.IGNORECASE | re.ASCII,
)


@dataclass(frozen=True, slots=True)
class SitemapEntry:
    """One URL (or child sitemap) listed in a sitemap."""

    loc: str  # absolute URL
    kind: Literal["url", "sitemap"]
    lastmod: str | None  # as written (trimmed)
    changefreq: str | None  # lowercased if valid, else None
    priority: float | None  # clamped to [0, 1]; None if absent/invalid


@dataclass
class ParseReport:
    """What happened while parsing one sitemap body (complete once the generator is exhausted)."""

    format: str = "unknown"  # "urlset" | "sitemapindex" | "text" | "rss" | "atom" | "unknown"
    urls: int = 0
    sitemaps: int = 0
    skipped_over_limit: int = 0
    errors: list[str] = field(default_factory=list)


def is_gzip(body: bytes) -> bool:
    """Tell whether ``body`` starts with the gzip magic bytes.

    Args:
        body: raw response body.

    Returns:
        True for gzip data, whatever the URL extension or content type said.
    """
    return bytes(body[:2]) == _GZIP_MAGIC


def iter_sitemap(
    body: bytes,
    *,
    base_url: str,
    report: ParseReport | None = None,
    max_urls: int = MAX_URLS_PER_SITEMAP,
    max_bytes: int = MAX_SITEMAP_BYTES,
    include_alternates: bool = False,
) -> Iterator[SitemapEntry]:
    """Yield the entries of a sitemap body as they are parsed.

    Never raises on bad input: problems go to ``report.errors`` (and
    ``logger.warning``); whatever was parsed before a problem is still yielded.

    Args:
        body: raw body (gzip is detected by magic bytes and decompressed).
        base_url: the sitemap's own URL; relative ``loc`` values resolve against it.
        report: filled in as parsing goes; complete once the generator is exhausted.
        max_urls: entries yielded at most; the rest are counted in ``report.skipped_over_limit``.
        max_bytes: uncompressed bytes read at most (also the gzip decompression cap).
        include_alternates: also yield ``xhtml:link rel="alternate" href`` URLs of ``<url>``
            entries (as ``kind="url"`` entries without lastmod/changefreq/priority).

    Returns:
        An iterator of :class:`SitemapEntry`.
    """
    if report is None:
        report = ParseReport()
    parser = _SitemapParser(report, base_url or "", max_urls, max_bytes, include_alternates)
    return parser.run(body)


def parse_lastmod(value: str | None) -> datetime | None:
    """Parse a sitemap ``lastmod`` / feed date.

    Args:
        value: W3C datetime (``2004``, ``2004-10``, ``2004-10-01``, ``2004-10-01T18:23:17+00:00``,
            fractions, ``Z``), or an RFC 822 date as used by RSS ``pubDate``.

    Returns:
        An aware UTC datetime (naive input is taken as UTC), or None when unparseable.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 100:
        return None
    match = _W3C_DATETIME.match(text)
    if match:
        return _w3c_to_datetime(match)
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        parsed = None
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    try:
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        return None


def resolve_sitemap_url(ref: str, base_url: str) -> str | None:
    """Resolve a sitemap reference (e.g. a robots.txt ``Sitemap:`` value).

    Args:
        ref: absolute (any scheme case), relative (``/s.xml``, ``s.xml``) or
            scheme-relative (``//host/s.xml``) URL.
        base_url: URL the reference was found at (robots.txt or site root).

    Returns:
        An absolute http(s) URL, or None when ``ref`` is empty or not http(s).
    """
    if not isinstance(ref, str):
        return None
    return _absolute_url(ref, base_url or "")


class SitemapWalk:
    """Cycle and depth bookkeeping for recursive index traversal (pure).

    The spider asks :meth:`should_fetch` before fetching each sitemap; depth 0
    is a sitemap found in robots.txt or configured, its children are depth 1.
    """

    def __init__(self, max_depth: int = MAX_INDEX_DEPTH, *, max_sitemaps: int | None = None) -> None:
        """Create an empty walk.

        Args:
            max_depth: deepest index nesting allowed.
            max_sitemaps: optional cap on the number of sitemaps fetched in total.
        """
        self.max_depth = max_depth
        self.max_sitemaps = max_sitemaps
        self._seen: set[str] = set()

    def should_fetch(self, url: str, depth: int) -> str | None:
        """Decide whether to fetch a sitemap.

        Args:
            url: absolute sitemap URL.
            depth: nesting depth (0 = top level).

        Returns:
            None to go ahead (the URL is then marked seen), else the reason:
            ``"depth N exceeds M"``, ``"cycle: already fetched"``,
            ``"invalid URL"`` or ``"limit: N sitemaps already fetched"``.
        """
        if depth > self.max_depth:
            return f"depth {depth} exceeds {self.max_depth}"
        key = _walk_key(url)
        if key is None:
            return "invalid URL"
        if key in self._seen:
            return "cycle: already fetched"
        if self.max_sitemaps is not None and len(self._seen) >= self.max_sitemaps:
            return f"limit: {self.max_sitemaps} sitemaps already fetched"
        self._seen.add(key)
        return None

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and _walk_key(url) in self._seen


# --------------------------------------------------------------------------- helpers


def _walk_key(url: str) -> str | None:
    absolute = _absolute_url(url, "")
    if absolute is None:
        return None
    absolute = urldefrag(absolute)[0]
    parts = urlsplit(absolute)
    netloc = parts.netloc.lower()
    return f"{parts.scheme}://{netloc}{absolute[len(parts.scheme) + 3 + len(netloc):]}"


def _absolute_url(ref: str, base_url: str) -> str | None:
    """Resolve ``ref`` against ``base_url``, fragment dropped; None unless the result is http(s) with a host.

    A fragment is never sent to the server: ``/a.html#x`` and ``/a.html`` are one page, and
    kept apart they would be two frontier items of which the crawl's duplicate filter
    fetches one, leaving the other queued for ever.
    """
    ref = ref.strip()
    if "#" in ref:
        ref = ref.split("#", 1)[0]
    if _FAST_ABSOLUTE_URL.match(ref):  # common case: already absolute and clean
        return ref if len(ref) <= MAX_URL_LENGTH else None
    ref = ref.replace("\t", "").replace("\r", "").replace("\n", "")
    if not ref or len(ref) > MAX_URL_LENGTH:
        return None
    try:
        url = urljoin(base_url, ref) if base_url else ref
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        parts.port  # noqa: B018 - raises ValueError for an out-of-range port
    except ValueError:  # e.g. bad IPv6 literal or port
        return None
    colon = url.find(":")
    url = url[:colon].lower() + url[colon:]
    return url if len(url) <= MAX_URL_LENGTH else None


def _w3c_to_datetime(match: re.Match[str]) -> datetime | None:
    year, month, day, hour, minute, second, frac, tz = match.groups()
    try:
        micro = int((frac or "0")[:6].ljust(6, "0"))
        offset = timezone.utc
        if tz and tz.upper() != "Z":
            sign = -1 if tz[0] == "-" else 1
            digits = tz[1:].replace(":", "")
            delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
            offset = timezone(sign * delta)
        parsed = datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
            int(second or 0), micro, tzinfo=offset,
        )
        return parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _priority(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    return min(1.0, max(0.0, number))


def _changefreq(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    return value if value in _CHANGEFREQS else None


_LOCAL_NAMES: dict[str, str] = {}


def _local(tag: object) -> str:
    """Lowercased local name of an lxml tag ("" for comments, PIs, entities)."""
    try:
        return _LOCAL_NAMES[tag]  # type: ignore[index]
    except (KeyError, TypeError):
        pass
    if not isinstance(tag, str):
        return ""
    name = tag.rpartition("}")[2].lower()
    if len(_LOCAL_NAMES) < 4096:  # bounded: hostile documents may invent many names
        _LOCAL_NAMES[tag] = name
    return name


def _element_text(element: etree._Element) -> str:
    """Direct text of an element: its text plus the tails of its (already cleared) children."""
    if not len(element):
        return element.text or ""
    parts = [element.text or ""]
    parts.extend(child.tail or "" for child in element)
    return "".join(parts)


def _text_codec(name: str) -> str | None:
    """Normalised codec name if ``name`` is a safe text encoding Python knows."""
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("-", "_") in _UNSAFE_CODECS:
        return None
    return info.name


def _sniff_encoding(head: bytes) -> tuple[str, int]:
    """Pick the codec for a body from its BOM or XML declaration; returns (codec, BOM length)."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", 3
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return ("utf-32-le" if head.startswith(codecs.BOM_UTF32_LE) else "utf-32-be"), 4
    if head.startswith(codecs.BOM_UTF16_LE):
        return "utf-16-le", 2
    if head.startswith(codecs.BOM_UTF16_BE):
        return "utf-16-be", 2
    if head.startswith(b"<\x00?\x00"):
        return "utf-16-le", 0
    if head.startswith(b"\x00<\x00?"):
        return "utf-16-be", 0
    match = _XML_DECL_ENCODING.match(head)
    if match:
        codec = _text_codec(match.group(1).decode("ascii"))
        if codec is not None and not codec.startswith(("utf-16", "utf-32")):
            return codec, 0
    return "utf-8", 0


def _gzip_header_end(view: memoryview, pos: int) -> int | None:
    """Offset just past the gzip member header at ``pos`` (RFC 1952), or None if invalid."""
    size = len(view)
    if size - pos < 10 or bytes(view[pos:pos + 2]) != _GZIP_MAGIC or view[pos + 2] != 8:
        return None
    flags = view[pos + 3]
    end = pos + 10
    if flags & 0x04:  # FEXTRA
        if end + 2 > size:
            return None
        end += 2 + (view[end] | view[end + 1] << 8)
    for flag in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated
        if flags & flag:
            zero = bytes(view[end:end + 65536]).find(b"\0")
            if zero < 0:
                return None
            end += zero + 1
    if flags & 0x02:  # FHCRC
        end += 2
    return end if end <= size else None


class _Stop(Exception):
    """Internal: stop parsing this body (already reported)."""


class _Sanitiser:
    """Streaming repair of XML text before lxml sees it.

    Escapes bare ``&``, turns HTML named entities into numeric references,
    drops every other (non-predefined) entity reference and invalid numeric
    references, removes characters XML forbids and normalises newlines.
    CDATA sections and comments are left alone (apart from forbidden characters).
    """

    _HOLD = 64  # characters held back so tokens never straddle two pieces

    def __init__(self) -> None:
        self.carry = ""
        self.state = 0  # 0 markup/content, 1 CDATA, 2 comment
        self.bare_amps = 0
        self.html_entities = 0
        self.dropped_entities = 0
        self.dropped_names: list[str] = []
        self.bad_chars = 0

    def feed(self, text: str, final: bool = False) -> str:
        data = self.carry + text
        limit = len(data) if final else max(0, len(data) - self._HOLD)
        if not final and limit and data[limit - 1] == "\r":
            limit -= 1  # keep "\r\n" pairs together
        out: list[str] = []
        pos = index = 0
        while True:
            match = _SANITISER_PATTERNS[self.state].search(data, index)
            if match is None or match.start() >= limit:
                break
            start, token = match.start(), match.group()
            index = match.end()
            if len(token) == 1 and token != "&":  # forbidden character
                out.append(data[pos:start])
                pos = index
                self.bad_chars += 1
            elif self.state == 0:
                if token == "&":
                    pos, index = self._reference(data, start, pos, out)
                elif token == "<![CDATA[":
                    self.state = 1
                else:
                    self.state = 2
            else:
                self.state = 0
        cut = max(limit, index)
        out.append(data[pos:cut])
        self.carry = data[cut:]
        result = "".join(out)
        if "\r" in result:
            result = result.replace("\r\n", "\n").replace("\r", "\n")
        return result

    def _reference(self, data: str, start: int, pos: int, out: list[str]) -> tuple[int, int]:
        ref = _REF.match(data, start)
        if ref is None:
            out.append(data[pos:start])
            out.append("&amp;")
            self.bare_amps += 1
            return start + 1, start + 1
        name = ref.group(1)
        end = ref.end()
        if name[0] == "#":
            try:
                code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
            except ValueError:
                code = -1
            if _xml_char_ok(code):
                return pos, end
            out.append(data[pos:start])
            self.bad_chars += 1
            return end, end
        if name in _PREDEFINED_ENTITIES:
            return pos, end
        out.append(data[pos:start])
        replacement = html.entities.html5.get(name + ";")
        if replacement is not None:
            out.append("".join(f"&#{ord(char)};" for char in replacement))
            self.html_entities += 1
        else:
            self.dropped_entities += 1
            if len(self.dropped_names) < 5 and name not in self.dropped_names:
                self.dropped_names.append(name)
        return end, end

    def summary(self) -> list[str]:
        messages = []
        if self.bare_amps:
            messages.append(f"XML: {self.bare_amps} unescaped '&' treated as literal")
        if self.html_entities:
            messages.append(f"XML: {self.html_entities} HTML entity references converted")
        if self.dropped_entities:
            names = ", ".join(f"&{name};" for name in self.dropped_names)
            messages.append(f"XML: {self.dropped_entities} entity references not expanded ({names})")
        if self.bad_chars:
            messages.append(f"XML: {self.bad_chars} characters not allowed in XML removed")
        return messages


def _xml_char_ok(code: int) -> bool:
    return (
        code in (0x9, 0xA, 0xD)
        or 0x20 <= code <= 0xD7FF
        or 0xE000 <= code <= 0xFFFD
        or 0x10000 <= code <= 0x10FFFF
    )


class _Window:
    """The last ~1M characters fed to the current XML session, to map (line, column) to an index."""

    def __init__(self) -> None:
        self.pieces: deque[str] = deque()
        self.size = 0
        self.line = 1  # line / 1-based column of the first kept character, in session coordinates
        self.col = 1

    def append(self, text: str) -> None:
        self.pieces.append(text)
        self.size += len(text)
        while self.size - len(self.pieces[0]) >= _WINDOW_CHARS:
            dropped = self.pieces.popleft()
            self.size -= len(dropped)
            newlines = dropped.count("\n")
            if newlines:
                self.line += newlines
                self.col = len(dropped) - dropped.rfind("\n")
            else:
                self.col += len(dropped)

    @property
    def buf(self) -> str:
        """The kept text (joined lazily: only needed after an error)."""
        if len(self.pieces) > 1:
            self.pieces = deque(["".join(self.pieces)])
        return self.pieces[0] if self.pieces else ""

    def locate(self, line: int, col: int) -> int:
        """Index in ``buf`` of session position (line, 1-based col); clamped to the window."""
        buf = self.buf
        if line < self.line or (line == self.line and col < self.col):
            return 0
        if line == self.line:
            return min(len(buf), col - self.col)
        index = -1
        for _ in range(line - self.line):
            index = buf.find("\n", index + 1)
            if index < 0:
                return len(buf)
        return min(len(buf), index + 1 + max(0, col - 1))

    def line_at(self, index: int) -> int:
        return self.line + self.buf.count("\n", 0, index)


class _RefuseResolver(etree.Resolver):
    """Defence in depth: any external DTD/entity lookup resolves to nothing."""

    def resolve(self, system_url, public_id, context):  # type: ignore[no-untyped-def]
        logger.warning("sitemap parser refused to load external resource %r", system_url)
        return self.resolve_string("", context)


class _EntryBuilder:
    """Fields of one entry, collected from its direct children as they end."""

    __slots__ = ("kind", "loc", "fallback_loc", "lastmod", "fallback_lastmod", "changefreq",
                 "priority", "alternates")

    def __init__(self, kind: Literal["url", "sitemap"]) -> None:
        self.kind = kind
        self.loc: str | None = None
        self.fallback_loc: str | None = None
        self.lastmod: str | None = None
        self.fallback_lastmod: str | None = None
        self.changefreq: str | None = None
        self.priority: str | None = None
        self.alternates: list[str] = []


def _prepend(first: str | bytes, rest: Iterable[str] | Iterable[bytes]) -> Iterator:
    if first:
        yield first
    yield from rest


def _describe(element: etree._Element) -> tuple[str, dict[str | None, str]]:
    """(qualified name as written, namespace map) of an element, to re-open it on resync."""
    local = element.tag.rpartition("}")[2] if isinstance(element.tag, str) else "x"
    qname = f"{element.prefix}:{local}" if element.prefix else local
    return qname, dict(element.nsmap)


class _SitemapParser:
    """One parse of one body; :meth:`run` is the generator behind :func:`iter_sitemap`."""

    def __init__(
        self, report: ParseReport, base_url: str, max_urls: int, max_bytes: int,
        include_alternates: bool,
    ) -> None:
        self.report = report
        self.base_url = base_url
        self.max_urls = max(0, max_urls)
        self.max_bytes = max(0, max_bytes)
        self.include_alternates = include_alternates
        self.emitted = 0
        self.invalid_locs = 0
        self.suppressed_errors = 0
        self.replaced_chars = 0
        self.ignored_lines = 0
        self.input_cut = False  # the reader stopped before the end of the data
        self.sanitiser: _Sanitiser | None = None
        # XML state; depth/path/entry are per session (reset on resync)
        self.format = "unknown"
        self.entry_kinds: dict[str, Literal["url", "sitemap"]] = {}
        self.entry_start: re.Pattern[str] | None = None
        self.depth = 0
        self.path: list[tuple[str, dict[str | None, str]]] = []  # open elements outside entries
        self.chain: list[tuple[str, dict[str | None, str]]] = []  # ancestors of the last entry
        self.entry: _EntryBuilder | None = None
        self.entry_depth = 0
        self.resumed = False
        self.xml_errors = 0

    # ------------------------------------------------------------------ driver

    def run(self, body: bytes) -> Iterator[SitemapEntry]:
        try:
            if isinstance(body, str):
                body = body.encode("utf-8")
            elif not isinstance(body, bytes):
                body = bytes(body)
            texts = self._decode(self._read(body))
            first = ""
            for piece in texts:
                first = piece.lstrip("\ufeff \t\r\n")
                if first:
                    break
            if not first:
                self._error("empty sitemap", always=True)
                return
            pieces: Iterator[str] = _prepend(first, texts)
            if first.startswith("<"):
                yield from self._parse_xml(pieces)
            else:
                yield from self._parse_text(pieces)
        except _Stop:
            return
        except Exception as exc:  # never raise on bad input
            logger.warning("sitemap %s: internal parser error", self.base_url, exc_info=True)
            self._error(f"internal error: {type(exc).__name__}: {exc}", always=True)
        finally:
            self._finish()

    def _finish(self) -> None:
        if self.sanitiser is not None:
            for message in self.sanitiser.summary():
                self._error(message, always=True)
            self.sanitiser = None
        if self.replaced_chars:
            self._error(f"encoding: {self.replaced_chars} undecodable bytes replaced", always=True)
        if self.invalid_locs:
            self._error(f"skipped {self.invalid_locs} entries without a valid http(s) loc", always=True)
        if self.report.skipped_over_limit:
            self._error(
                f"limit: more than {self.max_urls} entries; "
                f"{self.report.skipped_over_limit} skipped",
                always=True,
            )
        if self.suppressed_errors:
            self.report.errors.append(f"{self.suppressed_errors} further errors not listed")
            self.suppressed_errors = 0

    def _error(self, message: str, *, always: bool = False) -> None:
        """Log and record a problem; past MAX_REPORTED_ERRORS only ``always`` ones are stored."""
        logger.warning("sitemap %s: %s", self.base_url, message)
        if always or len(self.report.errors) < MAX_REPORTED_ERRORS:
            self.report.errors.append(message)
        else:
            self.suppressed_errors += 1

    # ------------------------------------------------------------------ bytes -> text

    def _read(self, body: bytes) -> Iterator[bytes]:
        """Uncompressed chunks of ``body``, at most ``max_bytes`` in total."""
        if is_gzip(body):
            yield from self._gunzip(body)
            return
        view = memoryview(body)
        end = min(len(body), self.max_bytes)
        for start in range(0, end, _CHUNK):
            yield bytes(view[start:min(start + _CHUNK, end)])
        if len(body) > self.max_bytes:
            self.input_cut = True
            self._error(f"size exceeds {self.max_bytes} bytes; stopped", always=True)

    def _gunzip(self, body: bytes) -> Iterator[bytes]:
        """Gunzip ``body`` (all members) in bounded steps, stopping at ``max_bytes`` of output.

        Raw inflate with our own header/trailer handling, so a bad CRC is reported
        after the data was already yielded rather than losing the last block.
        """
        view = memoryview(body)
        size = len(body)
        pos = total = 0
        while pos < size:
            start = _gzip_header_end(view, pos)
            if start is None:
                self.input_cut = True
                self._error("gzip: invalid header; stopped", always=True)
                return
            pos = start
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            crc = length = 0
            while not inflater.eof:
                if pos >= size:
                    self.input_cut = True
                    self._error("gzip: truncated stream; stopped", always=True)
                    return
                pending: bytes | memoryview = view[pos:pos + _CHUNK]
                pos += len(pending)
                while pending:
                    room = self.max_bytes - total
                    try:
                        out = inflater.decompress(pending, min(_OUT_CHUNK, room + 1))
                    except zlib.error as exc:
                        self.input_cut = True
                        self._error(f"gzip: {exc}; stopped", always=True)
                        return
                    if len(out) > room:
                        if room:
                            yield out[:room]
                        self.input_cut = True
                        self._error(
                            f"gzip: decompressed size exceeds {self.max_bytes} bytes; stopped",
                            always=True,
                        )
                        return
                    if out:
                        total += len(out)
                        length += len(out)
                        crc = zlib.crc32(out, crc)
                        yield out
                    if inflater.eof:
                        break
                    pending = inflater.unconsumed_tail
            pos -= len(inflater.unused_data)
            trailer = bytes(view[pos:pos + 8])
            pos += 8
            if len(trailer) < 8:
                self._error("gzip: truncated trailer", always=True)
                return
            if int.from_bytes(trailer[:4], "little") != crc or int.from_bytes(
                trailer[4:], "little"
            ) != length & 0xFFFFFFFF:
                self._error("gzip: CRC or length check failed; stopped", always=True)
                return
            if not is_gzip(view[pos:pos + 2]):
                break  # padding/garbage after the last member is ignored

    def _decode(self, chunks: Iterator[bytes]) -> Iterator[str]:
        """Decode chunks to text (codec from BOM / XML declaration, bad bytes replaced)."""
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= 1024:
                break
        codec, bom = _sniff_encoding(head)
        decoder = codecs.getincrementaldecoder(codec)(errors="replace")
        for chunk in _prepend(head[bom:], chunks):
            text = decoder.decode(chunk)
            if text:
                self.replaced_chars += text.count("\ufffd")
                yield text
        text = decoder.decode(b"", True)
        if text:
            self.replaced_chars += text.count("\ufffd")
            yield text

    # ------------------------------------------------------------------ entries

    def _emit(self, builder: _EntryBuilder) -> Iterator[SitemapEntry]:
        raw = builder.loc if builder.loc is not None else builder.fallback_loc
        loc = _absolute_url(raw, self.base_url) if raw is not None else None
        if loc is None:
            self.invalid_locs += 1
        else:
            lastmod = builder.lastmod if builder.lastmod is not None else builder.fallback_lastmod
            lastmod = lastmod.strip() if lastmod else None
            yield from self._count(
                SitemapEntry(
                    loc=loc,
                    kind=builder.kind,
                    lastmod=lastmod or None,
                    changefreq=_changefreq(builder.changefreq),
                    priority=_priority(builder.priority),
                )
            )
        if builder.alternates and builder.kind == "url":
            seen = {loc}
            for href in builder.alternates:
                alternate = _absolute_url(href, self.base_url)
                if alternate is not None and alternate not in seen:
                    seen.add(alternate)
                    yield from self._count(SitemapEntry(alternate, "url", None, None, None))

    def _count(self, entry: SitemapEntry) -> Iterator[SitemapEntry]:
        if self.emitted >= self.max_urls:
            self.report.skipped_over_limit += 1
            return
        self.emitted += 1
        if entry.kind == "url":
            self.report.urls += 1
        else:
            self.report.sitemaps += 1
        yield entry

    # ------------------------------------------------------------------ text sitemaps

    def _parse_text(self, pieces: Iterator[str]) -> Iterator[SitemapEntry]:
        self.report.format = "text"
        self.ignored_lines = 0
        carry = ""
        dropping = False  # inside an over-long line
        for piece in pieces:
            lines = (carry + piece).split("\n")
            carry = lines.pop()
            if dropping and lines:
                lines[0] = ""  # the end of the over-long line
                dropping = False
            if len(carry) > _MAX_TEXT_LINE:
                if not dropping:
                    self.ignored_lines += 1
                carry, dropping = "", True
            for line in lines:
                yield from self._text_line(line)
        if not dropping:
            yield from self._text_line(carry)
        if not self.emitted and not self.report.skipped_over_limit:
            self._error(f"text: no URLs found ({self.ignored_lines} non-URL lines)", always=True)

    def _text_line(self, line: str) -> Iterator[SitemapEntry]:
        line = line.strip().strip("\ufeff")
        if not line:
            return
        if len(line) > _MAX_TEXT_LINE or not _TEXT_URL.match(line):
            self.ignored_lines += 1
            return
        builder = _EntryBuilder("url")
        builder.loc = line
        yield from self._emit(builder)

    # ------------------------------------------------------------------ XML

    def _parse_xml(self, pieces: Iterator[str]) -> Iterator[SitemapEntry]:
        self.sanitiser = sanitiser = _Sanitiser()
        parser = _new_xml_parser()
        window = _Window()
        line_base = 1  # global line number of session line 1
        min_search = 0  # resync never restarts at or before this index of the session text
        searching: str | None = None  # text being scanned for a resync point
        search_line = 1  # global line of searching[0]
        for piece in _with_end(pieces):
            final = piece is None
            text = sanitiser.feed(piece or "", final=final)
            if searching is not None:
                searching += text
                found = self._find_entry_start(searching, 0)
                if found is None:
                    keep = max(0, len(searching) - 64)
                    search_line += searching.count("\n", 0, keep)
                    searching = searching[keep:]
                    continue
                line_base = search_line + searching.count("\n", 0, found)
                parser, window, min_search, text = self._resume(searching[found:])
                searching = None
            while text:
                window.append(text)
                error: etree.XMLSyntaxError | None = None
                try:
                    parser.feed(text.encode("utf-8", "replace"))
                except etree.XMLSyntaxError as exc:
                    error = exc
                yield from self._events(parser)
                if error is None:
                    break
                # Structural error: report it, keep what we have, resync at the next entry.
                line, col = error.position
                self._xml_error(error, line_base)
                yield from self._flush_open_entry()
                if self.entry_start is None or not (self.chain or self.path):
                    raise _Stop
                index = max(window.locate(line, col), min_search)
                found = self._find_entry_start(window.buf, index)
                if found is None:
                    searching = window.buf[index:]
                    search_line = line_base + window.line_at(index) - 1
                    break
                line_base += window.line_at(found) - 1
                parser, window, min_search, text = self._resume(window.buf[found:])
        if searching is not None:
            return
        try:
            parser.close()
            error = None
        except etree.XMLSyntaxError as exc:
            error = exc
        yield from self._events(parser)
        if error is not None and not self.input_cut:
            self._xml_error(error, line_base)
        yield from self._flush_open_entry()

    def _resume(self, text: str) -> tuple[etree.XMLPullParser, _Window, int, str]:
        """Start a new parser session at an entry start tag, re-opening its ancestors first."""
        elements = self.chain or self.path
        qname, nsmap = elements[0][0], elements[-1][1]
        decls = "".join(
            f" xmlns={quoteattr(uri)}" if prefix is None else f" xmlns:{prefix}={quoteattr(uri)}"
            for prefix, uri in nsmap.items()
        )
        prefix = f"<{qname}{decls}>" + "".join(f"<{name}>" for name, _ in elements[1:])
        self.depth = 0
        self.path = []
        self.entry = None
        self.resumed = True
        return _new_xml_parser(), _Window(), len(prefix) + 1, prefix + text

    def _find_entry_start(self, text: str, start: int) -> int | None:
        assert self.entry_start is not None
        match = self.entry_start.search(text, start)
        return match.start() if match else None

    def _xml_error(self, error: etree.XMLSyntaxError, line_base: int) -> None:
        self.xml_errors += 1
        fatal = [entry for entry in error.error_log if entry.level_name == "FATAL"]
        if fatal:  # at close() lxml may raise with an earlier non-fatal error as the message
            message, session_line = fatal[-1].message.strip(), fatal[-1].line
        else:
            message = re.sub(r",? line \d+, column \d+$", "", error.msg or str(error)).strip()
            session_line = error.position[0]
        if line_base != 1:  # libxml2 counts lines per session; report document lines
            message = re.sub(
                r"\bline (\d+)", lambda m: f"line {line_base + int(m.group(1)) - 1}", message
            )
        line = line_base + max(session_line, 1) - 1
        self._error(f"XML error at line {line}: {message}")
        if self.xml_errors >= MAX_XML_ERRORS:
            self._error(f"XML: too many errors ({self.xml_errors}); stopped", always=True)
            raise _Stop

    def _flush_open_entry(self) -> Iterator[SitemapEntry]:
        """Yield the entry open at an error or at the end, if its loc was complete."""
        builder, self.entry = self.entry, None
        if builder is not None and (builder.loc is not None or builder.fallback_loc is not None):
            yield from self._emit(builder)

    def _events(self, parser: etree.XMLPullParser) -> Iterator[SitemapEntry]:
        local = _local
        kinds = self.entry_kinds
        for event, element in parser.read_events():
            if event == "start":
                depth = self.depth = self.depth + 1
                name = local(element.tag)
                if depth == 1 and not self.resumed:
                    self._start_root(name, element)
                    kinds = self.entry_kinds
                    continue
                kind = kinds.get(name)
                if kind is not None:
                    if self.entry is not None:  # previous entry never closed: take it as is
                        builder, self.entry = self.entry, None
                        yield from self._emit(builder)
                    self.entry = _EntryBuilder(kind)
                    self.entry_depth = depth
                    if self.path and self.chain != self.path:
                        self.chain = list(self.path)
                elif self.entry is None and depth == len(self.path) + 1:
                    self.path.append(_describe(element))
                continue
            # end event
            depth = self.depth
            entry = self.entry
            if entry is not None:
                if depth == self.entry_depth + 1:
                    self._field(local(element.tag), element)
                elif depth == self.entry_depth:
                    self.entry = None
                    yield from self._emit(entry)
            elif depth == len(self.path):
                self.path.pop()
            self.depth = depth - 1
            # Bounded memory: drop what has been processed (keeps one cleared sibling per level).
            element.clear(keep_tail=True)
            previous = element.getprevious()
            if previous is not None:
                parent = element.getparent()
                while previous is not None:
                    del parent[0]
                    previous = element.getprevious()

    def _start_root(self, name: str, element: etree._Element) -> None:
        fmt = _ROOT_FORMATS.get(name)
        if fmt is None:
            shown = name or str(element.tag)
            self._error(f"not a sitemap: root element <{shown[:50]}>")
            raise _Stop
        self.report.format = self.format = fmt
        self.entry_kinds = _ENTRY_KINDS[fmt]
        names = "|".join(self.entry_kinds)
        self.entry_start = re.compile(rf"<(?:[A-Za-z_][\w.-]*:)?(?:{names})(?=[\s/>])", re.IGNORECASE)
        self.path.append(_describe(element))

    def _field(self, name: str, element: etree._Element) -> None:
        entry = self.entry
        assert entry is not None
        if self.format in ("urlset", "sitemapindex"):
            if name == "loc":
                if entry.loc is None:
                    entry.loc = _element_text(element)
            elif name in ("lastmod", "changefreq", "priority"):
                if getattr(entry, name) is None:
                    setattr(entry, name, _element_text(element))
            elif name == "link" and self.include_alternates:
                href = element.get("href")
                rel = (element.get("rel") or "").strip().lower()
                if href and rel == "alternate" and len(entry.alternates) < self.max_urls:
                    entry.alternates.append(href)
        elif self.format == "rss":
            if name == "link":
                text = _element_text(element).strip()
                rel = (element.get("rel") or "alternate").strip().lower()
                if not text and rel == "alternate":
                    text = (element.get("href") or "").strip()
                if text and entry.loc is None:
                    entry.loc = text
            elif name == "guid":
                permalink = (element.get("isPermaLink") or "true").strip().lower() != "false"
                text = _element_text(element).strip()
                if permalink and text.lower().startswith(("http://", "https://")):
                    entry.fallback_loc = entry.fallback_loc or text
            elif name == "pubdate":
                entry.lastmod = entry.lastmod if entry.lastmod is not None else _element_text(element)
            elif name in ("date", "updated", "modified"):
                entry.fallback_lastmod = entry.fallback_lastmod or _element_text(element)
        else:  # atom
            if name == "link":
                rel = (element.get("rel") or "alternate").strip().lower()
                href = element.get("href")
                if href and rel == "alternate" and entry.loc is None:
                    entry.loc = href
            elif name == "updated":
                entry.lastmod = entry.lastmod if entry.lastmod is not None else _element_text(element)
            elif name in ("published", "modified"):
                entry.fallback_lastmod = entry.fallback_lastmod or _element_text(element)


def _with_end(pieces: Iterator[str]) -> Iterator[str | None]:
    """The pieces, then None as an end marker."""
    yield from pieces
    yield None


def _new_xml_parser() -> etree.XMLPullParser:
    """A strict pull parser: no entity expansion, no DTD, no network, no huge trees."""
    parser = etree.XMLPullParser(
        events=("start", "end"),
        encoding="utf-8",  # the sanitised text is always fed as UTF-8
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        recover=False,
    )
    parser.resolvers.add(_RefuseResolver())
    return parser
