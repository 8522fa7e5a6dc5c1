"""Main-content extraction: HTML → Markdown with title and absolute links (trafilatura).

Bytes are decoded the way browsers do (WHATWG encoding sniffing: BOM, the HTTP
``Content-Type`` charset, a ``<meta>`` declaration, then UTF-8 if the bytes are valid
UTF-8, else windows-1252) before lxml sees them.  Bad input is logged and yields an
empty document, never an exception.
"""

from __future__ import annotations

import codecs
import copy
import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lxml.cssselect
import lxml.etree
import lxml.html
import trafilatura
from trafilatura.metadata import extract_title
from w3lib.encoding import (
    html_to_unicode,
    http_content_type_encoding,
    read_bom,
    to_unicode,
)

logger = logging.getLogger(__name__)

_WS = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")  # lxml refuses str input that declares an encoding


HTML_TYPES = ("text/html", "application/xhtml+xml")


def mime_type(content_type: str | None) -> str:
    """The bare, lowercased media type of a Content-Type value (``text/html; charset=utf-8`` → ``text/html``)."""
    return (content_type or "").split(";")[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Extracted:
    """The text of a page as indexed."""

    title: str
    markdown: str
    canonical: str | None = None
    selector_missed: bool = False  # a content_selector matched nothing, so the whole page was extracted

    @property
    def content_hash(self) -> str:
        """SHA-256 of title + Markdown: unchanged hash means nothing to re-embed."""
        return hashlib.sha256(f"{self.title}\n{self.markdown}".encode()).hexdigest()


def decode_html(body: bytes | str, content_type: str | None = None) -> str:
    """Decode an HTML page's bytes the way a browser does (WHATWG encoding sniffing).

    Uses w3lib's ``html_to_unicode`` (a Scrapy dependency): a BOM wins, then the
    ``charset`` of the HTTP ``Content-Type``, then a ``<meta charset>`` /
    ``<meta http-equiv>`` (or XML) declaration near the start, then UTF-8 if the whole
    body is valid UTF-8, else windows-1252.  Labels map as browsers map them
    (``iso-8859-1`` and ``ascii`` mean windows-1252); undecodable bytes become U+FFFD.

    Args:
        body: the page's bytes, or text (only its XML declaration is removed).
        content_type: the HTTP ``Content-Type`` header value, if known.

    Returns:
        The page as text, without a BOM or an XML declaration (lxml refuses text that declares
        an encoding).
    """
    if not isinstance(body, str):
        _encoding, body = html_to_unicode(content_type, body, auto_detect_fun=_utf8_or_windows1252)
    return _XML_DECLARATION.sub("", body, count=1)


def decode_text(body: bytes, content_type: str | None = None) -> str:
    """Decode a ``text/plain`` or ``text/markdown`` body: BOM, header charset, UTF-8, else windows-1252.

    Args:
        body: the document's bytes.
        content_type: the HTTP ``Content-Type`` header value, if known.

    Returns:
        The document as text, without a BOM.
    """
    bom_encoding, bom = read_bom(body)
    if bom_encoding and bom:
        return to_unicode(body[len(bom):], bom_encoding)
    encoding = http_content_type_encoding(content_type) or _utf8_or_windows1252(body)
    return to_unicode(body, encoding)


def _utf8_or_windows1252(body: bytes) -> str:
    """The fallback when nothing declares an encoding: UTF-8 if the bytes are valid UTF-8."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def extract_html(
    html: bytes | str,
    url: str,
    *,
    fast: bool = False,
    content_type: str | None = None,
    selector: str | None = None,
    include_images: bool = False,
) -> Extracted:
    """Extract the main content of an HTML page as Markdown.

    Args:
        html: the page's bytes or text.
        url: the page URL; relative links are resolved against it.
        fast: skip trafilatura's fallback extractors (for very large pages).
        content_type: the HTTP ``Content-Type`` header value; its ``charset`` decodes the bytes
            (see :func:`decode_html`).
        selector: a CSS selector (``content_selector``): only the elements it matches are
            extracted; a page where it matches nothing is extracted whole (``selector_missed``).
        include_images: keep images as ``![alt](src)`` (their alt text is then indexed).

    Returns:
        The title, the Markdown body and the ``<link rel=canonical>`` href (absolute), if any.
    """
    if _looks_binary(html):
        logger.warning("not an HTML document (binary content) at %s", url)
        return Extracted(title="", markdown="")
    text = decode_html(html, content_type)
    if not text.strip():
        return Extracted(title="", markdown="")
    try:
        tree = lxml.html.fromstring(text)
    except (lxml.etree.ParserError, ValueError) as exc:
        logger.warning("cannot parse HTML of %s: %s", url, exc)
        return Extracted(title="", markdown="")
    try:
        tree.make_links_absolute(url, resolve_base_href=True, handle_failures="discard")
    except ValueError:
        pass
    canonical = _canonical(tree)
    title = _title(tree, url)
    _drop_permalinks(tree)
    missed = False
    if selector:
        selected = select_fragment(tree, selector)
        missed = selected is None
        tree = tree if selected is None else selected
    try:
        text = trafilatura.extract(
            copy.deepcopy(tree),
            url=url,
            output_format="markdown",
            include_links=True,
            include_formatting=True,
            include_tables=True,
            include_images=include_images,
            include_comments=False,
            favor_recall=bool(selector) and not missed,  # the site chose this fragment: keep what it holds
            fast=fast,
        )
    except Exception:  # trafilatura raises assorted errors on odd trees
        logger.exception("trafilatura failed on %s", url)
        text = None
    if not text:
        text = _plain_text(tree)
    return Extracted(title=title, markdown=_tidy(text), canonical=canonical, selector_missed=missed)


HEAD_SCAN_CHARS = 512 * 1024  # a page without </head> is read this far for its meta tags
_HEAD_END = re.compile(r"</head\s*>|<body[\s>]", re.IGNORECASE)
_HEAD_PARSER = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, no_network=True)


def head_meta(html: bytes | str, content_type: str | None = None) -> list[tuple[str, str]]:
    """The ``<meta name|property=... content=...>`` tags of a page's head, in order, names lowercased.

    Only the document up to ``</head>`` (or the first ``<body>``) is parsed, so a ``<meta>`` in
    the body is not read.  A tag with both ``name`` and ``property`` gives two pairs.

    Args:
        html: the page, as bytes (decoded as a browser would) or text.
        content_type: the HTTP ``Content-Type``, for its charset.

    Returns:
        ``(name, content)`` pairs; empty when there are none or the head cannot be parsed.
    """
    if isinstance(html, bytes):
        _enc, text = html_to_unicode(content_type, html[: HEAD_SCAN_CHARS * 2])
    else:
        text = html
    end = _HEAD_END.search(text, 0, HEAD_SCAN_CHARS)
    head = text[: end.start()] if end else text[:HEAD_SCAN_CHARS]
    if "<meta" not in head.lower():
        return []
    try:
        root = lxml.html.document_fromstring(head.encode("utf-8"), parser=_HEAD_PARSER)
    except (lxml.etree.ParserError, ValueError):
        return []
    pairs = []
    for el in root.iter("meta"):
        content = el.get("content")
        if content is None:
            continue
        for attr in ("name", "property"):
            name = (el.get(attr) or "").strip().lower()
            if name:
                pairs.append((name, content))
    return pairs


MIN_STATIC_TEXT = 200  # characters of Markdown under which a script-built page gets a rendering hint
HEAD_SCAN_BYTES = 1024 * 1024  # how much of a page is searched for scripts and a mount point
_APP_MOUNT = re.compile(
    rb"""<[a-z][a-z0-9-]*\b[^>]*\sid\s*=\s*["']?(?:root|app|__next|__nuxt|___gatsby|svelte|q-app|main-app)["'\s/>]""",
    re.IGNORECASE,
)
_NOSCRIPT_JS = re.compile(rb"<noscript\b[^>]*>[^<]{0,300}javascript", re.IGNORECASE)


def rendering_hint(html: bytes, markdown: str) -> str | None:
    """A job-log hint for a page whose static HTML is an application shell, else None.

    A page qualifies when its extracted text is short (< ``MIN_STATIC_TEXT`` characters), it
    loads scripts, and it has a single-page-app mount point (``id="root"``, ``"app"``,
    ``"__next"``...) or a ``<noscript>`` asking for JavaScript.
    """
    if len(markdown) >= MIN_STATIC_TEXT:
        return None
    head = html[:HEAD_SCAN_BYTES]
    scripts = head.lower().count(b"<script")
    if not scripts or not (_APP_MOUNT.search(head) or _NOSCRIPT_JS.search(head)):
        return None
    return (
        f"only {len(markdown)} characters of text in the page's HTML, which loads {scripts} script(s) into an "
        "application shell: if the site builds its pages with JavaScript, set "
        "source_params.web_crawler.parse_options.use_browser_rendering to true"
    )


def select_fragment(tree: lxml.html.HtmlElement, selector: str) -> lxml.html.HtmlElement | None:
    """A new document holding only the elements ``selector`` matches (outermost ones, in page order).

    Returns:
        The document, or None when nothing matches.
    """
    matches = lxml.cssselect.CSSSelector(selector, translator="html")(tree)
    chosen = set(matches)
    outermost = [el for el in matches if not any(a in chosen for a in el.iterancestors())]
    if not outermost:
        return None
    doc = lxml.html.document_fromstring("<html><head></head><body></body></html>")
    body = doc.find("body")
    for el in outermost:
        copied = copy.deepcopy(el)
        copied.tail = None
        body.append(copied)
    return doc


def selector_for(rules: Sequence[Mapping[str, str]], url: str) -> str | None:
    """The CSS selector of the first ``content_selector`` rule whose ``path`` glob matches ``url``."""
    from indexer.pathfilter import glob_match

    for rule in rules:
        if glob_match(rule["path"], url):
            return rule["selector"]
    return None


_MD_LINK = re.compile(r"(!?)\[([^\]]*)\]\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)")


def embedding_text(markdown: str) -> str:
    """Markdown as the embedding model should see it: link and image URLs removed, their text kept.

    URLs are many tokens of little meaning; removing them from the embedded text (the stored
    chunk keeps its links) raised page Recall@5 on the Python-docs questions from 0.544 to
    0.617 in an A/B on the same 22,207 chunks.
    """
    return _MD_LINK.sub(lambda m: m.group(2), markdown)


_INLINE_MARKS = re.compile(r"[`*_]+")


def embedding_input(title: str, headings: Sequence[str], chunk: str) -> str:
    """What the model embeds for one chunk: page title and section headings, then the chunk.

    ``title > heading > subheading`` (headings that repeat the title left out, inline
    Markdown marks and link URLs removed) on the first line tells the model which part of
    which page a chunk from the middle of a long section belongs to.
    """
    context: list[str] = [title] if title else []
    seen = {_INLINE_MARKS.sub("", title).casefold()}
    for heading in headings:
        plain = _INLINE_MARKS.sub("", embedding_text(heading)).strip()
        if plain and plain.casefold() not in seen:
            context.append(plain)
            seen.add(plain.casefold())
    body = embedding_text(chunk)
    return f"{' > '.join(context)}\n\n{body}" if context else body


def extract_text_document(data: str, *, title: str = "") -> Extracted:
    """Wrap plain text or Markdown as an extracted document."""
    return Extracted(title=title, markdown=_tidy(data))


def _title(tree: lxml.html.HtmlElement, url: str) -> str:
    """og:title / twitter:title, else trafilatura's title heuristics (without its slow date search)."""
    for meta in tree.iterfind(".//meta[@content]"):
        if (meta.get("property") or meta.get("name") or "").lower() in ("og:title", "twitter:title"):
            title = meta.get("content", "").strip()
            if title:
                return _clean_title(title)
    try:
        title = extract_title(tree)
    except Exception:
        logger.debug("title extraction failed on %s", url, exc_info=True)
        title = None
    if not title:
        node = tree.find(".//title")
        title = node.text_content() if node is not None else ""
    return _clean_title(title or "")


def _clean_title(title: str) -> str:
    # Sphinx and other generators leave their permalink sign in headings
    return _WS.sub(" ", title).strip().rstrip("¶#").strip()


_PERMALINK_CLASSES = ("headerlink", "hash-link", "anchor-link", "anchorjs-link", "header-anchor", "heading-anchor")
_PERMALINK_TEXT = {"¶", "#", "§", "🔗", "link"}


def _drop_permalinks(tree: lxml.html.HtmlElement) -> None:
    """Remove heading permalink anchors (Sphinx ¶, MkDocs, Docusaurus #): noise in every chunk."""
    for a in tree.iterfind(".//a[@href]"):
        classes = (a.get("class") or "").lower()
        text = a.text_content().strip()
        if any(c in classes for c in _PERMALINK_CLASSES) or (
            text in _PERMALINK_TEXT and a.get("href", "").split("#", 1)[-1] and "#" in a.get("href", "")
        ):
            a.drop_tree()


def _canonical(tree: lxml.html.HtmlElement) -> str | None:
    for link in tree.iterfind(".//link[@rel][@href]"):
        if "canonical" in link.get("rel", "").lower().split():
            href = link.get("href", "").strip()
            return href or None
    return None


def _looks_binary(html: bytes | str) -> bool:
    """NUL characters near the start (outside UTF-16/32 text with a BOM) mean this is not text."""
    head = html[:4096]
    if isinstance(head, str):
        return "\x00" in head
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)):
        return False
    return b"\x00" in head


def _plain_text(tree: lxml.html.HtmlElement) -> str:
    for bad in tree.xpath("//script|//style|//noscript|//template"):
        bad.drop_tree()
    body = tree.find(".//body")
    return (body if body is not None else tree).text_content()


def _tidy(text: str) -> str:
    lines = [_WS.sub(" ", line).rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()
